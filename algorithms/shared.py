"""What crosses processes: worker supervision, and the state asynchronous schedules share.

:class:`WorkerProcesses` starts worker processes, reports the ones that died (with exit code and
signal), restarts one on request, and on exit stops all of them (terminate, then kill), so that no
schedule leaves an orphan behind. :func:`worker_setup` is the first call in every worker process.

Shared state, all of it created by the trainer before any worker starts: optimizer statistics
(:func:`share_optimizer_state`), the policy-version and env-step counters (:class:`SharedCounters`),
a lock that the trainer can free when its holder is killed (:class:`HolderLock`), recent parameter
versions for controlled staleness (:class:`SnapshotRing`), and the rows a worker reports to the
trainer through shared memory instead of a queue (:class:`SharedRows`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

POLL_S = 0.02  # how often a trainer drains its workers' rows and checks that they are alive
STALL_TIMEOUT_S = 120.0  # no update for this long while workers are alive: fail instead of hanging


def worker_setup(torch_threads: int) -> None:
    """First call in a worker: one torch thread, and Ctrl-C left to the trainer.

    A terminal's Ctrl-C reaches the whole process group; the trainer decides how the run ends and
    stops its workers itself, so workers ignore SIGINT. Workers also exit on their own if the
    trainer disappears (see :func:`watch_parent`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(torch_threads)
    watch_parent()


def watch_parent(interval: float = 1.0) -> None:
    """Exit this process when its parent dies (a SIGKILLed trainer must not leave workers running)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"exit code {exitcode} (killed by {signal.Signals(-exitcode).name})"
    return f"exit code {exitcode}"


class WorkerFailure(RuntimeError):
    """A worker died (or stopped making progress) and the run cannot go on."""


def report_errors(conn: Connection, loop: Callable[..., None], *args: Any) -> None:
    """Run a worker loop, then tell the trainer it is done (so that it need not wait for the interpreter's
    teardown); on an exception, send the traceback instead and exit with status 1."""
    try:
        loop(*args)
        conn.send(("done",))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        sys.exit(1)
    finally:
        conn.close()


@dataclass
class WorkerExit:
    worker: int
    exitcode: int

    def describe(self) -> str:
        return f"worker {self.worker} died with {describe_exit(self.exitcode)}"


class WorkerProcesses:
    """Worker processes of one run, keyed by worker index; a context manager that stops them all."""

    def __init__(self, start_method: str):
        self.context = mp.get_context(start_method)
        self.processes: dict[int, Any] = {}
        self._targets: dict[int, tuple[Callable[..., None], tuple[Any, ...]]] = {}

    def start(self, worker: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        process = self.context.Process(target=target, args=args, name=f"worker-{worker}", daemon=True)
        process.start()
        self.processes[worker] = process
        self._targets[worker] = (target, args)

    def restart(self, worker: int, args: tuple[Any, ...] | None = None) -> None:
        """Start ``worker`` again (with new arguments if given), after reaping its dead process."""
        self.processes.pop(worker).join(timeout=1.0)
        target, old_args = self._targets[worker]
        self.start(worker, target, args if args is not None else old_args)

    def exited(self) -> list[WorkerExit]:
        """Workers whose process has ended (cleanly or not) and that have not been restarted."""
        return [WorkerExit(worker, process.exitcode) for worker, process in self.processes.items()
                if process.exitcode is not None]

    def alive(self) -> list[int]:
        return [worker for worker, process in self.processes.items() if process.exitcode is None]

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate every worker, kill the ones that do not exit within ``timeout``, and reap all."""
        for process in self.processes.values():
            if process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


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


NOBODY = -1


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


class SharedRows:
    """Fixed-width float64 rows that one worker appends and the trainer drains, in shared memory.

    Unlike a queue, appending costs no system call and no feeder thread, and a row is visible to the
    trainer as soon as the write count passes it: rows a worker wrote before it was SIGKILLed are not
    lost. The writer waits when the trainer is a whole table behind.
    """

    def __init__(self, columns: int, capacity: int = 4096):
        self._init(torch.zeros(capacity, columns, dtype=torch.float64).share_memory_(),
                   torch.zeros(2, dtype=torch.int64).share_memory_())

    def _init(self, rows: torch.Tensor, counts: torch.Tensor) -> None:
        self.rows, self.counts = rows, counts  # counts: rows written, rows read
        self._rows, self._counts = rows.numpy(), counts.numpy()
        self.capacity = len(rows)

    def __getstate__(self) -> dict[str, Any]:
        return {"rows": self.rows, "counts": self.counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._init(state["rows"], state["counts"])

    def append(self, row: Sequence[float]) -> None:
        written = int(self._counts[0])
        while written - int(self._counts[1]) >= self.capacity:
            time.sleep(0.001)
        self._rows[written % self.capacity] = row
        self._counts[0] = written + 1  # after the row: this store publishes it

    def drain(self) -> np.ndarray:
        """Every row written since the last drain, oldest first."""
        written, read = int(self._counts[0]), int(self._counts[1])
        rows = self._rows[np.arange(read, written) % self.capacity]
        self._counts[1] = written
        return rows
