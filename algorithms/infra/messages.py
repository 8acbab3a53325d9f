"""Named types for everything that crosses a process, a pipe, a Ray call or the run record.

Rows (:class:`UpdateRow`, :class:`EpisodeRow`) are what workers report and the record stores; messages
(:class:`Join`, :class:`Push`, :class:`Reply`, :class:`UnrollReady`, :class:`SlotFree`, :class:`CheckpointPart`,
:class:`WorkerDone`, :class:`WorkerError`) are what workers and servers say to each other over any transport. Fields are
read by name, so reordering one cannot silently misread another. :class:`Record` is what an algorithm
may call on the run record (implemented by ``experiments.record``); :class:`RecordRows`, its part that rows,
evaluations and checkpoints go to, is all a server needs (a Ray server actor records into a stand-in).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from algorithms.infra.checkpoint import Checkpoint


class RecordRows(Protocol):
    """What the rows, evaluations and checkpoints of a run go to: the run record, or what stands for it where the
    record is out of reach (a Ray server actor's ``RecordBuffer``, which the driver replays into the record)."""

    def episode(self, worker: int, env_steps: int, ret: float, length: int) -> None: ...

    def update(self, worker: int, env_steps: int, version_at_sync: int, version_at_apply: int,
               applied: bool, lr: float, wait_time: float = 0.0, **stats: float) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...

    def evaluation_due(self, env_steps: int) -> bool: ...

    def evaluate(self, snapshot: EvalSnapshot) -> None: ...

    def save_checkpoint(self, state: Checkpoint) -> None: ...


class Record(RecordRows, Protocol):
    """What an algorithm may call on the run record."""

    stop_requested: bool  # set by SIGINT/SIGTERM: finish the current update, checkpoint, return
    resume_state: Checkpoint | None  # the checkpoint to continue from, when resuming

    def checkpoint_due(self, env_steps: int) -> bool: ...

    def use_clock(self, clock: Callable[[], float]) -> None: ...  # a simulated run's virtual clock, in seconds


class EvalSnapshot(NamedTuple):
    """The policy to evaluate, from a learner or worker to the record: its flat parameters and the observation
    statistics it was trained with."""

    env_steps: int
    policy_version: int
    params: bytes  # flat float32 (see to_wire)
    obs_normalizer: dict[str, Any] | None  # ObservationNormalizer.state_dict(), when observations are normalized


class UpdateRow(NamedTuple):
    """One applied or dropped gradient, as a worker or server reports it (through shared memory as floats)."""

    env_steps: int  # the run's env steps including this update's rollout
    version_at_sync: int  # the policy version the gradient was computed with
    version_at_apply: int  # the version it was applied to (or that was current when it was dropped)
    applied: bool
    lr: float
    policy_loss: float  # the loss statistics, in the order of LOSS_STATS
    value_loss: float
    entropy: float
    grad_norm: float
    wait_time: float = 0.0  # seconds the worker waited at a synchronous barrier
    checkpoint: bool = False  # a synchronous worker sent its checkpoint part after this update

    def stats(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in LOSS_STATS}


class EpisodeRow(NamedTuple):
    """One finished episode: the policy version its rollout was acted with, and the run's env step at its end."""

    version: int
    env_steps: int
    ret: float  # undiscounted sum of raw rewards
    length: int


def record_update(record: RecordRows, worker: int, row: UpdateRow, **extra: float) -> None:
    """Record one update (``extra``: statistics only some schedules have, as IMPALA's ``importance_ratio``); one
    dropped for a non-finite loss or gradient is also logged as ``update_skipped``."""
    nonfinite = [name for name, value in row.stats().items() if not math.isfinite(value)]
    if nonfinite and not row.applied:
        record.event("update_skipped", worker=worker, env_steps=int(row.env_steps),
                     version=int(row.version_at_apply), nonfinite=nonfinite)
    record.update(worker, int(row.env_steps), int(row.version_at_sync), int(row.version_at_apply),
                  applied=bool(row.applied), lr=float(row.lr), wait_time=float(row.wait_time), **row.stats(), **extra)


def record_episode(record: RecordRows, worker: int, row: EpisodeRow) -> None:
    record.episode(worker, int(row.env_steps), float(row.ret), int(row.length))


def record_episodes(record: RecordRows, worker: int, env_steps_before: int, episodes: list[Episode]) -> None:
    """Episodes of one rollout that started at ``env_steps_before``, stepped by this worker alone."""
    for episode in episodes:
        record.episode(worker, env_steps_before + episode.steps_into_rollout, episode.ret, episode.length)


# --------------------------------------------------------------------------- messages
class Join(NamedTuple):
    """A parameter-server worker's first message: it waits for the parameters to learn with."""

    worker: int
    sent_at: float  # time.monotonic(), system-wide: a server orders messages by it


class Push(NamedTuple):
    """A worker's gradient, tagged with the policy version it was computed with."""

    worker: int
    version_at_sync: int
    gradient: bytes  # flat float32 (see to_wire)
    stats: dict[str, float]  # LOSS_STATS
    episodes: list[Episode]  # that ended during the rollout
    steps: int  # env steps of the rollout
    collector_state: dict[str, Any] | None  # sent when the server asked for it (a checkpoint follows)
    sent_at: float
    obs_statistics: dict[str, Any] | None = None  # worker 0's observation statistics (normalize_obs), for evaluation


class Reply(NamedTuple):
    """A server's answer to a join or push: what to learn with next. ``None`` instead means: stop."""

    version: int
    params: bytes  # flat float32 (see to_wire)
    send_collector_state: bool  # push the collector's state with the next gradient


class UnrollReady(NamedTuple):
    """An IMPALA actor's unroll, written into its shared-memory ``slot``: what the learner needs besides the arrays."""

    worker: int
    slot: int
    version: int  # the policy version the unroll was acted with
    episodes: list[Episode]  # that ended during the unroll
    steps: int  # env steps of the unroll
    sent_at: float  # time.monotonic(): a learner takes unrolls found waiting together in this order
    obs_statistics: dict[str, Any] | None = None  # actor 0's observation statistics (normalize_obs), for evaluation


class SlotFree(NamedTuple):
    """A learner's answer to an IMPALA actor: the unroll in ``slot`` is taken, write another there. ``None``
    instead means: stop."""

    slot: int


class CheckpointPart(NamedTuple):
    """A synchronous worker's share of a checkpoint after an update: pickled collector state and
    parameters (plus the model and optimizer from worker 0)."""

    version: int
    env_steps: int
    part: bytes


class WorkerDone(NamedTuple):
    """Sent last by a worker whose loop ended normally, so its exit needs no further waiting."""


class WorkerError(NamedTuple):
    """Sent by a worker whose loop raised, just before it exits with status 1."""

    traceback: str
    diverged: str | None = None  # the NonFiniteUpdate message when the run diverged: it ends the run, no restart


def to_wire(vector: torch.Tensor) -> bytes:
    """A flat float32 parameter or gradient vector as it travels: bytes, which Ray 2.60 moved 0.3-0.4 ms faster
    per call than the same numpy array at every size tried (18 kB to 7 MB), and a pipe pickles with one copy."""
    return vector.cpu().numpy().tobytes()  # cpu(): a parameter server's model may sit on an accelerator


def from_wire(data: bytes) -> torch.Tensor:
    """A read-only view of a vector from the wire, without a copy (see :func:`read_only_view`)."""
    return read_only_view(np.frombuffer(data, dtype=np.float32))


def read_only_view(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only array (from the wire or Ray's object store), without a copy: it is only ever copied
    from, so torch's warning about non-writable arrays does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


# What every update reports about its loss: the three terms below and the pre-clipping gradient norm.
LOSS_STATS = ("policy_loss", "value_loss", "entropy", "grad_norm")


class Episode(NamedTuple):
    """An episode that ended during a rollout."""

    ret: float  # undiscounted sum of raw rewards (the game score under episodes_from_info)
    length: int
    steps_into_rollout: int  # env steps (all envs together) from the rollout's start to this end
