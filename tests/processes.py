"""Helpers for tests that run the real command line and watch its processes: start, wait for rows, find
live workers, read events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def shared_memory_entries() -> set[str]:
    """Named shared memory and semaphores on this machine (a leaked one outlives its run)."""
    return set(os.listdir("/dev/shm"))


def worker_pids(parent: int) -> list[int]:
    """Live multiprocessing workers (not the resource tracker) whose parent is ``parent``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
        if ppid == parent and b"spawn_main" in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids
