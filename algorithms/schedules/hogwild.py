"""A Hogwild worker, whatever runs it: sync to the shared parameters, compute a gradient, step the shared
parameters and optimizer state itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from algorithms.config import RunConfig
from algorithms.core.optimizers import make_optimizer
from algorithms.infra.messages import Episode, UpdateRow
from algorithms.infra.shared_memory import attach_optimizer_state
from algorithms.infra.supervision import uninterruptible
from algorithms.schedules.global_model import GlobalState
from algorithms.schedules.worker import RolloutWorker
from algorithms.updates import rule_for
from algorithms.updates.rule import Target

Report = Callable[[UpdateRow, Sequence[Episode]], None]  # a worker's rows, reported while it holds the lock


class HogwildWorker:
    """One worker of the shared global model: sync -> compute a gradient -> step the shared parameters with the
    run's update rule, callable step by step."""

    def __init__(self, cfg: RunConfig, worker: int, state: GlobalState, env_steps: int,
                 collector_state: dict[str, Any] | None = None):
        self.algo, self.worker, self.state = cfg.algo, worker, state
        self.rollouts = RolloutWorker(cfg, worker, env_steps, collector_state)
        if state.params.grad is None:
            # The global tensor arrives without .grad in a forked worker: give it one of this process's own,
            # into which each local gradient is copied.
            state.params.grad = torch.zeros_like(state.params)
        optimizer = make_optimizer(state.params, self.algo)
        attach_optimizer_state(optimizer, state.optimizer_state)
        self.rule = rule_for(cfg, Target(optimizer, state.params, state.snapshots))

    def step(self, report: Report | None = None) -> tuple[UpdateRow, list[Episode]]:
        """One update; returns its row and the episodes that ended (also given to ``report``, see :meth:`apply`)."""
        version_at_sync = self.sync()
        episodes, stats = self.rollouts.compute_gradient()
        return self.apply(version_at_sync, stats, episodes, report), episodes

    def sync(self) -> int:
        """Copy the global parameters (``delay`` versions behind, if set) into the local model; return their version."""
        with self.state.locked(self.worker) if self.algo.lock else contextlib.nullcontext():
            version, params = self.state.counters.version, self.state.params
            if self.state.snapshots is not None:
                version, params = self.state.snapshots.delayed(version)
            self.rollouts.model.flat_params.copy_(params)
            return version

    def apply(self, version_at_sync: int, stats: dict[str, float], episodes: Sequence[Episode] = (),
              report: Report | None = None) -> UpdateRow:
        """Step the global model with the local gradient (or drop it), then take the version it was applied to
        and advance the env steps. With ``lock`` all of it holds the lock; lock-free, only taking the version,
        and ``report(row, episodes)``, so that a checkpoint taken under the lock accounts for exactly the rows
        reported before it. A stopping trainer's SIGTERM waits for the row (:func:`uninterruptible`)."""
        state, counters, gradient, steps = self.state, self.state.counters, self.rollouts.model.flat_grads, \
            self.rollouts.steps
        with uninterruptible(), state.locked(self.worker) if self.algo.lock else contextlib.nullcontext():
            # lock-free, reading the parameters would race other workers' steps: the next loss check sees them
            step = self.rule.apply(self.worker, stats, counters.version, version_at_sync, counters.env_steps, steps,
                                   gradient, check=self.algo.lock)
            with contextlib.nullcontext() if self.algo.lock else state.locked(self.worker):
                row = self.rule.advance(counters, step, stats, version_at_sync, steps)
                if report is not None:
                    report(row, episodes)
        return row

    def close(self) -> None:
        self.rollouts.close()
