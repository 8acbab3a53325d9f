"""Worker processes: start, watch, restart or fail, and never leave one behind.

Every multi-process schedule runs its worker loop through :func:`run_worker` and watches it with one
:class:`Supervisor`: a pipe per worker for messages, the process sentinel for deaths, one
:class:`RestartPolicy` (``algo.max_restarts`` restarts in the whole run, one failure message format,
shared with the Ray backend), a :class:`ProgressWatch` that names a worker silent for ``algo.worker_stall_s``
while the others go on (it is killed, then restarted or the run fails, as a death is answered; also shared
with the Ray backend), and a stall watchdog that fails the run instead of hanging when no worker progresses.
On exit every process is stopped (terminate, then kill) by :class:`WorkerProcesses`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any

import torch

from algorithms.config import RunConfig
from algorithms.infra.messages import Record, WorkerDone, WorkerError
from algorithms.infra.processes import process_context
from algorithms.infra.reaper import stat_fields

POLL_S = 0.02  # how often a trainer drains its workers' rows and checks that they are alive
STALL_TIMEOUT_S = 120.0  # no update for this long while workers are alive: fail instead of hanging


class WorkerFailure(RuntimeError):
    """A worker died (or stopped making progress) and the run cannot go on."""


def failure_message(worker: int, how: str, env_steps: int, error: str | None = None,
                    max_restarts: int | None = None, pid: int | None = None) -> str:
    """The one format of a run-ending worker failure, one line: who, how, when, whether restarts ran out, and the
    last line of the worker's traceback if it raised. ``max_restarts`` is None for schedules that never
    restart a worker (a synchronous round cannot go on without it)."""
    message = f"worker {worker}{f' (pid {pid})' if pid is not None else ''} {how} at env step {env_steps}"
    if max_restarts is not None:
        message += f", and no restart is left (algo.max_restarts={max_restarts})"
    if error:
        message += f": {error.strip().splitlines()[-1]}"
    return message


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"exit code {exitcode} (killed by {signal_name(exitcode)})"
    return f"exit code {exitcode}"


def signal_name(exitcode: int | None) -> str | None:
    """The signal that ended a process (a negative exit code, as multiprocessing reports it), or None."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


class RestartPolicy:
    """``max_restarts`` restarts in the whole run (``None``: the schedule never restarts): each failure is
    logged as ``worker_failed`` (with the worker's pid); a restart is counted and logged as ``worker_restarted``;
    one failure more raises :class:`WorkerFailure` (whose message names the pid too with ``name_pid``, as the Ray
    backend's always have)."""

    def __init__(self, record: Record, max_restarts: int | None, name_pid: bool = False):
        self.record, self.max_restarts, self.name_pid = record, max_restarts, name_pid
        self.restarts = 0
        self.stalls: dict[int, Stall] = {}  # workers killed for stalling, until their failure is answered

    def failed(self, worker: int, how: str, env_steps: int, finishing: bool, error: str | None = None,
               pid: int | None = None, reason: str | None = None, **fields: Any) -> bool:
        """Log a failure (``reason``: the event's own account, ``how`` by default; a worker killed for stalling is
        said to have stalled); return whether to restart the worker (never while the run is finishing)."""
        if (stall := self.stalls.pop(worker, None)) is not None:
            how, reason, fields = stall.describe(), None, {**fields, **stall.fields()}
        self.record.event("worker_failed", worker=worker, env_steps=env_steps, reason=reason or how, error=error,
                          pid=pid, **fields)
        if finishing and self.max_restarts is not None:
            return False
        if self.max_restarts is None or self.restarts >= self.max_restarts:
            raise WorkerFailure(failure_message(worker, how, env_steps, error, self.max_restarts,
                                                pid if self.name_pid else None))
        self.restarts += 1
        return True

    def restarted(self, worker: int, env_steps: int, **fields: Any) -> None:
        self.record.event("worker_restarted", worker=worker, env_steps=env_steps, restart=self.restarts, **fields)

    def stalled(self, stall: Stall, env_steps: int, pid: int | None, **fields: Any) -> None:
        """Log a stalled worker (``worker_stalled``), about to be killed; its death is then answered as any other,
        as a stall."""
        self.stalls[stall.worker] = stall
        self.record.event("worker_stalled", worker=stall.worker, pid=pid, env_steps=env_steps, reason=stall.cause,
                          **stall.fields(), **fields)


class StallWatchdog:
    """Fails the run when no update arrives for ``timeout`` seconds while workers run, instead of hanging."""

    def __init__(self, timeout: float = STALL_TIMEOUT_S):
        self.timeout = timeout
        self.last_progress = time.monotonic()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def check(self, env_steps: int, workers: list[int], detail: str = "") -> None:
        idle = time.monotonic() - self.last_progress
        if idle > self.timeout:
            raise WorkerFailure(f"no update in {idle:.0f}s after env step {env_steps} with workers {workers} "
                                f"running{detail}; stopping instead of hanging")


@dataclass
class Stall:
    """A worker that made no progress for ``silent_s`` seconds while it should have (``cause``)."""

    worker: int
    silent_s: float  # since its last progress (or its start, or the trainer last unblocked it)
    idle_s: float  # its last part, in which no worker progressed: time the whole run spent waiting on this one
    cause: str

    def describe(self) -> str:
        """How the worker ended, for ``worker_failed`` and a run-ending :class:`WorkerFailure`."""
        return f"stalled (no progress for {self.silent_s:.1f}s while {self.cause}) and was killed"

    def fields(self) -> dict[str, float]:
        return {"silent_s": round(self.silent_s, 3), "idle_s": round(self.idle_s, 3)}


class ProgressWatch:
    """When each worker last made progress, as its trainer hears it, and which workers have stalled.

    A watched worker is stalled once it has been silent for ``stall_s`` seconds (since its last progress, its
    start, or the trainer last unblocked it) while another worker progressed in the later half of that time,
    while the others wait for it (``waited_on``: a barrier it has not reached, a lock it holds), or while the run,
    finishing, waits for it to end. Silence counts up to when the trainer last listened, so a trainer busy
    learning does not make its workers look silent. When no worker progresses no one is singled out: the
    :class:`StallWatchdog` fails the run. Shared by the local and Ray transports.
    """

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self.last: dict[int, float] = {}  # watched worker -> when it last progressed (or started, or was unblocked)
        self.progress_at = self.listened_at = time.monotonic()  # any worker's last progress; the trainer's last look

    def expect(self, worker: int) -> None:
        """Watch ``worker`` from now on ((re)started): it has ``stall_s`` to show progress."""
        self.last[worker] = time.monotonic()

    def restarted(self, worker: int) -> None:
        """Watch a restarted ``worker`` afresh. The others' silence starts now too: a synchronous round waited for
        the restart, and a worker waiting on it is not hung."""
        now = time.monotonic()
        self.last = {other: max(last, now) for other, last in self.last.items()}
        self.last[worker] = now

    def unblocked(self, worker: int) -> None:
        """The trainer answered ``worker`` (a reply, a free slot): whatever it waited for, its silence starts now."""
        if worker in self.last:
            self.last[worker] = max(self.last[worker], time.monotonic())

    def heard(self, worker: int) -> None:
        """``worker`` made progress (a row, a message, an arrival at a barrier)."""
        self.progress_at = time.monotonic()
        if worker in self.last:
            self.last[worker] = self.progress_at

    def forget(self, worker: int) -> None:
        """Stop watching ``worker`` (it finished, died or was killed)."""
        self.last.pop(worker, None)

    def listened(self) -> None:
        """The trainer is about to read what its workers sent: everything sent before now will be heard."""
        self.listened_at = time.monotonic()

    def stalled(self, waited_on: Collection[int] = (), finishing: bool = False) -> list[Stall]:
        """The watched workers that have stalled, and why (``waited_on``: the workers the others wait for;
        ``finishing``: the run has spent its budget or was asked to stop, and waits for its workers to end); they
        are no longer watched (until restarted)."""
        now, stalls = self.listened_at, []
        for worker, last in self.last.items():
            if now - last < self.stall_s:
                continue
            cause = ("the run waited for it to finish" if finishing
                     else "the other workers waited for it" if worker in waited_on
                     else "other workers progressed" if self.progress_at - last > self.stall_s / 2 else None)
            if cause is not None:
                stalls.append(Stall(worker, now - last, max(0.0, now - max(self.progress_at, last)), cause))
        for stall in stalls:
            self.forget(stall.worker)
        return stalls

    def silences(self) -> str:
        """Each watched worker's silence so far, for a message: ``worker 0 for 12s, worker 1 for 3s``."""
        now = time.monotonic()
        return ", ".join(f"worker {worker} for {now - last:.0f}s" for worker, last in sorted(self.last.items()))


def run_watchdog(stall_s: float) -> StallWatchdog:
    """A run's watchdog, never quicker than its workers' own stall limit (``algo.worker_stall_s``)."""
    return StallWatchdog(max(STALL_TIMEOUT_S, stall_s))


def silence_detail(watch: ProgressWatch, waited_on: Collection[int] | None = None) -> str:
    """What a watchdog's message adds: the workers the others wait for (a barrier's laggards, a lock's holder, the
    actors a learner's batch needs), and each watched worker's silence."""
    silences = f"silent: {watch.silences() or 'none watched'}"
    return f" (the others wait for workers {sorted(waited_on)}; {silences})" if waited_on else f" ({silences})"


# --------------------------------------------------------------------------- in the worker process
def run_worker(torch_threads: int, conn: connection.Connection, loop: Callable[..., None], args: tuple) -> None:
    """A worker process's body: set up, run ``loop(*args)``, then report :class:`WorkerDone`; on an
    exception, report its traceback (:class:`WorkerError`) and exit with status 1."""
    worker_setup(torch_threads)
    try:
        loop(*args)
        conn.send(WorkerDone())
    except Exception as error:
        conn.send(WorkerError(traceback.format_exc(), str(error) if isinstance(error, NonFiniteUpdate) else None))
        sys.exit(1)
    finally:
        conn.close()


def worker_setup(torch_threads: int) -> None:
    """One torch thread, and Ctrl-C left to the trainer, which decides how the run ends and stops its workers
    itself (a terminal's Ctrl-C reaches the whole process group). SIGTERM waits for an open
    :func:`uninterruptible` block. Workers exit if the trainer disappears."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate_unless_uninterruptible)
    torch.set_num_threads(torch_threads)
    watch_parent()


@dataclass
class _Uninterruptible:
    depth: int = 0
    terminate_pending: bool = False


_UNINTERRUPTIBLE = _Uninterruptible()


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold off a worker's SIGTERM until the block ends: for writes to shared state that must land together
    (a Hogwild worker's version and its row), which a stopping trainer would otherwise cut in two. Python runs
    signal handlers in the main thread, so the deferral holds whichever thread the signal reaches."""
    _UNINTERRUPTIBLE.depth += 1
    try:
        yield
    finally:
        _UNINTERRUPTIBLE.depth -= 1
        if _UNINTERRUPTIBLE.depth == 0 and _UNINTERRUPTIBLE.terminate_pending:
            _terminate_now()


def _terminate_unless_uninterruptible(signum: int, frame: Any) -> None:
    if _UNINTERRUPTIBLE.depth:
        _UNINTERRUPTIBLE.terminate_pending = True
    else:
        _terminate_now()


def _terminate_now() -> None:
    """Die of SIGTERM as the default action does, so the trainer sees the same exit status."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(interval: float = 1.0) -> None:
    """Exit this process when the trainer that started it dies: a SIGKILLed trainer must not leave workers
    running. A forkserver's worker is the forkserver's child, and the forkserver lives on while its workers do,
    so the trainer is watched through the sentinel that multiprocessing gives each child (ready once the trainer
    is gone), and the parent pid as well (under ``fork`` a sibling may hold the sentinel open)."""
    trainer = multiprocessing.parent_process()
    sentinels = [] if trainer is None else [trainer.sentinel]
    parent = os.getppid()

    def watch() -> None:
        while not connection.wait(sentinels, timeout=interval) and os.getppid() == parent:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# --------------------------------------------------------------------------- in the trainer
@dataclass
class WorkerExit:
    worker: int
    exitcode: int
    pid: int


class WorkerProcesses:
    """Worker processes of one run, keyed by worker index; a context manager that stops them all."""

    def __init__(self, start_method: str):
        self.context = process_context(start_method)
        self.processes: dict[int, Any] = {}

    def start(self, worker: int, target: Callable[..., None], args: tuple[Any, ...]) -> int:
        """Start (or, after reaping its dead process, restart) ``worker``; return its pid."""
        if worker in self.processes:
            self.processes.pop(worker).join(timeout=1.0)
        process = self.context.Process(target=target, args=args, name=f"worker-{worker}", daemon=True)
        process.start()
        self.processes[worker] = process
        return process.pid

    def exited(self) -> list[WorkerExit]:
        """Workers whose process has ended (cleanly or not) and that have not been restarted."""
        return [WorkerExit(worker, process.exitcode, process.pid) for worker, process in self.processes.items()
                if process.exitcode is not None]

    def alive(self) -> list[int]:
        return [worker for worker, process in self.processes.items() if process.exitcode is None]

    def kill(self, worker: int, timeout: float = 5.0) -> None:
        """SIGKILL ``worker`` (a stopped process too) and reap it."""
        process = self.processes[worker]
        if process.exitcode is None:
            process.kill()
            process.join(timeout)

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


class Supervisor:
    """Starts a run's worker processes, passes their messages on, and answers their deaths and stalls.

    ``loop(cfg, worker, conn, *args(worker))`` is each worker's body, run through :func:`run_worker` with a
    fresh pipe per start. ``env_steps()`` says where the run is (for failure messages and restarts);
    ``on_death(worker)`` may release what a dead worker held and returns extra ``worker_failed`` fields;
    ``waited_on()`` names the workers the others wait for (a barrier's laggards, a lock's holder). A message
    from a worker is its progress; a schedule whose workers report otherwise calls :meth:`heard`.
    """

    def __init__(self, cfg: RunConfig, record: Record, processes: WorkerProcesses, loop: Callable[..., None],
                 args: Callable[[int], tuple], policy: RestartPolicy, env_steps: Callable[[], int],
                 on_death: Callable[[int], dict[str, Any]] | None = None,
                 waited_on: Callable[[], Collection[int]] | None = None):
        self.cfg, self.record, self.processes, self.policy = cfg, record, processes, policy
        self.loop, self.args, self.env_steps, self.on_death, self.waited_on = loop, args, env_steps, on_death, waited_on
        self.conns: dict[int, connection.Connection] = {}
        self.errors: dict[int, str] = {}
        self.handled: set[int] = set()  # exited workers already dealt with
        self.done: set[int] = set()  # workers that finished their loop and are only exiting
        # Messages read from an exited worker's pipe while answering its exit (its last rows or checkpoint
        # part come before its WorkerDone): handed out by the next messages().
        self.pending: list[tuple[int, Any]] = []
        self.watch = ProgressWatch(cfg.algo.worker_stall_s)
        self.watchdog = run_watchdog(cfg.algo.worker_stall_s)

    def start(self, worker: int) -> int:
        ours, theirs = self.processes.context.Pipe()
        loop_args = (self.cfg, worker, theirs, *self.args(worker))
        pid = self.processes.start(worker, run_worker, (self.cfg.torch_threads, theirs, self.loop, loop_args))
        theirs.close()  # the child's end: closing ours lets a dead worker's pipe report EOF
        self.conns[worker] = ours
        self.handled.discard(worker)
        self.done.discard(worker)
        self.watch.expect(worker)
        return pid

    def start_all(self) -> None:
        for worker in range(self.cfg.algo.num_workers):
            pid = self.start(worker)
            self.record.event("worker_started", worker=worker, pid=pid)

    def running(self) -> bool:
        """Whether any worker has neither finished its loop nor had its exit dealt with, or a message of an
        exited worker waits to be handed out."""
        return bool(self.pending) or bool(set(self.processes.processes) - self.done - self.handled)

    def messages(self, timeout: float) -> list[tuple[int, Any]]:
        """Wait up to ``timeout`` for any message or exit; return the messages other than done and errors."""
        self.watch.listened()
        if self.pending:
            received, self.pending = self.pending, []
            return received
        sentinels = [self.processes.processes[w].sentinel for w in self.processes.alive()]
        ready = set(connection.wait([*self.conns.values(), *sentinels], timeout))
        received = []
        for worker, conn in list(self.conns.items()):
            if conn in ready and not self._stopped(worker):
                received.extend((worker, message) for message in self._receive(worker))
        for worker, _ in received:
            self.watch.heard(worker)
        return received

    def _stopped(self, worker: int) -> bool:
        """Whether ``worker``'s process is stopped (SIGSTOP): reading its pipe could block on a message it stopped in
        the middle of writing; left unread, it is named and killed as stalled, and its pipe then reads to the end."""
        process = self.processes.processes.get(worker)
        fields = stat_fields(process.pid) if process is not None and process.pid is not None else None
        return fields is not None and fields[0] in ("T", "t")

    def _receive(self, worker: int) -> list[Any]:
        conn, received = self.conns[worker], []
        try:
            while conn.poll():
                message = conn.recv()
                if isinstance(message, WorkerError) and message.diverged:
                    raise NonFiniteUpdate(message.diverged)  # a diverged run ends at once: no restart helps
                if isinstance(message, WorkerError):
                    self.errors[worker] = message.traceback
                elif isinstance(message, WorkerDone):
                    self.done.add(worker)
                    self.watch.forget(worker)
                else:
                    received.append(message)
        except (EOFError, OSError):  # the worker is gone; its exit is handled from its sentinel
            conn.close()
            del self.conns[worker]
        return received

    def send(self, worker: int, message: Any) -> None:
        if message is not None:  # an answer it may have waited for (None, stop, ends its wait for good)
            self.watch.unblocked(worker)
        try:
            self.conns[worker].send(message)
        except (KeyError, OSError):  # died meanwhile: its exit is handled from its sentinel
            pass

    def handle_exits(self, finishing: bool) -> None:
        """Answer each worker that exited without finishing its loop (or was killed for stalling): restart it, or
        raise WorkerFailure."""
        for exit in self.processes.exited():
            if exit.worker in self.handled:
                continue
            if exit.worker in self.conns:
                # its last messages, then a WorkerDone or a traceback, sent just before exiting
                self.pending.extend((exit.worker, message) for message in self._receive(exit.worker))
            self.handled.add(exit.worker)
            self.watch.forget(exit.worker)
            if exit.worker in self.done and exit.exitcode == 0:
                continue
            fields = self.on_death(exit.worker) if self.on_death else {}
            env_steps = self.env_steps()
            if self.policy.failed(exit.worker, f"died with {describe_exit(exit.exitcode)}", env_steps, finishing,
                                  self.errors.pop(exit.worker, None), pid=exit.pid, exitcode=exit.exitcode,
                                  signal=signal_name(exit.exitcode), **fields):
                pid = self.start(exit.worker)
                self.watch.restarted(exit.worker)
                self.policy.restarted(exit.worker, env_steps, pid=pid)

    def progressed(self) -> None:
        """The run made an update."""
        self.watchdog.progressed()

    def heard(self, worker: int) -> None:
        """``worker`` made progress (a schedule whose workers report it other than by message: rows, arrivals)."""
        self.watch.heard(worker)

    def check_stall(self, finishing: bool = False) -> None:
        """Kill each stalled worker and answer its death (restart it, or fail the run naming it); fail the run if
        no update came for the watchdog's timeout, naming the workers."""
        waited_on = self.waited_on() if self.waited_on else ()
        stalls = self.watch.stalled(waited_on, finishing)
        for stall in stalls:
            self.policy.stalled(stall, self.env_steps(), self.processes.processes[stall.worker].pid)
            self.processes.kill(stall.worker)
        if stalls:
            self.handle_exits(finishing)
        self.watchdog.check(self.env_steps(), self.processes.alive(), silence_detail(self.watch, waited_on))


class NonFiniteUpdate(RuntimeError):
    """A NaN or infinite loss, gradient or parameter: the run has diverged and must not be recorded as a success."""
