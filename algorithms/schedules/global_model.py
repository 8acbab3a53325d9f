"""The global model of a run with a central copy: the parameters and optimizer an update rule steps.

:class:`GlobalModel` is what an asynchronous run shares (in shared memory for Hogwild workers, in the
trainer or a Ray actor for a parameter server or a central learner): parameters, optimizer, policy-version
and env-step counters, the snapshot ring for controlled staleness. Its :meth:`GlobalModel.target` is what the
run's update rule steps.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from algorithms.config import RunConfig
from algorithms.core.evaluation import take_snapshot
from algorithms.core.model import build_spaces_model
from algorithms.core.optimizers import make_optimizer
from algorithms.infra.checkpoint import (
    Checkpoint,
    check_snapshots,
    make_checkpoint,
    restore_model,
    restore_rng_state,
    rng_state,
)
from algorithms.infra.messages import RecordRows
from algorithms.infra.shared_memory import (
    TRAINER,
    HolderLock,
    ObsStatistics,
    SharedCounters,
    SnapshotRing,
    share_optimizer_state,
)
from algorithms.updates.rule import Target

LOCK_TIMEOUT_S = 10.0  # the trainer's own wait for the lock (checkpoints)
CPU = torch.device("cpu")


@dataclass
class GlobalState:
    """What Hogwild workers share (in shared memory when they are processes): a picklable handle on a
    :class:`GlobalModel`."""

    params: torch.Tensor  # the global model's flat parameters
    optimizer_state: dict[str, torch.Tensor]
    counters: SharedCounters
    lock: HolderLock | None  # None when one process owns the model: nothing to serialize
    snapshots: SnapshotRing | None
    obs_statistics: ObsStatistics | None  # worker 0 publishes its observation statistics here (env.normalize_obs)

    def locked(self, holder: int) -> contextlib.AbstractContextManager[None]:
        return self.lock.held(holder) if self.lock is not None else contextlib.nullcontext()


class GlobalModel:
    """The global parameters, optimizer, counters and snapshot ring of a run: created, resumed, checkpointed.

    ``shared_with`` a multiprocessing context (Hogwild worker processes) places them in shared memory with a
    :class:`HolderLock` of that context;
    otherwise one process owns them, on ``device`` (a parameter server's accelerator), and there is no lock.
    """

    def __init__(self, cfg: RunConfig, resume_state: Checkpoint | None = None, *, shared_with: Any = None,
                 device: torch.device = CPU):
        shared = shared_with is not None
        algo = cfg.algo
        self.model = build_spaces_model(cfg)
        if shared:
            self.model.share_memory()
        elif device != CPU:
            self.model.place(device)
        self.optimizer = make_optimizer(self.model, algo)
        self.counters = SharedCounters()
        snapshots = None
        if resume_state is not None:
            restore_model(resume_state, self.model, self.optimizer)
            self.counters.version = resume_state["policy_version"]
            self.counters.env_steps = resume_state["env_steps"]
            if resume_state["rng"] is not None:  # a local a2c checkpoint keeps its randomness in its collectors
                restore_rng_state(resume_state["rng"])
            snapshots = check_snapshots(resume_state, algo.staleness.delay)
        self.snapshots = None
        if algo.staleness.delay:
            self.snapshots = SnapshotRing(self.model.flat_params, algo.staleness.delay, self.counters.version)
            if snapshots is not None:
                self.snapshots.load_state_dict(snapshots)
        self.lock = HolderLock(shared_with) if shared else None
        # Shared last, after loading: load_state_dict replaces the optimizer's state tensors.
        self.optimizer_state = share_optimizer_state(self.optimizer) if shared else dict(
            self.optimizer.state[self.model.flat_params])
        if shared and self.snapshots is not None:
            self.snapshots.share_memory_()
        # Evaluation normalizes observations as worker 0 does; its statistics are not part of the checkpoint.
        self.obs_statistics = ObsStatistics(self.model.observation_shape) if cfg.env.normalize_obs else None
        if shared and self.obs_statistics is not None:
            self.obs_statistics.share_memory_()

    def state(self) -> GlobalState:
        return GlobalState(self.model.flat_params, self.optimizer_state, self.counters, self.lock, self.snapshots,
                           self.obs_statistics)

    def target(self) -> Target:
        """What an update rule steps: the global parameters, their optimizer and snapshot ring."""
        return Target(self.optimizer, self.model.flat_params, self.snapshots)

    def keep_statistics(self, statistics: dict[str, Any] | None) -> None:
        """Worker 0's observation statistics, when a message carries them, for evaluating the global parameters."""
        if statistics is not None and self.obs_statistics is not None:
            self.obs_statistics.publish(statistics)

    def params_for_worker(self) -> tuple[int, torch.Tensor]:
        """The version a worker syncs to (``delay`` behind the current one, if set) and its parameters."""
        version, params = self.counters.version, self.model.flat_params
        if self.snapshots is not None:
            version, params = self.snapshots.delayed(version)
        return version, params

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """No worker updates the global state meanwhile (the trainer holds the lock, if there is one)."""
        if self.lock is not None and not self.lock.acquire(TRAINER, timeout=LOCK_TIMEOUT_S):
            raise RuntimeError(f"could not take the global lock within {LOCK_TIMEOUT_S}s to checkpoint")
        try:
            yield
        finally:
            if self.lock is not None:
                self.lock.release()

    def checkpoint(self, collectors: list[dict[str, Any]] | None = None) -> Checkpoint:
        """A consistent copy of the global state (taken under the lock while workers run)."""
        with self.frozen():
            return self.checkpoint_unlocked(collectors)

    def checkpoint_unlocked(self, collectors: list[dict[str, Any]] | None = None) -> Checkpoint:
        return make_checkpoint(
            model={name: tensor.clone() for name, tensor in self.model.state_dict().items()},
            optimizer=copy.deepcopy(self.optimizer.state_dict()), env_steps=self.counters.env_steps,
            policy_version=self.counters.version, collectors=collectors, rng=rng_state(),
            snapshots=self.snapshots.state_dict() if self.snapshots is not None else None)


def evaluate_if_due(cfg: RunConfig, record: RecordRows, global_model: GlobalModel, workers_done: bool) -> None:
    """Hand the record the global parameters to evaluate, with worker 0's observation statistics, when an
    evaluation is due; the final one once the workers are done (others may still apply their last updates)."""
    counters = global_model.counters
    final = counters.env_steps >= cfg.total_env_steps
    if record.evaluation_due(counters.env_steps) and (workers_done or not final):
        with global_model.frozen():
            snapshot = take_snapshot(global_model.model.flat_params, counters.env_steps, counters.version,
                                     global_model.obs_statistics)
        record.evaluate(snapshot)


