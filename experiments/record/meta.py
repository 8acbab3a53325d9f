"""``meta.json``: a run's provenance and how it ended (status, error, final counters).

It is replaced whole at every change, so that it is never torn, and while the run lives ``.meta_reserve`` keeps
space free for its last write, so that even a full disk never leaves it at ``running``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from algorithms.infra.checkpoint import write_file
from experiments.admission import Admission, experiment_config
from experiments.record.files import WriteGuard, replace_file

RECORDED_PACKAGES = ("torch", "numpy", "gymnasium", "hydra-core", "omegaconf", "wandb", "pandas", "mujoco", "ale-py",
                     "minatar")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Kept free while the run lives, so that its final status still fits on a full disk: far more than meta.json.
META_RESERVE_BYTES = 256 * 1024


class RunFailed(RuntimeError):
    """A run that failed for a reason its record states in one line, where a traceback would not help: no
    checkpoint to resume from, W&B unavailable with ``logger.wandb.fallback=fail``, a file it could not write."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the source tree that is training, or nulls outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def initial_meta(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """meta.json of a run starting now, with the provenance that lets it be reproduced."""
    return {
        "status": "running",
        "algo": cfg.algo.name,
        "mode": cfg.algo.mode,
        "env_id": cfg.env.id,
        "env_name": cfg.env.name,
        "num_workers": cfg.algo.num_workers,
        "num_envs": cfg.algo.num_envs,
        "seed": cfg.seed,
        "total_env_steps": cfg.total_env_steps,
        "start_time": now_iso(),
        "end_time": None,
        "error": None,
        **git_state(),
        "versions": package_versions(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch_threads": cfg.torch_threads,
        "command": sys.argv,
        "overrides": overrides,
        "config": experiment_config(cfg),  # as it last ran: a resume must continue the same experiment
        "resumed_at_env_steps": [],
        "resumes": [],  # each resume's command, overrides and config changes (experiments.admission)
        "worker_failures": [],
        # Seconds of wall_time in which the whole run waited on a stalled worker, the others idle (algo.worker_stall_s):
        # the sum of the worker_failed events' idle_s.
        "stalled_idle_s": 0.0,
        "blowup_warnings": {},  # quantity -> blow-ups reported (experiments.record.blowup)
        "clock": "real",  # "simulated" for backend=simulated: wall_time columns are virtual seconds
        "final": None,
        "wandb": None,
    }


def outcome(failure: BaseException | None, stopped: bool) -> tuple[str, str | None]:
    """Status and error of a run that ended with ``failure`` (the first that counts), or else was ``stopped``.
    A :class:`RunFailed` is its own one-line error; anything else is named by its type."""
    if failure is not None:
        return "failed", str(failure) if isinstance(failure, RunFailed) else f"{type(failure).__name__}: {failure}"
    return ("interrupted" if stopped else "completed"), None


class MetaFile:
    """A run's ``meta.json``: ``fields`` as last written, and the space kept free for its final write."""

    def __init__(self, run_dir: Path, guard: WriteGuard):
        self.path = run_dir / "meta.json"
        self.reserve_path = run_dir / ".meta_reserve"
        self.guard = guard
        self.fields: dict[str, Any] = {}

    def carry_over(self) -> None:
        """On a resume: keep the first start and invocation, the resumes, the worker failures and the blow-up counts
        of the run it continues."""
        previous = self._read() or {}
        for key in ("start_time", "command", "overrides", "resumed_at_env_steps", "resumes", "worker_failures",
                    "stalled_idle_s", "blowup_warnings"):
            self.fields[key] = previous.get(key, self.fields[key])

    def add_resume(self, env_steps: int, overrides: list[str], admission: Admission) -> None:
        """Append this resume: where it continues, its own invocation and what it changed of the config."""
        self.fields["resumed_at_env_steps"].append(env_steps)
        self.fields["resumes"].append({"time": now_iso(), "env_steps": env_steps, "command": sys.argv,
                                       "overrides": overrides, "config_checked": admission.checked,
                                       "harmless_changes": admission.harmless,
                                       "accepted_changes": admission.accepted})

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def reserve(self) -> None:
        with self.guard.writing():
            write_file(self.reserve_path, bytes(META_RESERVE_BYTES))

    def write(self) -> None:
        with self.guard.writing():
            self._replace()

    def _replace(self) -> None:
        data = (json.dumps(self.fields, indent=2, default=str) + "\n").encode()
        replace_file(self.path, self.path.with_suffix(".json.tmp"), data)

    def write_end(self, status: str, error: str | None, final: dict[str, Any]) -> None:
        """Say how the run ended. This must not leave ``running``: even after the fault it is written, and on a full
        disk the space kept for it is freed and it is tried again; the space is freed either way."""
        self.fields.update(status=status, end_time=now_iso(), error=error, final=final)
        try:
            try:
                self._replace()
            except OSError:
                self.reserve_path.unlink(missing_ok=True)
                self._replace()
        except OSError as err:
            print(f"error: the run {status}, but meta.json cannot say so: {err}", file=sys.stderr)
        finally:
            self.reserve_path.unlink(missing_ok=True)
