"""The actor-learner schedule (IMPALA; Espeholt et al. 2018), whatever carries the unrolls: an actor's unroll
(:func:`act`) and the central learner (:class:`UnrollLearner`), which takes unrolls in batches, steps the global
model with the run's update rule and records a row per unroll. The local transport moves unrolls through
shared-memory slots, Ray through its object store, the simulator on a virtual clock."""

from __future__ import annotations

import time

from algorithms.config import RunConfig
from algorithms.core.rollout import Unrolls, unroll_from
from algorithms.infra.messages import Record, UnrollReady, record_episodes, record_update
from algorithms.schedules.global_model import GlobalModel
from algorithms.schedules.worker import RolloutWorker
from algorithms.updates import rule_for
from algorithms.updates.rule import Source


def act(actor: RolloutWorker, version: int, slot: int = 0) -> tuple[UnrollReady, Unrolls]:
    """One unroll acted with the parameters of ``version`` the actor's model holds: its announcement (``slot``: where
    the local transport keeps its arrays) and its arrays with the behaviour log-probabilities, which are the
    collector's buffers (copy them before the next unroll)."""
    episodes = actor.collect()
    unroll = unroll_from(actor.collector, actor.model, version)
    return UnrollReady(actor.worker, slot, version, episodes, actor.steps, time.monotonic(),
                       actor.evaluation_statistics()), unroll


class UnrollLearner:
    """The central learner: one update of the global model from a batch of unrolls, a row recorded per unroll."""

    def __init__(self, cfg: RunConfig, record: Record, global_model: GlobalModel):
        self.cfg, self.record, self.global_model = cfg, record, global_model
        self.rule = rule_for(cfg, global_model.target())

    def finished(self) -> bool:
        return self.global_model.counters.env_steps >= self.cfg.total_env_steps

    def learn(self, batch: list[UnrollReady], unrolls: Unrolls) -> None:
        """Learn from ``unrolls`` (announced by ``batch``, in that order), then record their episodes and rows."""
        model, counters = self.global_model, self.global_model.counters
        env_steps = counters.env_steps
        sources = [Source(unroll.worker, unroll.version) for unroll in batch]
        rows = self.rule.learn(model.model, unrolls, counters, sources, sum(unroll.steps for unroll in batch))
        for unroll in batch:
            model.keep_statistics(unroll.obs_statistics)
            record_episodes(self.record, unroll.worker, env_steps, unroll.episodes)
            env_steps += unroll.steps
        for learned in rows:  # all at the update's env step, as a synchronous round's rows
            record_update(self.record, learned.worker, learned.row, **learned.extra)
