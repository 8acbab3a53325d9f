"""What crosses processes: worker supervision now; schedules add shared state beside it.

:class:`WorkerProcesses` starts worker processes, reports the ones that died (with exit code and
signal), restarts one on request, and on exit stops all of them (terminate, then kill), so that no
schedule leaves an orphan behind. :func:`worker_setup` is the first call in every worker process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as mp


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
