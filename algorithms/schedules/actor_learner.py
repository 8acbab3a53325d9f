"""The actor-learner schedule's learner, whatever carries the unrolls: one update from a batch of unrolls,
the new parameters published, a row recorded per unroll.
"""

from __future__ import annotations

from typing import Any

from algorithms.core.optimizers import set_learning_rate
from algorithms.core.rollout import Unrolls
from algorithms.infra.messages import Record, UnrollReady, UpdateRow, record_episodes, record_update
from algorithms.schedules.global_model import GlobalModel
from algorithms.schedules.parameter_server import keep_statistics
from algorithms.updates.guard import NonFiniteGuard
from algorithms.updates.off_policy import off_policy_gradients
from algorithms.updates.rule import learning_rate


class Learner:
    """The learner over any transport (slots here, Ray calls in ``ray_backend``): one update from a batch of unrolls,
    the new parameters published, and a row recorded per unroll."""

    def __init__(self, cfg: Any, record: Record, global_model: GlobalModel):
        self.cfg, self.algo, self.record, self.global_model = cfg, cfg.algo, record, global_model
        self.guard = NonFiniteGuard(cfg.algo, worker=0)

    def finished(self) -> bool:
        return self.global_model.counters.env_steps >= self.cfg.total_env_steps

    def learn(self, batch: list[UnrollReady], unrolls: Unrolls) -> None:
        """Step with the corrected loss on ``unrolls`` (announced by ``batch``, in that order), then record."""
        model, counters = self.global_model, self.global_model.counters
        version, env_steps = counters.version, counters.env_steps
        steps = sum(unroll.steps for unroll in batch)
        lr = learning_rate(self.algo, env_steps, self.cfg.total_env_steps)
        stats, importance_ratio = off_policy_gradients(model.model, unrolls, self.algo)
        applied = self.guard.admits(stats, version, env_steps + steps)
        if applied:
            set_learning_rate(model.optimizer, lr)
            model.optimizer.step()
            self.guard.check_parameters(model.model.flat_params, version, env_steps + steps)
            if model.snapshots is not None:
                model.snapshots.record(version + 1, model.model.flat_params)
        counters.version, counters.env_steps = version + applied, env_steps + steps
        for unroll in batch:
            keep_statistics(model, unroll)
            record_episodes(self.record, unroll.worker, env_steps, unroll.episodes)
            env_steps += unroll.steps
        for unroll in batch:  # all at the update's env step, as a synchronous round's rows
            record_update(self.record, unroll.worker, UpdateRow(counters.env_steps, unroll.version, version, applied,
                                                                lr, **stats), importance_ratio=importance_ratio)
