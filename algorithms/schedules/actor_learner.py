"""The actor-learner schedule (IMPALA; Espeholt et al. 2018), whatever carries the unrolls: an actor's unroll
(:func:`act`) and the central learner (:class:`UnrollLearner`), which takes unrolls in batches, steps the global
model with the run's update rule and records a row per unroll. The local transport moves unrolls through
shared-memory slots, Ray through its object store, the simulator on a virtual clock."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from algorithms.config import RunConfig
from algorithms.core.rollout import Unrolls, behaviour_log_probs, unroll_from
from algorithms.infra.messages import Episode, Record, UnrollReady, record_episodes, record_update
from algorithms.schedules.global_model import GlobalModel
from algorithms.schedules.worker import RolloutWorker
from algorithms.updates import rule_for
from algorithms.updates.rule import Source


def act(actor: RolloutWorker, version: int, slot: int = 0) -> tuple[UnrollReady, Unrolls]:
    """One unroll acted with the parameters of ``version`` the actor's model holds: its announcement (``slot``: where
    the local transport keeps its arrays) and its arrays with the behaviour log-probabilities, which are the
    collector's buffers (copy them before the next unroll)."""
    episodes = actor.collect()
    return announce(actor, version, episodes, slot), unroll_from(actor.collector, actor.model, version)


def announce(actor: RolloutWorker, version: int, episodes: list[Episode], slot: int) -> UnrollReady:
    return UnrollReady(actor.worker, slot, version, episodes, actor.steps, time.monotonic(),
                       actor.evaluation_statistics())


class InFlightUnroll:
    """An unroll whose actor takes each newly published version between its steps (``algo.in_flight_updates``:
    PipelineRL's in-flight weight updates, the extreme of asynchrony). The behaviour log-probabilities of the steps
    acted with one version are computed with it before the next is loaded, and each step's version is kept, so the
    corrections and ``max_policy_lag`` see every step's own behaviour policy. The unroll is announced with the version
    of its first step (its oldest). A transport drives it: :meth:`step`, and :meth:`load` between steps when it has
    a newer version."""

    def __init__(self, actor: RolloutWorker, version: int):
        self.actor, self.first_version, self.version = actor, version, version
        self.steps = actor.collector.steps(actor.model)
        shape = actor.collector.rollout.rewards.shape
        self.log_probs, self.versions = torch.empty(shape), torch.empty(shape, dtype=torch.int64)
        self.taken = 0  # steps acted; those from segment_start on with self.version
        self.segment_start = 0
        self.episodes: list[Episode] | None = None

    def step(self) -> bool:
        """Act the next step; whether the unroll has steps left."""
        try:
            self.taken = next(self.steps)
            return True
        except StopIteration as done:
            self.episodes, self.taken = done.value, len(self.log_probs)
            return False

    def load(self, read: Callable[[torch.Tensor], int]) -> None:
        """Close the segment acted with the model's parameters, then ``read`` newer ones into it."""
        self._close_segment()
        self.version = read(self.actor.model.flat_params)

    def finish(self, slot: int = 0) -> tuple[UnrollReady, Unrolls]:
        """The acted unroll, as :func:`act` gives it."""
        assert self.episodes is not None, "step() until the unroll has no steps left"
        self._close_segment()
        collector, model = self.actor.collector, self.actor.model
        return (announce(self.actor, self.first_version, self.episodes, slot),
                unroll_from(collector, model, self.first_version, self.log_probs, self.versions))

    def _close_segment(self) -> None:
        start, stop = self.segment_start, self.taken
        self.log_probs[start:stop] = behaviour_log_probs(self.actor.collector.rollout, self.actor.model, start, stop)
        self.versions[start:stop] = self.version
        self.segment_start = stop


def starving(waiting: list[int], batch_size: int, num_workers: int) -> list[int]:
    """The actors the learner waits for: while fewer than ``batch_size`` unrolls wait (by actor, ``waiting``), and some
    do, those with none among them (an actor that acts ahead, or waits for its update, is held up by them)."""
    if not waiting or len(waiting) >= batch_size:
        return []
    return [worker for worker in range(num_workers) if worker not in waiting]


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
