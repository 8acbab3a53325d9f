"""What every update rule shares: the learning-rate schedule, the staleness rules and the optimizer step.
"""

from __future__ import annotations

from typing import Any

import torch

from algorithms.core.optimizers import set_learning_rate
from algorithms.infra.shared_memory import SnapshotRing


def learning_rate(algo: Any, env_steps: int, total_env_steps: int) -> float:
    """``algo.lr``, constant or decayed linearly to 0 over the step budget (as the zoo's ``lin_``)."""
    if algo.lr_schedule == "linear":
        return algo.lr * max(0.0, 1.0 - env_steps / total_env_steps)
    return algo.lr


def apply_gradient(optimizer: torch.optim.Optimizer, params: torch.Tensor, gradient: torch.Tensor, version: int,
                   version_at_sync: int, lr: float, staleness_cfg: Any,
                   snapshots: SnapshotRing | None) -> tuple[bool, float]:
    """Step ``params`` with a copy of ``gradient`` at ``version``, unless too stale; return (applied, lr).

    The step size is ``lr``, divided by ``max(1, staleness)`` under ``lr_scaling=inverse``. The gradient is
    copied into ``params.grad``, a buffer of this process's own: aliasing a worker's ``.grad`` instead (as a
    popular A3C implementation does) silently sums gradients across steps.
    """
    staleness = version - version_at_sync
    if staleness_cfg.max is not None and staleness > staleness_cfg.max:
        return False, lr
    if staleness_cfg.lr_scaling == "inverse":
        lr /= max(1, staleness)
    set_learning_rate(optimizer, lr)
    params.grad.copy_(gradient)
    optimizer.step()
    if snapshots is not None:
        snapshots.record(version + 1, params)
    return True, lr
