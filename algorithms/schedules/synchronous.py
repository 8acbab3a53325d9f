"""The synchronous schedule, whatever carries its messages: every worker computes a gradient from the same
parameters, and one step is taken with their mean (summed in worker order, so that every place that computes it
gets the same bits). Written once here: the round's step (:func:`mean_step`), its rows (:func:`round_episodes`,
:func:`round_row`), when a round checkpoints, how the workers' rows are recorded (in order, one complete update at
a time: :class:`SyncLog`), and the checkpoint assembled from every replica's part after checking that the
replicas agree.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from algorithms.infra.checkpoint import Checkpoint, make_checkpoint
from algorithms.infra.messages import (
    LOSS_STATS,
    CheckpointPart,
    Episode,
    EpisodeRow,
    RecordRows,
    UpdateRow,
    record_episode,
    record_update,
)
from algorithms.infra.shared_memory import SharedRows, average_gradients
from algorithms.updates.rule import Counters, Step, UpdateRule


def mean_step(rule: UpdateRule, gradients: torch.Tensor, stats: Sequence[dict[str, float]], counters: Counters,
              steps: int) -> Step:
    """The round's step where one process holds every worker's gradient (``[num_workers, num_params]``) and loss
    statistics: each worker's update admitted (a round cannot skip one), the mean applied, the counters advanced
    by one version and the round's ``steps``."""
    version, env_steps = counters.version, counters.env_steps
    for worker, worker_stats in enumerate(stats):
        rule.admit(worker, worker_stats, version, env_steps + steps)
    assert rule.target is not None and rule.target.params.grad is not None  # a stepping rule's, with its buffer
    average_gradients(gradients, out=rule.target.params.grad)
    step = rule.step(version, version, env_steps, steps)
    counters.version, counters.env_steps = version + 1, env_steps + steps
    return step


def round_episodes(version: int, env_steps: int, episodes: Sequence[Episode], num_workers: int) -> list[EpisodeRow]:
    """A worker's episodes of the round at ``version``, which started at ``env_steps``: the workers step in lockstep,
    so the run has made ``num_workers`` steps for each of this worker's."""
    return [EpisodeRow(version, env_steps + episode.steps_into_rollout * num_workers, episode.ret, episode.length)
            for episode in episodes]


def round_row(version_at_sync: int, version: int, env_steps: int, step: Step, stats: dict[str, float],
              wait_time: float, checkpoint: bool = False) -> UpdateRow:
    """A worker's row of the round at ``version`` on a rollout collected at ``version_at_sync`` (the same but for
    a rule's later steps on one rollout; ``env_steps``: after the rollout), which waited ``wait_time`` seconds for
    the slowest worker."""
    losses = {name: stats[name] for name in LOSS_STATS}  # a rule's own statistics are not the shared row's
    return UpdateRow(env_steps, version_at_sync, version, step.applied, step.lr, **losses, wait_time=wait_time,
                     checkpoint=checkpoint)


def checkpoint_crossed(env_steps: int, steps_per_update: int, interval: int) -> bool:
    """Whether the update that brought the run to ``env_steps`` passed a multiple of ``interval``
    (the run record's ``checkpoint_due`` rule, computed by every worker from the same counters)."""
    return env_steps // interval > (env_steps - steps_per_update) // interval


class ReplicaDivergence(RuntimeError):
    """The replicas' parameters differ: the synchronous update is broken."""


def checkpoint_from_parts(parts: dict[int, dict[str, Any]], version: int, env_steps: int) -> Checkpoint:
    """The run's checkpoint from every worker's part, after checking that all replicas are bit-identical."""
    reference = parts[0]["params"]
    differing = [worker for worker, part in sorted(parts.items()) if not torch.equal(part["params"], reference)]
    if differing:
        gap = max(float((parts[worker]["params"] - reference).abs().max()) for worker in differing)
        raise ReplicaDivergence(f"at policy version {version} the parameters of workers {differing} differ from "
                                f"worker 0's (max abs difference {gap:g})")
    return make_checkpoint(parts[0]["model"], parts[0]["optimizer"], env_steps, version,
                           collectors=[parts[worker]["collector"] for worker in sorted(parts)])


class SyncLog:
    """Moves the workers' rows into the run record one complete synchronous update at a time, in order,
    and saves a checkpoint right after the rows of the update it was taken at."""

    def __init__(self, record: RecordRows, num_workers: int, version: int, env_steps: int):
        self.record, self.num_workers = record, num_workers
        self.version, self.env_steps = version, env_steps  # the next update to record, the steps before it
        self.updates: dict[int, list[tuple[int, UpdateRow]]] = defaultdict(list)
        self.episodes: dict[int, list[tuple[int, EpisodeRow]]] = defaultdict(list)
        self.snapshots: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)

    def add_snapshot(self, worker: int, part: CheckpointPart) -> None:
        self.snapshots[part.version][worker] = pickle.loads(part.part)

    def add(self, worker: int, updates: list[UpdateRow], episodes: list[EpisodeRow]) -> None:
        for row in updates:
            self.updates[int(row.version_at_apply)].append((worker, row))
        for episode in episodes:
            self.episodes[int(episode.version)].append((worker, episode))

    def drain(self, tables: dict[int, tuple[SharedRows[UpdateRow], SharedRows[EpisodeRow]]]) -> None:
        # Updates first: a worker writes an update's episodes before the update, so every update drained
        # here has its episodes in the drain that follows.
        drained = {worker: updates.drain() for worker, (updates, _) in tables.items()}
        for worker, (_, episodes) in tables.items():
            self.add(worker, drained[worker], episodes.drain())

    def record_complete(self) -> bool:
        """Record every update whose rows all arrived, then the checkpoint taken after it if there is one
        (once every part of it arrived); return whether any update was recorded."""
        progressed = False
        while len(rows := self.updates.get(self.version, ())) == self.num_workers:
            after = self.version + 1
            checkpoint = any(row.checkpoint for _, row in rows)
            if checkpoint and len(self.snapshots.get(after, ())) < self.num_workers:
                break  # its parts are on their way
            self._record(self.version)
            progressed = True
            if checkpoint:
                self.record.save_checkpoint(checkpoint_from_parts(self.snapshots.pop(after), after, self.env_steps))
        return progressed

    def record_rest(self) -> None:
        """After a failure: record every row that arrived, complete update or not."""
        for version in sorted(set(self.updates) | set(self.episodes)):
            self._record(version)

    def finished(self) -> bool:
        """Whether every row that arrived is recorded and every checkpoint saved."""
        return not (self.updates or self.episodes or self.snapshots)

    def _record(self, version: int) -> None:
        # by env step, then worker: the same order however the workers' rows arrived
        for worker, episode in sorted(self.episodes.pop(version, []), key=lambda item: (item[1].env_steps, item[0])):
            record_episode(self.record, worker, episode)
        for worker, row in sorted(self.updates.pop(version, []), key=lambda item: item[0]):
            record_update(self.record, worker, row)
            self.env_steps = int(row.env_steps)
        self.version = version + 1
