"""The non-finite guard every update passes through (``algo.on_nonfinite``).
"""

from __future__ import annotations

import math

import torch

from algorithms.config import AlgoConfig
from algorithms.infra.supervision import NonFiniteUpdate


class NonFiniteGuard:
    """``algo.on_nonfinite`` for one worker's updates: ``fail`` raises :class:`NonFiniteUpdate` at the first
    non-finite loss or gradient; ``skip_update`` drops such an update (the caller records it as not applied)
    and raises after ``algo.max_nonfinite_skips`` in a row. Parameters that are not finite after a step
    always raise: an applied step cannot be dropped. A schedule that cannot skip (a synchronous round) passes
    ``can_skip=False``."""

    def __init__(self, algo: AlgoConfig, worker: int, can_skip: bool = True):
        self.skip = can_skip and algo.on_nonfinite == "skip_update"
        self.limit, self.worker = algo.max_nonfinite_skips, worker
        self.in_a_row = 0

    def admits(self, stats: dict[str, float], version: int, env_steps: int) -> bool:
        """Whether to apply the update whose loss statistics are ``stats`` (its gradient norm among them)."""
        quantity = next((name for name, value in stats.items() if not math.isfinite(value)), None)
        if quantity is None:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        where = (f"non-finite {quantity} in worker {self.worker}'s update at policy version {version}, "
                 f"env step {env_steps}")
        if not self.skip:
            raise NonFiniteUpdate(f"{where} (algo.on_nonfinite=fail)")
        if self.in_a_row > self.limit:
            raise NonFiniteUpdate(f"{where}: {self.in_a_row} non-finite updates in a row "
                                  f"(algo.max_nonfinite_skips={self.limit})")
        return False

    def check_parameters(self, params: torch.Tensor, version: int, env_steps: int) -> None:
        if not bool(torch.isfinite(params).all()):
            raise NonFiniteUpdate(f"non-finite parameters after worker {self.worker}'s update at policy version "
                                  f"{version}, env step {env_steps}")
