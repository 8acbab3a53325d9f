"""A Hogwild worker, whatever runs it: sync to the shared parameters, compute a gradient, step the shared
parameters and optimizer state itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from algorithms.core.optimizers import make_optimizer
from algorithms.infra.messages import Episode, UpdateRow
from algorithms.infra.shared_memory import attach_optimizer_state
from algorithms.infra.supervision import uninterruptible
from algorithms.schedules.global_model import GlobalState
from algorithms.schedules.worker import LocalLearner
from algorithms.updates.guard import NonFiniteGuard
from algorithms.updates.rule import apply_gradient, learning_rate

Report = Callable[[UpdateRow, Sequence[Episode]], None]  # a worker's rows, reported while it holds the lock


class HogwildWorker:
    """One worker of the shared global model: sync -> learn -> apply, callable step by step."""

    def __init__(self, cfg: Any, worker: int, state: GlobalState, env_steps: int,
                 collector_state: dict[str, Any] | None = None):
        self.cfg, self.algo, self.worker, self.state = cfg, cfg.algo, worker, state
        self.learner = LocalLearner(cfg, worker, env_steps, collector_state)
        if state.params.grad is None:
            # The global tensor arrives without .grad in a spawned worker: give it one of this process's
            # own, into which each local gradient is copied.
            state.params.grad = torch.zeros_like(state.params)
        self.optimizer = make_optimizer(state.params, self.algo)
        attach_optimizer_state(self.optimizer, state.optimizer_state)
        self.guard = NonFiniteGuard(self.algo, worker)

    def step(self, report: Report | None = None) -> tuple[UpdateRow, list[Episode]]:
        """One update; returns its row and the episodes that ended (also given to ``report``, see :meth:`apply`)."""
        version_at_sync = self.sync()
        episodes, stats = self.learner.learn()
        return self.apply(version_at_sync, stats, episodes, report), episodes

    def sync(self) -> int:
        """Copy the global parameters (``delay`` versions behind, if set) into the local model; return their version."""
        with self.state.locked(self.worker) if self.algo.lock else contextlib.nullcontext():
            version, params = self.state.counters.version, self.state.params
            if self.state.snapshots is not None:
                version, params = self.state.snapshots.delayed(version)
            self.learner.model.flat_params.copy_(params)
            return version

    def apply(self, version_at_sync: int, stats: dict[str, float], episodes: Sequence[Episode] = (),
              report: Report | None = None) -> UpdateRow:
        """Step the global model with the local gradient (or drop it), then take the version it was applied to
        and advance the env steps. With ``lock`` all of it holds the lock; lock-free, only taking the version,
        and ``report(row, episodes)``, so that a checkpoint taken under the lock accounts for exactly the rows
        reported before it. A stopping trainer's SIGTERM waits for the row (:func:`uninterruptible`)."""
        state, counters = self.state, self.state.counters
        with uninterruptible(), state.locked(self.worker) if self.algo.lock else contextlib.nullcontext():
            lr = learning_rate(self.algo, counters.env_steps, self.cfg.total_env_steps)
            version, env_steps = counters.version, counters.env_steps + self.learner.steps  # for messages
            applied = self.guard.admits(stats, version, env_steps)
            if applied:
                applied, lr = apply_gradient(self.optimizer, state.params, self.learner.model.flat_grads, version,
                                             version_at_sync, lr, self.algo.staleness, state.snapshots)
                if self.algo.lock:  # lock-free, a read races other workers' steps: the next loss check sees it
                    self.guard.check_parameters(state.params, version, env_steps)
            with contextlib.nullcontext() if self.algo.lock else state.locked(self.worker):
                version_at_apply = counters.version
                counters.version += applied
                counters.env_steps = env_steps = counters.env_steps + self.learner.steps
                row = UpdateRow(env_steps, version_at_sync, version_at_apply, applied, lr, **stats)
                if report is not None:
                    report(row, episodes)
        return row

    def close(self) -> None:
        self.learner.close()
