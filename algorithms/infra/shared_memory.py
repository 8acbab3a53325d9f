"""State that worker processes share on one machine, created by the trainer before any worker starts.

Optimizer statistics (:func:`share_optimizer_state`), the run's counters (:class:`SharedCounters`), a
lock whose holder is known (:class:`HolderLock`), recent parameter versions for controlled staleness
(:class:`SnapshotRing`), a worker's observation statistics for evaluation (:class:`ObsStatistics`), rows a
worker reports without a system call (:class:`SharedRows`), the synchronous workers' meeting point
(:class:`GradientExchange`) and the parameters a learner publishes to its actors (:class:`ParameterBoard`).
Each pickles into a spawned worker as handles to the same memory.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import torch

Row = TypeVar("Row", bound=NamedTuple)
NOBODY = -1  # the holder of a free HolderLock
TRAINER = -2  # the trainer's holder id (workers use their index)


def share_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Move the state of an optimizer over one flat tensor (created up front by ``make_optimizer``,
    including Adam's step count) into shared memory, and return it by name."""
    (param,) = optimizer.param_groups[0]["params"]
    state = optimizer.state[param]
    for tensor in state.values():
        tensor.share_memory_()
    return dict(state)


def attach_optimizer_state(optimizer: torch.optim.Optimizer, shared_state: dict[str, torch.Tensor]) -> None:
    """Make a worker's optimizer update the shared statistics instead of its own."""
    (param,) = optimizer.param_groups[0]["params"]
    optimizer.state[param].update(shared_state)


class SharedInts:
    """Base for a few int64 values in shared memory, read and written through a numpy view.

    The view (not picklable) is rebuilt after unpickling in a worker; element access on it costs a
    fraction of a microsecond, against several for indexing the tensor.
    """

    def __init__(self, values: Sequence[int]):
        self._init(torch.tensor(list(values), dtype=torch.int64).share_memory_())

    def _init(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.view = tensor.numpy()

    def __getstate__(self) -> dict[str, Any]:
        return {"tensor": self.tensor}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._init(state["tensor"])


class SharedCounters(SharedInts):
    """The run's policy version (applied updates), env steps and stop flag.

    Read-modify-write sequences must hold the run's :class:`HolderLock`; single reads need not.
    """

    def __init__(self, version: int = 0, env_steps: int = 0):
        super().__init__([version, env_steps, 0])

    @property
    def version(self) -> int:
        return int(self.view[0])

    @version.setter
    def version(self, value: int) -> None:
        self.view[0] = value

    @property
    def env_steps(self) -> int:
        return int(self.view[1])

    @env_steps.setter
    def env_steps(self, value: int) -> None:
        self.view[1] = value

    @property
    def stop(self) -> bool:
        return bool(self.view[2])

    def request_stop(self) -> None:
        self.view[2] = 1


class HolderLock(SharedInts):
    """A process lock that records which worker holds it.

    A SIGKILLed process never releases a multiprocessing lock, and every other process would wait on
    it forever; knowing the holder lets the trainer free the lock of a worker it saw die.
    """

    def __init__(self, context: Any):
        super().__init__([NOBODY])
        self.lock = context.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "lock": self.lock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._init(state["tensor"])
        self.lock = state["lock"]

    def acquire(self, holder: int, timeout: float | None = None) -> bool:
        if not self.lock.acquire(True, timeout):
            return False
        self.view[0] = holder
        return True

    def release(self) -> None:
        self.view[0] = NOBODY
        self.lock.release()

    @contextmanager
    def held(self, holder: int) -> Iterator[None]:
        self.acquire(holder)
        try:
            yield
        finally:
            self.release()

    def held_by_workers(self) -> list[int]:
        """The worker that holds the lock now, if one does (not the trainer), as a list."""
        holder = int(self.view[0])
        return [holder] if holder >= 0 else []

    def free_if_held_by(self, holder: int) -> bool:
        """Release the lock if ``holder`` (a dead worker) holds it; return whether it did."""
        if int(self.view[0]) != holder:
            return False
        self.release()
        return True


class SnapshotRing:
    """The parameters of the latest ``delay + 1`` policy versions (version ``v`` in slot ``v % (delay + 1)``).

    A worker that syncs from :meth:`delayed` acts and computes its gradient with parameters ``delay``
    versions old; applied at the current version, that gradient has staleness exactly ``delay`` once
    ``delay`` versions exist. Every applied update must :meth:`record` its new version.
    """

    def __init__(self, params: torch.Tensor, delay: int, version: int = 0):
        self.delay = delay
        self.slots = params.detach().clone().unsqueeze(0).repeat(delay + 1, 1)
        self.first_version = version  # versions before this one (before a resume) are not in the ring

    def share_memory_(self) -> SnapshotRing:
        self.slots.share_memory_()
        return self

    def delayed(self, version: int) -> tuple[int, torch.Tensor]:
        """The oldest version within ``delay`` of ``version``, and its parameters."""
        target = max(version - self.delay, self.first_version)
        return target, self.slots[target % (self.delay + 1)]

    def record(self, version: int, params: torch.Tensor) -> None:
        self.slots[version % (self.delay + 1)].copy_(params)

    def state_dict(self) -> dict[str, Any]:
        return {"slots": self.slots.clone(), "first_version": self.first_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slots.copy_(state["slots"])
        self.first_version = state["first_version"]


class ParameterBoard:
    """The latest parameters a learner published and their policy version, which actors copy without a lock.

    One writer (the learner) and any number of readers, under a sequence lock: the writer makes the sequence odd,
    writes, then makes it even again; a reader retries a copy during which the sequence changed or was odd. A reader
    never blocks the learner, and a SIGKILLed reader holds nothing.
    """

    def __init__(self, version: int, params: torch.Tensor):
        self.params = params.detach().to("cpu", copy=True).share_memory_()
        self.counters = SharedInts([0, version])  # sequence, version

    def publish(self, version: int, params: torch.Tensor) -> None:
        view = self.counters.view
        view[0] += 1
        self.params.copy_(params)
        view[1] = version
        view[0] += 1

    @property
    def version(self) -> int:
        """The version published last (or being published)."""
        return int(self.counters.view[1])

    def read_into(self, out: torch.Tensor) -> int:
        """Copy the published parameters into ``out``; return their version."""
        view = self.counters.view
        while True:
            sequence = int(view[0])
            if sequence % 2 == 0:
                out.copy_(self.params)
                version = int(view[1])
                if int(view[0]) == sequence:
                    return version
            time.sleep(0)


class ObsStatistics:
    """A worker's observation-normalization statistics (an ``ObservationNormalizer`` state: mean, variance, count)
    where the trainer can read them to evaluate the global parameters: Hogwild's worker 0 publishes its own here
    after each update (in shared memory), a parameter server stores those worker 0 pushes. A read while the worker
    writes may mix two consecutive updates' statistics, which evaluation tolerates."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape, self.size = tuple(shape), math.prod(shape)
        self.values = torch.zeros(2 * self.size + 1, dtype=torch.float64)
        self.publish({"mean": np.zeros(self.shape), "var": np.ones(self.shape), "count": 1e-4})  # nothing seen yet

    def share_memory_(self) -> ObsStatistics:
        self.values.share_memory_()
        return self

    def publish(self, state: dict[str, Any]) -> None:
        size = self.size
        self.values[:size] = torch.from_numpy(np.asarray(state["mean"], dtype=np.float64).reshape(-1))
        self.values[size:2 * size] = torch.from_numpy(np.asarray(state["var"], dtype=np.float64).reshape(-1))
        self.values[2 * size] = float(state["count"])

    def state_dict(self) -> dict[str, Any]:
        values, size = self.values.numpy().copy(), self.size
        return {"mean": values[:size].reshape(self.shape), "var": values[size:2 * size].reshape(self.shape),
                "count": float(values[2 * size])}


class SharedRows(Generic[Row]):
    """Rows of one named-tuple type that one worker appends and the trainer drains, in shared memory.

    Unlike a queue, appending costs no system call and no feeder thread, and a row is visible to the
    trainer as soon as the write count passes it: rows a worker wrote before it was SIGKILLed are not
    lost. Every field is stored as a float64. The writer waits when the trainer is a whole table behind.
    """

    def __init__(self, row_type: type[Row], capacity: int = 4096):
        self.row_type = row_type
        self._init(torch.zeros(capacity, len(row_type._fields), dtype=torch.float64).share_memory_(),
                   torch.zeros(2, dtype=torch.int64).share_memory_())

    def _init(self, rows: torch.Tensor, counts: torch.Tensor) -> None:
        self.rows, self.counts = rows, counts  # counts: rows written, rows read
        self._rows, self._counts = rows.numpy(), counts.numpy()
        self.capacity = len(rows)

    def __getstate__(self) -> dict[str, Any]:
        return {"row_type": self.row_type, "rows": self.rows, "counts": self.counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.row_type = state["row_type"]
        self._init(state["rows"], state["counts"])

    def append(self, row: Row) -> None:
        written = int(self._counts[0])
        while written - int(self._counts[1]) >= self.capacity:
            time.sleep(0.001)
        self._rows[written % self.capacity] = row
        self._counts[0] = written + 1  # after the row: this store publishes it

    @property
    def written(self) -> int:
        """Rows appended so far (a mark for :meth:`drain`)."""
        return int(self._counts[0])

    def drain(self, until: int | None = None) -> list[Row]:
        """The rows written since the last drain (up to the ``until``-th row written), oldest first, as ``row_type``
        (fields as floats)."""
        written, read = int(self._counts[0]) if until is None else until, int(self._counts[1])
        values = self._rows[np.arange(read, written) % self.capacity].tolist()
        rows = [self.row_type._make(row) for row in values]
        self._counts[1] = written
        return rows


class WorkerBarrier:
    """A barrier of ``num_workers`` processes whose last arrival releases the others without waiting for them to
    wake. (multiprocessing's Barrier has its last arrival wait, holding the barrier's lock, until every sleeper has
    woken: one stopped while it waits would hold up the worker that arrived last, inside the barrier, and the
    trainer could not tell which one the others wait for.)"""

    def __init__(self, context: Any, num_workers: int):
        self.lock = context.Lock()
        self.wakeups = [context.Semaphore(0) for _ in range(num_workers)]  # one per worker: released once a round
        self.count = SharedInts([0])  # workers that have arrived in this round

    def wait(self, worker: int, timeout: float) -> None:
        with self.lock:
            arrived = int(self.count.view[0]) + 1
            last = arrived == len(self.wakeups)
            self.count.view[0] = 0 if last else arrived
        if last:
            for other, wakeup in enumerate(self.wakeups):
                if other != worker:
                    wakeup.release()
        elif not self.wakeups[worker].acquire(timeout=timeout):
            raise threading.BrokenBarrierError(f"worker {worker} waited {timeout:g}s at the barrier")


class GradientExchange:
    """Where synchronous workers meet once per update: gradient slots, stop votes and a barrier.

    Update ``k`` uses slot ``k % 2``: worker ``w`` writes its gradient into ``gradients[k % 2, w]``, waits
    at the barrier, then reads every worker's gradient of that slot. Slot ``k % 2`` is written again
    only for update ``k + 2``, which no worker starts before every worker has passed barrier ``k + 1``,
    i.e. has finished reading update ``k``: one barrier per update is enough.
    """

    def __init__(self, context: Any, num_workers: int, num_params: int, barrier_timeout: float):
        self.num_workers, self.barrier_timeout = num_workers, barrier_timeout
        self._init(torch.zeros(2, num_workers, num_params).share_memory_(),
                   torch.zeros(2, num_workers, dtype=torch.bool).share_memory_(),
                   torch.zeros(1, dtype=torch.bool).share_memory_(),
                   torch.zeros(num_workers, dtype=torch.int64).share_memory_(),
                   WorkerBarrier(context, num_workers))

    def _init(self, gradients: torch.Tensor, votes: torch.Tensor, stop: torch.Tensor, arrivals: torch.Tensor,
              barrier: WorkerBarrier) -> None:
        self.gradients, self.votes, self.stop, self.arrivals, self.barrier = gradients, votes, stop, arrivals, barrier
        # numpy views of the flags and counts: element access without torch's per-op overhead
        self._votes, self._stop, self._arrivals = votes.numpy(), stop.numpy(), arrivals.numpy()

    def __getstate__(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "barrier_timeout": self.barrier_timeout,
                "tensors": (self.gradients, self.votes, self.stop, self.arrivals, self.barrier)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.num_workers, self.barrier_timeout = state["num_workers"], state["barrier_timeout"]
        self._init(*state["tensors"])

    def request_stop(self) -> None:
        """The trainer's request: workers stop after the first update for which one of them saw it."""
        self._stop[0] = True

    def exchange(self, worker: int, slot: int, gradient: torch.Tensor) -> float:
        """Publish ``gradient`` and this worker's stop vote, wait for every worker; return the wait in seconds."""
        self.gradients[slot, worker].copy_(gradient)
        self._votes[slot, worker] = self._stop[0]
        self._arrivals[worker] += 1  # written by this worker only: the trainer sees who the others wait for
        started = time.perf_counter()
        self.barrier.wait(worker, self.barrier_timeout)
        return time.perf_counter() - started

    def arrived(self) -> np.ndarray:
        """How many times each worker has reached the barrier (a copy)."""
        return self._arrivals.copy()

    def behind(self) -> list[int]:
        """The workers that have not reached the barrier another worker has reached: those the others wait for."""
        counts = self._arrivals.copy()
        return [int(worker) for worker in np.flatnonzero(counts < counts.max())]

    def mean_gradient(self, slot: int, out: torch.Tensor) -> None:
        """The workers' mean gradient, bit-identical in every worker (same slots, same order of summation)."""
        average_gradients(self.gradients[slot], out)

    def stop_voted(self, slot: int) -> bool:
        return bool(self._votes[slot].any())


def average_gradients(gradients: torch.Tensor, out: torch.Tensor) -> None:
    """``out = gradients.sum(0) / len(gradients)`` for ``[num_workers, num_params]`` gradients, summed in worker
    order: the same bits wherever it is computed (every local replica, or the Ray backend's server)."""
    torch.sum(gradients, dim=0, out=out)
    out.div_(len(gradients))
