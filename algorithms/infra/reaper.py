"""A guard that kills what a process started when that process dies without stopping it.

A Ray driver that starts its own cluster stops it in ``ray.shutdown``; SIGKILLed, it cannot, and while
Ray's GCS and raylet follow their driver, the agents the raylet starts (``DashboardAgent``,
``RuntimeEnvAgent``) are left running under init. :class:`Reaper` starts ``python -m algorithms.infra.reaper
PID`` in a session of its own, holding the read end of a pipe whose write end only the guarded process
holds. Every ``POLL_S`` the reaper notes the guarded process's descendants (pid and start time, so that a
reused pid is never hit); when the pipe closes without the word ``done`` (the process died), it sends
SIGTERM to every noted process still alive, then SIGKILL to any left after ``GRACE_S``. Linux only: the
process tree is read from ``/proc``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 3.0
DONE = b"done"


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, parent, ...), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields start after its last ')'.
    return stat[stat.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it no longer exists."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process below ``root`` in the process tree, with its start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (started := start_time(child)) is not None:
                found[child] = started
                todo.append(child)
    return found


def still_running(noted: dict[int, int]) -> list[int]:
    return [pid for pid, started in noted.items() if start_time(pid) == started]


def kill(noted: dict[int, int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in still_running(noted):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_S
        while still_running(noted) and time.monotonic() < deadline:
            time.sleep(0.05)


def watch(guarded: int, pipe: int) -> None:
    """Note ``guarded``'s descendants until ``pipe`` closes; kill them unless it said it was done."""
    noted: dict[int, int] = {}
    received = b""
    while True:
        readable, _, _ = select.select([pipe], [], [], POLL_S)
        if readable:
            chunk = os.read(pipe, 64)
            if not chunk:
                break
            received += chunk
        noted.update(descendants(guarded))
    noted.pop(os.getpid(), None)  # the reaper is one of them
    if received != DONE:
        kill(noted)


class Reaper:
    """Guards this process: ``with Reaper():`` around the code that starts processes it must not outlive."""

    def __enter__(self) -> Reaper:
        read_end, self._write_end = os.pipe()
        os.set_inheritable(read_end, True)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "algorithms.infra.reaper", str(os.getpid()), str(read_end)],
            pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parents[1]))
        os.close(read_end)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stopped cleanly: tell the reaper so, and let it go."""
        os.write(self._write_end, DONE)
        os.close(self._write_end)
        self._process.wait()


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
