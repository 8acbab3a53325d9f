"""The run record: the contract between training and analysis.

A run directory holds ``meta.json`` (status and provenance), ``metrics.csv`` (one row per logging
interval), ``episodes.csv`` (every finished episode), ``updates.csv`` (every applied or dropped
gradient, with its policy versions and staleness), ``events.jsonl`` (resumes, worker failures and
restarts, interrupts), ``checkpoints/last.pt`` and, unless disabled, ``wandb/`` mirroring the metrics.
The CSV files' columns are listed in ``experiments.columns``.

Local files are the source of truth. They are appended and flushed as the run goes (metrics every
row, episodes and updates at every metrics row and checkpoint), so a killed run keeps everything up
to its last interval. Algorithms talk to the record only through ``episode``, ``update``, ``event``
and the checkpoint calls (see ``algorithms.protocol.Record``); the record derives every aggregate.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from algorithms.checkpoint import read_checkpoint, write_checkpoint
from experiments.columns import LOSS_STATS, METRIC_COLUMNS, RECORD_COLUMNS

RECORDED_PACKAGES = ("torch", "numpy", "gymnasium", "hydra-core", "omegaconf", "wandb", "pandas")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


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


def _format(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _keep_rows(path: Path, keep: Any) -> None:
    """Rewrite a CSV keeping the header and the rows for which ``keep(row)`` is true."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = [row for row in reader if keep(row)]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class CsvLog:
    """An append-only CSV with a fixed header; rows are buffered until :meth:`flush`."""

    def __init__(self, path: Path, columns: tuple[str, ...], append: bool):
        exists = append and path.exists() and path.stat().st_size > 0
        self.handle = path.open("a" if exists else "w", newline="")
        self.writer = csv.writer(self.handle)
        if not exists:
            self.writer.writerow(columns)

    def write(self, row: tuple[Any, ...]) -> None:
        self.writer.writerow([_format(value) for value in row])

    def flush(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        if not self.handle.closed:
            self.flush()
            self.handle.close()


class RunRecord:
    """Opened as a context manager around one training run; see the module docstring for the files."""

    def __init__(self, run_dir: str | Path, cfg: DictConfig, overrides: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.overrides = list(overrides or [])
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        self.stop_requested = False
        self.resume_state: dict[str, Any] | None = None
        self.status = "running"
        self.error: str | None = None
        self.wandb_run: Any = None
        self._progress: Any = None
        self._previous_handlers: dict[int, Any] = {}
        # Counters (restored from the checkpoint when resuming).
        self.env_steps = 0
        self.updates = 0
        self.policy_version = 0
        self.episodes = 0
        self.dropped_updates = 0
        self._wall_offset = 0.0
        self._recent = deque(maxlen=cfg.return_window)  # (return, length) of the latest episodes
        self._interval: dict[str, list[float]] = {}
        self._last_row = (0, 0.0)  # env_steps and wall_time of the latest metrics row
        self._next_log_at = cfg.log_interval
        self._next_checkpoint_at = cfg.checkpoint_interval
        self._lr = float("nan")
        self._wandb_id: str | None = None

    # ----------------------------------------------------------------- opening and closing
    def __enter__(self) -> RunRecord:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path.parent.mkdir(exist_ok=True)
        resuming = self._load_resume_state()
        self._start = time.monotonic()
        self.meta = {
            "status": "running",
            "algo": self.cfg.algo.name,
            "mode": self.cfg.algo.mode,
            "env_id": self.cfg.env.id,
            "env_name": self.cfg.env.name,
            "num_workers": self.cfg.algo.num_workers,
            "num_envs": self.cfg.algo.num_envs,
            "seed": self.cfg.seed,
            "total_env_steps": self.cfg.total_env_steps,
            "start_time": _now_iso(),
            "end_time": None,
            "error": None,
            **git_state(),
            "versions": package_versions(),
            "host": socket.gethostname(),
            "cpu_count": os.cpu_count(),
            "torch_threads": self.cfg.torch_threads,
            "command": sys.argv,
            "overrides": self.overrides,
            "resumed_at_env_steps": [],
            "worker_failures": [],
            "final": None,
            "wandb": None,
        }
        previous_meta = self._read_previous_meta() if resuming else None
        if previous_meta:
            self.meta["start_time"] = previous_meta.get("start_time", self.meta["start_time"])
            self.meta["resumed_at_env_steps"] = previous_meta.get("resumed_at_env_steps", [])
            self.meta["worker_failures"] = previous_meta.get("worker_failures", [])
        if resuming:
            self.meta["resumed_at_env_steps"].append(self.env_steps)
        self.logs = {name: CsvLog(self.run_dir / f"{name}.csv", columns, append=resuming)
                     for name, columns in RECORD_COLUMNS.items()}
        self.events = (self.run_dir / "events.jsonl").open("a" if resuming else "w")
        self._write_meta()
        self.event("resumed" if resuming else "started", env_steps=self.env_steps)
        self._open_wandb()
        self._open_progress()
        self._install_signal_handlers()
        self._start = time.monotonic()  # wall_time measures training, not W&B's start-up
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
        elif exc is not None or self.stop_requested:
            self.status = "interrupted"
        else:
            self.status = "completed"
        self._restore_signal_handlers()
        try:
            if self.env_steps > self._last_row[0]:
                self._write_metrics_row()
            self.event(self.status, env_steps=self.env_steps, error=self.error)
            for log in self.logs.values():
                log.close()
            self.events.close()
        finally:
            self.meta.update(status=self.status, end_time=_now_iso(), error=self.error, final=self.summary())
            self._write_meta()
            self._close_progress()
            self._close_wandb()
            print(self.summary_line(), flush=True)
        # A KeyboardInterrupt has been handled: the run is recorded as interrupted.
        return isinstance(exc, KeyboardInterrupt)

    def _read_previous_meta(self) -> dict[str, Any] | None:
        path = self.run_dir / "meta.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _write_meta(self) -> None:
        _write_json_atomic(self.run_dir / "meta.json", self.meta)

    # ----------------------------------------------------------------- resume
    def _load_resume_state(self) -> bool:
        if not self.cfg.resume:
            return False
        if not self.checkpoint_path.exists():
            print(f"resume=true but {self.checkpoint_path} does not exist: starting from scratch",
                  file=sys.stderr)
            return False
        state = read_checkpoint(self.checkpoint_path)
        saved = state.pop("record")
        self.resume_state = state
        self.env_steps, self.updates = saved["env_steps"], saved["updates"]
        self.policy_version, self.episodes = saved["policy_version"], saved["episodes"]
        self.dropped_updates = saved["dropped_updates"]
        self._wall_offset = saved["wall_time"]
        self._recent.extend(saved["recent_episodes"])
        self._wandb_id = saved.get("wandb_id")
        self._last_row = (self.env_steps, self._wall_offset)
        self._next_log_at = (self.env_steps // self.cfg.log_interval + 1) * self.cfg.log_interval
        self._next_checkpoint_at = ((self.env_steps // self.cfg.checkpoint_interval + 1)
                                    * self.cfg.checkpoint_interval)
        # Rows written after the checkpoint are rewritten by the resumed run: drop them so that
        # nothing is duplicated.
        steps, updates = self.env_steps, self.updates
        for name, keep in (
            ("metrics.csv", lambda row: int(row["env_steps"]) <= steps),
            ("episodes.csv", lambda row: int(row["env_steps"]) <= steps),
            ("updates.csv", lambda row: int(row["update"]) <= updates),
        ):
            if (self.run_dir / name).exists():
                _keep_rows(self.run_dir / name, keep)
        return True

    # ----------------------------------------------------------------- what algorithms call
    def wall_time(self) -> float:
        return time.monotonic() - self._start + self._wall_offset

    def episode(self, worker: int, env_steps: int, ret: float, length: int) -> None:
        self.episodes += 1
        self._recent.append((ret, length))
        self.logs["episodes"].write((env_steps, self.wall_time(), worker, ret, length))

    def update(self, worker: int, env_steps: int, version_at_sync: int, version_at_apply: int,
               applied: bool, lr: float, wait_time: float = 0.0, **stats: float) -> None:
        """One gradient: applied at ``version_at_apply`` (or dropped) after syncing at ``version_at_sync``."""
        self.updates += 1
        staleness = version_at_apply - version_at_sync
        self.logs["updates"].write((self.updates, self.wall_time(), env_steps, worker, version_at_sync,
                                   version_at_apply, staleness, int(applied), wait_time, lr))
        interval = self._interval
        interval.setdefault("staleness", []).append(staleness)
        interval.setdefault("wait_time", []).append(wait_time)
        if applied:
            self.policy_version = max(self.policy_version, version_at_apply + 1)
        else:
            self.dropped_updates += 1
        for name in LOSS_STATS:
            if name in stats:
                interval.setdefault(name, []).append(stats[name])
        self._lr = lr
        self.env_steps = max(self.env_steps, env_steps)
        if self.env_steps >= self._next_log_at:
            self._write_metrics_row()

    def event(self, kind: str, **fields: Any) -> None:
        entry = {"time": _now_iso(), "wall_time": round(self.wall_time(), 3), "event": kind, **fields}
        self.events.write(json.dumps(entry, default=str) + "\n")
        self.events.flush()
        if kind == "worker_failed":
            self.meta["worker_failures"].append(entry)
            self._write_meta()

    def checkpoint_due(self, env_steps: int) -> bool:
        return env_steps >= self._next_checkpoint_at

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoints/last.pt`` atomically, after flushing every file it must agree with."""
        self._flush()
        state = dict(state)
        state["record"] = {
            "env_steps": self.env_steps, "updates": self.updates, "policy_version": self.policy_version,
            "episodes": self.episodes, "dropped_updates": self.dropped_updates,
            "wall_time": self.wall_time(), "recent_episodes": list(self._recent),
            "wandb_id": getattr(self.wandb_run, "id", None),
        }
        write_checkpoint(self.checkpoint_path, state)
        interval = self.cfg.checkpoint_interval
        self._next_checkpoint_at = (self.env_steps // interval + 1) * interval

    # ----------------------------------------------------------------- metrics rows
    def _write_metrics_row(self) -> None:
        wall = self.wall_time()
        interval = self._interval
        returns = [ret for ret, _ in self._recent]
        staleness = np.asarray(interval.get("staleness", [0]), dtype=np.float64)
        previous_steps, previous_wall = self._last_row
        row = {
            "env_steps": self.env_steps,
            "wall_time": wall,
            "updates": self.updates,
            "policy_version": self.policy_version,
            "episodes": self.episodes,
            "return_mean": float(np.mean(returns)) if returns else math.nan,
            "return_max": float(np.max(returns)) if returns else math.nan,
            "length_mean": float(np.mean([length for _, length in self._recent])) if returns else math.nan,
            **{name: float(np.mean(interval[name])) if interval.get(name) else math.nan for name in LOSS_STATS},
            "lr": self._lr,
            "sps": (self.env_steps - previous_steps) / max(wall - previous_wall, 1e-9),
            "staleness_mean": float(staleness.mean()),
            "staleness_max": float(staleness.max()),
            "staleness_p95": float(np.percentile(staleness, 95)),
            "dropped_updates": self.dropped_updates,
            "barrier_wait_mean": float(np.mean(interval.get("wait_time", [0.0]))),
        }
        self.logs["metrics"].write(tuple(row[name] for name in METRIC_COLUMNS))
        self._flush()
        self._log_wandb(row, staleness)
        self._advance_progress(row)
        self._interval = {}
        self._last_row = (self.env_steps, wall)
        self._next_log_at = (self.env_steps // self.cfg.log_interval + 1) * self.cfg.log_interval

    def _flush(self) -> None:
        for log in self.logs.values():
            log.flush()

    def summary(self) -> dict[str, Any]:
        returns = [ret for ret, _ in self._recent]
        wall = self.wall_time()
        return {
            "env_steps": self.env_steps, "wall_time": wall, "updates": self.updates,
            "policy_version": self.policy_version, "episodes": self.episodes,
            "dropped_updates": self.dropped_updates,
            "return_mean": float(np.mean(returns)) if returns else None,
            "return_window": len(returns),
            "sps": self.env_steps / max(wall, 1e-9),
        }

    def summary_line(self) -> str:
        final = self.summary()
        ret = "no finished episode" if final["return_mean"] is None else (
            f"return_mean {final['return_mean']:.1f} over the last {final['return_window']} episodes")
        error = f" ({self.error})" if self.error else ""
        return (f"{self.status}{error}: {self.cfg.algo.name}/{self.cfg.algo.mode} on {self.cfg.env.id}, "
                f"seed {self.cfg.seed}: {final['env_steps']} env steps in {final['wall_time']:.1f}s "
                f"({final['sps']:.0f} steps/s), {ret}. Run record: {self.run_dir}")

    # ----------------------------------------------------------------- Weights & Biases
    def _open_wandb(self) -> None:
        wandb_cfg = self.cfg.logger.wandb
        if wandb_cfg.mode == "disabled":
            return
        import wandb  # only imported when the mirror is enabled

        resume_id = self._wandb_id
        self.wandb_run = wandb.init(
            mode=wandb_cfg.mode,
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            group=wandb_cfg.group,
            tags=list(wandb_cfg.tags),
            name=self.run_dir.name,
            dir=str(self.run_dir),
            config=OmegaConf.to_container(self.cfg, resolve=True),
            id=resume_id,
            resume="allow" if resume_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.wandb_run.define_metric("env_steps")
        self.wandb_run.define_metric("*", step_metric="env_steps")
        self.meta["wandb"] = {"mode": wandb_cfg.mode, "id": self.wandb_run.id, "dir": self.wandb_run.dir}
        self._write_meta()

    def _log_wandb(self, row: dict[str, Any], staleness: np.ndarray) -> None:
        if self.wandb_run is None:
            return
        import wandb

        payload = {name: value for name, value in row.items()
                   if not (isinstance(value, float) and math.isnan(value))}
        # One bin per integer staleness value, so the histogram reads as counts of 0, 1, 2, ... versions.
        edges = np.arange(staleness.max() + 2) - 0.5
        payload["staleness_hist"] = wandb.Histogram(np_histogram=np.histogram(staleness, bins=edges))
        self.wandb_run.log(payload)

    def _close_wandb(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if self.status == "completed" else 1)
            self.wandb_run = None

    # ----------------------------------------------------------------- progress bar
    def _open_progress(self) -> None:
        if self.cfg.quiet:
            return
        from tqdm import tqdm

        self._progress = tqdm(total=self.cfg.total_env_steps, initial=self.env_steps, unit="step",
                              unit_scale=True, dynamic_ncols=True, mininterval=0.5,
                              desc=f"{self.cfg.algo.name}/{self.cfg.algo.mode} {self.cfg.env.id}")

    def _advance_progress(self, row: dict[str, Any]) -> None:
        if self._progress is None:
            return
        self._progress.update(row["env_steps"] - self._progress.n)
        ret = row["return_mean"]
        self._progress.set_postfix_str(
            f"{row['sps']:.0f} steps/s, return {'-' if math.isnan(ret) else f'{ret:.1f}'}", refresh=False)

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # ----------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C does not wait for the update to finish
            self.stop_requested = True
            self.event("stop_requested", signal=signal.Signals(signum).name, env_steps=self.env_steps)

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, request_stop)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
