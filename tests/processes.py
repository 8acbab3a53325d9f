"""Helpers for tests that run the real command line and watch its processes: start, wait for rows, find
live workers, read events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from algorithms.infra.reaper import descendants, stat_fields
from tests.conftest import read_csv

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", *args]


def start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(cli(*args), cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def wait_for_rows(run_dir: Path, rows: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (run_dir / "metrics.csv").exists() and len(read_csv(run_dir / "metrics.csv")) >= rows:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{run_dir} did not reach {rows} metrics rows")


def alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state


def children(parent: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def worker_pids(parent: int) -> list[int]:
    """Live multiprocessing workers that ``parent`` started: its spawned children and the children of its
    forkserver (not the forkserver itself, nor the resource tracker)."""
    pids = []
    for child in children(parent):
        command = cmdline(child)
        if b"spawn_main" in command:
            pids.append(child)
        elif b"multiprocessing.forkserver" in command:
            pids.extend(children(child))
    return pids


def wait_until_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """The pids still alive after ``timeout`` (a killed process's children notice within a second or two; Ray
    kills actors asynchronously)."""
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def shared_memory_mapped(root: int) -> set[str]:
    """Names in /dev/shm that ``root`` or a process below it maps, and that still exist."""
    names = set()
    for pid in [root, *descendants(root)]:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names.update(line.split("/dev/shm/")[1] for line in maps.splitlines()
                     if "/dev/shm/" in line and not line.endswith("(deleted)"))
    return {name for name in names if Path("/dev/shm", name).exists()}


class SharedMemoryWatch:
    """Notes, every ``interval`` seconds, the /dev/shm names that a process tree maps: what a run created,
    told apart from what other tests and programs on the machine create meanwhile. ``leaked()`` is those
    that still exist. Names the tree mapped before the watch (a long-lived test process's own) are left out.
    """

    def __init__(self, root: int | None = None, interval: float = 0.05):
        self.roots = [os.getpid() if root is None else root]
        self.interval = interval
        self.before = shared_memory_mapped(self.roots[0])
        self.seen: set[str] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def watch(self, root: int) -> None:
        """Watch another tree as well (a resumed run's)."""
        self.roots.append(root)

    def _watch(self) -> None:
        while not self.stopped.is_set():
            for root in list(self.roots):
                self.seen |= shared_memory_mapped(root)
            self.stopped.wait(self.interval)

    def __enter__(self) -> SharedMemoryWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def leaked(self) -> set[str]:
        return {name for name in self.seen - self.before if Path("/dev/shm", name).exists()}


def loaded_modules(queue: Any, names: tuple[str, ...]) -> None:
    """A started process's answer: which of ``names`` it has imported."""
    queue.put(sorted(name for name in names if name in sys.modules))
