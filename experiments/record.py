"""The run record: the contract between training and analysis.

A run directory holds ``meta.json`` (status and provenance), ``metrics.csv`` (one row per logging
interval), ``episodes.csv`` (every finished episode), ``updates.csv`` (every applied or dropped
gradient, with its policy versions and staleness), ``evals.csv`` (every evaluation, see
``experiments.evaluations``), ``events.jsonl`` (resumes, worker failures and
restarts, interrupts), ``checkpoints/last.pt`` (and ``prev.pt``, the one before) and, unless disabled,
``wandb/`` mirroring the metrics. The CSV files' columns are listed in ``experiments.columns``.

Local files are the source of truth. They are appended in whole lines and flushed as the run goes, so a
killed run keeps everything up to its last interval, and no failure (a full disk included) leaves a torn
line or ``meta.json`` at ``running``. Algorithms talk to the record only through ``episode``, ``update``,
``event``, the evaluation calls and the checkpoint calls (see ``algorithms.infra.messages.Record``); the record derives every
aggregate. docs/design.md says how it keeps the metrics grid, resumes and fails.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
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
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from algorithms.core.evaluation import EvalSnapshot
from algorithms.infra.checkpoint import (
    CheckpointError,
    CheckpointRefused,
    dropped_partial_episodes,
    read_checkpoint,
    write_checkpoint,
    write_file,
)
from experiments.blowup import BlowupWatch
from experiments.columns import EVAL_COLUMNS, LOSS_STATS, METRIC_COLUMNS, OFF_POLICY_STATS, RECORD_COLUMNS
from experiments.evaluations import Evaluations, Row

RECORDED_PACKAGES = ("torch", "numpy", "gymnasium", "hydra-core", "omegaconf", "wandb", "pandas", "mujoco", "ale-py",
                     "minatar")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Kept free while the run lives, so that its final status still fits on a full disk: far more than meta.json.
META_RESERVE_BYTES = 256 * 1024
WANDB_MAX_BINS = 512  # wandb.Histogram refuses more
WANDB_INIT_TIMEOUT_S = 10.0  # W&B's own default (90 s) holds a run without network for a minute and a half


class RunFailed(RuntimeError):
    """A run that failed for a reason its record states in one line, where a traceback would not help: no
    checkpoint to resume from, W&B unavailable with ``logger.wandb.fallback=fail``, a file it could not write."""


def checkpoint_paths(run_dir: Path) -> tuple[Path, Path]:
    """A run's latest checkpoint and the one before it, which a resume falls back to."""
    return run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "prev.pt"


def staleness_bins(staleness: np.ndarray) -> np.ndarray:
    """Histogram edges with one bin per integer staleness value (counts of 0, 1, 2, ... versions behind), or
    W&B's most, 512 equal bins, past that."""
    most = int(staleness.max())
    if most + 1 <= WANDB_MAX_BINS:
        return np.arange(most + 2) - 0.5
    return np.linspace(-0.5, most + 0.5, WANDB_MAX_BINS + 1)


def _now_iso() -> str:
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


def _format(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _keep_rows(path: Path, keep: Callable[[dict[str, str]], bool]) -> None:
    """Rewrite a CSV keeping the header and the complete rows for which ``keep(row)`` is true."""
    # bytes, not text: the rows end in \r\n, as the csv module writes them
    lines = [line for line in path.read_bytes().decode().splitlines(keepends=True) if line.endswith("\n")]
    kept = lines[:1]
    if lines:
        fields = next(csv.reader(lines[:1]))
        kept += [line for line, values in zip(lines[1:], csv.reader(lines[1:]), strict=True)
                 if keep(dict(zip(fields, values, strict=True)))]
    tmp = path.with_suffix(".tmp")
    write_file(tmp, "".join(kept).encode())
    os.replace(tmp, path)


class LineLog:
    """An append-only text file written in whole lines.

    Lines wait in memory until :meth:`flush`, which appends them all or, when the write fails (a full disk),
    cuts the file back to its last complete line and raises an OSError naming the file.
    """

    def __init__(self, path: Path, append: bool, header: str = ""):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC), 0o644)
        self.size = os.fstat(self.fd).st_size
        self.pending: list[str] = [header] if header and not self.size else []

    def add(self, line: str) -> None:
        self.pending.append(line)

    def flush(self) -> None:
        if not self.pending:
            return
        # Taken first: a signal handler that logs an event during this write flushes only its own line.
        lines, self.pending = self.pending, []
        data = memoryview("".join(lines).encode())
        try:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
            os.fsync(self.fd)
        except OSError as error:
            os.ftruncate(self.fd, self.size)
            raise OSError(error.errno, error.strerror, str(self.path)) from error
        self.size += len(data)

    def close(self) -> None:
        """Close the file; lines not flushed are dropped (after a failed flush they must not be written)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CsvLog(LineLog):
    """A :class:`LineLog` of CSV rows under a fixed header."""

    def __init__(self, path: Path, columns: tuple[str, ...], append: bool):
        self._text = io.StringIO()
        self._writer = csv.writer(self._text)
        super().__init__(path, append, header=self._line(columns))

    def _line(self, values: Any) -> str:
        self._text.seek(0)
        self._text.truncate()
        self._writer.writerow(values)
        return self._text.getvalue()

    def write(self, row: tuple[Any, ...]) -> None:
        self.add(self._line([_format(value) for value in row]))


class RunRecord:
    """Opened as a context manager around one training run; see the module docstring for the files."""

    def __init__(self, run_dir: str | Path, cfg: DictConfig, overrides: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.overrides = list(overrides or [])
        self.checkpoint_path, self.previous_checkpoint_path = checkpoint_paths(self.run_dir)
        self.stop_requested = False
        self.resume_state: dict[str, Any] | None = None
        self.status = "running"
        self.error: str | None = None
        self.wandb_run: Any = None
        self.meta: dict[str, Any] = {}
        self.logs: dict[str, CsvLog] = {}
        self.events: LineLog | None = None
        self._fault: OSError | None = None  # the record's first failed write: it fails the run
        self._meta_reserve = self.run_dir / ".meta_reserve"
        self._progress: Any = None
        self._previous_handlers: dict[int, Any] = {}
        self._start = time.monotonic()
        # Counters (restored from the checkpoint when resuming).
        self.env_steps = 0
        self.updates = 0
        self.policy_version = 0
        self.episodes = 0
        self.dropped_updates = 0
        self._wall_offset = 0.0
        self._recent = deque(maxlen=cfg.return_window)  # (return, length) of the latest episodes
        self._blowups = BlowupWatch(cfg.blowup_factor, cfg.blowup_window) if cfg.blowup_factor else None
        self._interval: dict[str, list[float]] = {}
        self._last_row = (0, 0.0)  # env_steps and wall_time of the latest metrics row
        self._row_due_at: float | None = None  # wall time at which the next metrics row became due
        self._next_log_at = cfg.log_interval
        self._next_checkpoint_at = cfg.checkpoint_interval
        self._lr = float("nan")
        self._wandb_id: str | None = None
        self._evaluations: Evaluations | None = None
        self._evaluation_error: Exception | None = None  # a failed evaluation fails the run
        self._last_eval: dict[str, Any] | None = None
        self._virtual_clock: Callable[[], float] | None = None  # a simulated run's time, in place of the machine's

    # ----------------------------------------------------------------- opening and closing
    def __enter__(self) -> RunRecord:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.meta = self._initial_meta()
        try:
            self._open()
        except BaseException as error:
            self._end(error)
            self._raise_fault(error)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._end(exc)
        self._raise_fault(exc)
        # A KeyboardInterrupt has been handled: the run is recorded as interrupted.
        return isinstance(exc, KeyboardInterrupt)

    def _initial_meta(self) -> dict[str, Any]:
        return {
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
            "clock": "real",  # "simulated" for backend=simulated: wall_time columns are virtual seconds
            "final": None,
            "wandb": None,
        }

    def _open(self) -> None:
        self.checkpoint_path.parent.mkdir(exist_ok=True)
        resuming = self._load_resume_state()
        if resuming:
            self.meta["resumed_at_env_steps"].append(self.env_steps)
        else:  # a fresh start: an older run's checkpoint must never become this run's fallback
            for path in (self.checkpoint_path, self.previous_checkpoint_path):
                path.unlink(missing_ok=True)
        for name, columns in RECORD_COLUMNS.items():  # one at a time: a failure closes those already open
            self.logs[name] = CsvLog(self.run_dir / f"{name}.csv", columns, append=resuming)
        self.events = LineLog(self.run_dir / "events.jsonl", append=resuming)
        self._evaluations = Evaluations(self.cfg, self.env_steps)
        with self._writing():
            write_file(self._meta_reserve, bytes(META_RESERVE_BYTES))
        self._write_meta()
        self.event("resumed" if resuming else "started", env_steps=self.env_steps)
        if resuming and (dropped := dropped_partial_episodes(self.resume_state)):
            self.event("partial_episodes_dropped", env_steps=self.env_steps, episodes=dropped,
                       reason="the envs' state could not be saved in the checkpoint; they start fresh episodes")
        self._open_wandb()
        self._open_progress()
        self._install_signal_handlers()
        self._start = time.monotonic()  # wall_time measures training, not W&B's start-up

    def _end(self, exc: BaseException | None) -> None:
        """Record how the run ended (last rows, end event, meta.json), then close W&B and the progress bar."""
        self._restore_signal_handlers()
        if self.logs:
            completed = self._outcome(exc)[0] == "completed"
            try:
                with contextlib.suppress(OSError), self._writing():  # a failure becomes the run's fault
                    self._close_evaluations(completed)
                    self._write_due_row()
                    # A completed run's last row is its end, even between two rows of the grid; a stopped or
                    # failed one ends at its last grid row (a resume carries the interval on from the checkpoint).
                    if completed and self.env_steps > self._last_row[0]:
                        self._write_metrics_row(self.wall_time())
                    self._flush()
            except Exception as error:  # whatever breaks the last rows, meta.json must still say how the run ended
                self._fault = self._fault or error
        self.status, self.error = self._outcome(exc)
        self._log_end(exc)
        self.meta.update(status=self.status, end_time=_now_iso(), error=self.error, final=self.summary())
        self._write_final_meta()
        self._close_progress()
        self._close_wandb()
        print(self.summary_line(), flush=True)

    def _outcome(self, exc: BaseException | None) -> tuple[str, str | None]:
        """Status and error: the record's own failed write first, then what the run raised, then a stop."""
        failure = self._fault or (None if isinstance(exc, KeyboardInterrupt) else exc) or self._evaluation_error
        if failure is not None:
            return "failed", str(failure) if isinstance(failure, RunFailed) else f"{type(failure).__name__}: {failure}"
        return ("interrupted" if exc is not None or self.stop_requested else "completed"), None

    def _log_end(self, exc: BaseException | None) -> None:
        """The end event, then every file closed; on a full disk meta.json still says how the run ended."""
        try:
            if self.events is None:  # the run failed before its events were opened
                self.events = LineLog(self.run_dir / "events.jsonl", append=True)
            self._write_event(self._event_entry(self.status, env_steps=self.env_steps, error=self.error))
        except OSError as error:
            if self._fault is None:
                self._fault = error
                self.status, self.error = self._outcome(exc)
        finally:
            for log in (*self.logs.values(), self.events):
                if log is not None:
                    log.close()

    def _raise_fault(self, exc: BaseException | None) -> None:
        """A failed write of the record's own fails the run with that one line rather than its traceback."""
        if self._fault is not None and not isinstance(exc, RunFailed):
            raise RunFailed(self.error) from self._fault

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around the record's writes: the first that fails (a full disk) is the run's fault, and once the
        record has failed no file is written to again, so that they all end where they agreed."""
        if self._fault is not None:
            raise self._fault
        try:
            yield
        except OSError as error:
            self._fault = self._fault or error
            raise

    def _write_meta(self) -> None:
        with self._writing():
            self._replace_meta()

    def _replace_meta(self) -> None:
        path = self.run_dir / "meta.json"
        tmp = path.with_suffix(".json.tmp")
        write_file(tmp, (json.dumps(self.meta, indent=2, default=str) + "\n").encode())
        os.replace(tmp, path)

    def _write_final_meta(self) -> None:
        """meta.json must not stay at ``running``: on a full disk, free the space kept for it and try again."""
        try:
            try:
                self._replace_meta()
            except OSError:
                self._meta_reserve.unlink(missing_ok=True)
                self._replace_meta()
        except OSError as error:
            print(f"error: the run {self.status}, but meta.json cannot say so: {error}", file=sys.stderr)
        finally:
            self._meta_reserve.unlink(missing_ok=True)

    # ----------------------------------------------------------------- resume
    def _load_resume_state(self) -> bool:
        if not self.cfg.resume:
            return False
        if not (self.checkpoint_path.exists() or self.previous_checkpoint_path.exists()):
            print(f"resume=true but {self.checkpoint_path} does not exist: starting from scratch",
                  file=sys.stderr)
            return False
        previous_meta = self._read_previous_meta() or {}
        for key in ("start_time", "resumed_at_env_steps", "worker_failures"):
            self.meta[key] = previous_meta.get(key, self.meta[key])
        state = self._first_valid_checkpoint()
        saved = state.pop("record")
        self.resume_state = state
        self.env_steps, self.updates = saved["env_steps"], saved["updates"]
        self.policy_version, self.episodes = saved["policy_version"], saved["episodes"]
        self.dropped_updates = saved["dropped_updates"]
        self._wall_offset = saved["wall_time"]
        self._recent.extend(saved["recent_episodes"])
        self._wandb_id = saved.get("wandb_id")
        # The interval in progress and the latest row of the grid; a checkpoint written before the record
        # saved them resumes its grid from its own env step.
        self._interval = saved.get("interval", {})
        self._last_row = tuple(saved.get("last_row", (self.env_steps, self._wall_offset)))
        self._next_log_at = (self.env_steps // self.cfg.log_interval + 1) * self.cfg.log_interval
        self._next_checkpoint_at = ((self.env_steps // self.cfg.checkpoint_interval + 1)
                                    * self.cfg.checkpoint_interval)
        self._drop_rows_after_checkpoint()
        return True

    def _first_valid_checkpoint(self) -> dict[str, Any]:
        """last.pt, or prev.pt when last.pt is missing or damaged (said in one line); RunFailed if neither."""
        problems = []
        for path in (self.checkpoint_path, self.previous_checkpoint_path):
            try:
                state = read_checkpoint(path) if path.exists() else None
            except CheckpointError as error:
                problems.append(str(error))
                continue
            if state is None:
                problems.append(f"{path} does not exist")
                continue
            if problems:
                print(f"warning: {problems[0]}; resuming from {path}", file=sys.stderr)
            return state
        raise RunFailed(f"resume=true but no checkpoint can be resumed: {'; '.join(problems)}")

    def _drop_rows_after_checkpoint(self) -> None:
        """Rows written after the checkpoint are rewritten by the resumed run, and a row that ended the run
        off the grid is rewritten at the grid: drop them so that nothing is duplicated."""
        last_row, steps, updates = self._last_row[0], self.env_steps, self.updates
        with self._writing():
            for name, keep in (
                ("metrics.csv", lambda row: int(row["env_steps"]) <= last_row),
                ("episodes.csv", lambda row: int(row["env_steps"]) <= steps),
                ("updates.csv", lambda row: int(row["update"]) <= updates),
                ("evals.csv", lambda row: int(row["env_steps"]) <= steps),
            ):
                if (self.run_dir / name).exists():
                    _keep_rows(self.run_dir / name, keep)

    def _read_previous_meta(self) -> dict[str, Any] | None:
        path = self.run_dir / "meta.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # ----------------------------------------------------------------- what algorithms call
    def wall_time(self) -> float:
        """Seconds of training: since the start, before a resume too, less the time training waited for evaluations;
        for a simulated run, its virtual clock's seconds."""
        if self._virtual_clock is not None:
            return self._virtual_clock() + self._wall_offset
        paused = self._evaluations.paused_seconds if self._evaluations is not None else 0.0
        return time.monotonic() - self._start + self._wall_offset - paused

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Measure ``wall_time`` with ``clock`` (virtual seconds) from now on; meta.json says so."""
        self._virtual_clock = clock
        self.meta.update(clock="simulated", cost_model=OmegaConf.to_container(self.cfg.sim))
        self._write_meta()

    def episode(self, worker: int, env_steps: int, ret: float, length: int) -> None:
        self._write_due_row(env_steps)
        self.episodes += 1
        self._recent.append((ret, length))
        self.logs["episodes"].write((env_steps, self.wall_time(), worker, ret, length))

    def update(self, worker: int, env_steps: int, version_at_sync: int, version_at_apply: int,
               applied: bool, lr: float, wait_time: float = 0.0, **stats: float) -> None:
        """One gradient: applied at ``version_at_apply`` (or dropped) after syncing at ``version_at_sync``."""
        self._write_due_row(env_steps)
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
        for name in (*LOSS_STATS, *OFF_POLICY_STATS):
            if name in stats:
                interval.setdefault(name, []).append(stats[name])
        self._warn_blowups(worker, env_steps, stats)
        if self._evaluations is not None:
            self._write_evals(self._evaluations.finished())
        self._lr = lr
        self.env_steps = max(self.env_steps, env_steps)
        if self._row_due_at is None and self.env_steps >= self._next_log_at:
            self._row_due_at = self.wall_time()

    def _warn_blowups(self, worker: int, env_steps: int, stats: dict[str, float]) -> None:
        for blowup in self._blowups.observe(stats) if self._blowups is not None else ():
            print(f"warning: worker {worker} at env step {env_steps}: {blowup.describe()} "
                  f"(blowup_factor={self.cfg.blowup_factor:g})", file=sys.stderr, flush=True)
            self.event("blowup_warning", worker=worker, env_steps=env_steps, quantity=blowup.quantity,
                       value=blowup.value, median=blowup.median)

    def event(self, kind: str, **fields: Any) -> None:
        entry = self._event_entry(kind, **fields)
        with self._writing():
            self._write_event(entry)
        if kind == "worker_failed":
            self.meta["worker_failures"].append(entry)
            self._write_meta()

    def _event_entry(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"time": _now_iso(), "wall_time": round(self.wall_time(), 3), "event": kind, **fields}

    def _write_event(self, entry: dict[str, Any]) -> None:
        self.events.add(json.dumps(entry, default=str) + "\n")
        self.events.flush()

    def evaluation_due(self, env_steps: int) -> bool:
        return self._evaluations is not None and self._evaluations.due(env_steps)

    def evaluate(self, snapshot: EvalSnapshot) -> None:
        """Evaluate the policy of ``snapshot`` (see ``experiments.evaluations`` for where and when its row appears)."""
        self._write_evals(self._evaluations.evaluate(snapshot, self.wall_time()))

    def _write_evals(self, rows: list[Row]) -> None:
        if not rows:
            return
        with self._writing():
            for row in rows:
                self.logs["evals"].write(row)
            self.logs["evals"].flush()
        for row in rows:
            self._last_eval = dict(zip(EVAL_COLUMNS, row, strict=True))
            self._log_wandb_eval(self._last_eval)

    def _close_evaluations(self, completed: bool) -> None:
        if self._evaluations is None:
            return
        try:
            rows = self._evaluations.close(completed)
        except Exception as error:  # the evaluation's own failure, raised from its thread
            self._evaluation_error = error
            return
        self._write_evals(rows)

    def checkpoint_due(self, env_steps: int) -> bool:
        return env_steps >= self._next_checkpoint_at

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoints/last.pt`` (the previous one kept as ``prev.pt``) after flushing every file it
        must agree with. One holding a non-finite value is refused, logged as ``checkpoint_refused`` and not
        raised: a diverged run keeps its last good checkpoint and reports its divergence where it occurs."""
        with self._writing():
            self._write_due_row()
            self._flush()
            state = {**state, "record": {
                "env_steps": self.env_steps, "updates": self.updates, "policy_version": self.policy_version,
                "episodes": self.episodes, "dropped_updates": self.dropped_updates,
                "wall_time": self.wall_time(), "recent_episodes": list(self._recent),
                "wandb_id": getattr(self.wandb_run, "id", None),
                "interval": {name: list(values) for name, values in self._interval.items()},
                "last_row": list(self._last_row),
            }}
            try:
                write_checkpoint(self.checkpoint_path, state, keep_previous_as=self.previous_checkpoint_path)
            except CheckpointRefused as refused:
                self.event("checkpoint_refused", part=refused.part, reason=refused.reason, env_steps=self.env_steps)
        interval = self.cfg.checkpoint_interval
        self._next_checkpoint_at = (self.env_steps // interval + 1) * interval

    # ----------------------------------------------------------------- metrics rows
    def _write_due_row(self, env_steps: int | None = None) -> None:
        """Write the metrics row that became due once every row of its update is in: when a row or episode
        of a later update arrives (past ``env_steps``), or at a checkpoint or the end (``None``). A
        synchronous update is one ``update`` call per worker, all at the same env step."""
        if self._row_due_at is not None and (env_steps is None or env_steps > self.env_steps):
            self._write_metrics_row(self._row_due_at)

    def _write_metrics_row(self, wall: float) -> None:
        if self._blowups is not None:
            self._blowups.new_row()
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
            **{name: float(np.mean(interval[name])) if interval.get(name) else math.nan
               for name in (*LOSS_STATS, *OFF_POLICY_STATS)},
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
        self._row_due_at = None
        self._next_log_at = (self.env_steps // self.cfg.log_interval + 1) * self.cfg.log_interval

    def _flush(self) -> None:
        with self._writing():
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
            "eval": None if self._last_eval is None else {
                name: self._last_eval[name] for name in ("env_steps", "policy_version", "episodes", "return_mean",
                                                         "return_std", "deterministic")},
        }

    def summary_line(self) -> str:
        final = self.summary()
        ret = "no finished episode" if final["return_mean"] is None else (
            f"return_mean {final['return_mean']:.1f} over the last {final['return_window']} episodes")
        if (evaluation := final["eval"]) is not None:
            ret += (f"; evaluation at {evaluation['env_steps']} env steps: return_mean {evaluation['return_mean']:.1f} "
                    f"over {evaluation['episodes']} episodes")
        error = f" ({self.error})" if self.error else ""
        return (f"{self.status}{error}: {self.cfg.algo.name}/{self.cfg.algo.mode} on {self.cfg.env.id}, "
                f"seed {self.cfg.seed}: {final['env_steps']} env steps in {final['wall_time']:.1f}"
                f"{' virtual ' if self._virtual_clock is not None else ''}s "
                f"({final['sps']:.0f} steps/s), {ret}. Run record: {self.run_dir}")

    # ----------------------------------------------------------------- Weights & Biases
    def _open_wandb(self) -> None:
        """Start the W&B mirror. When its mode cannot start (no API key, no network), say why in one line and
        go on with the offline mirror, then with none (``logger.wandb.fallback=offline``), or fail (``fail``)."""
        wandb_cfg = self.cfg.logger.wandb
        if wandb_cfg.mode == "disabled":
            return
        reasons = []
        for mode in ["online", "offline"] if wandb_cfg.mode == "online" else ["offline"]:
            reason = self._start_wandb(mode)
            if reason is None:
                break
            reasons.append(f"{mode}: {reason}")
            if wandb_cfg.fallback == "fail":
                raise RunFailed(f"W&B {mode} mode cannot start ({reason}) and logger.wandb.fallback=fail")
            then = "mirroring offline instead" if mode == "online" else "the run goes on without a W&B mirror"
            print(f"warning: W&B {mode} mode cannot start ({reason}); {then}", file=sys.stderr)
        run = self.wandb_run
        self.meta["wandb"] = {"mode": mode if run is not None else "disabled", "requested": wandb_cfg.mode,
                              "fallback_reason": "; ".join(reasons) or None,
                              "id": getattr(run, "id", None), "dir": getattr(run, "dir", None)}
        self._write_meta()

    def _start_wandb(self, mode: str) -> str | None:
        """Start the W&B run in ``mode``, never prompting; return why it cannot start, or None."""
        import wandb  # only imported when the mirror is enabled

        wandb_cfg = self.cfg.logger.wandb
        try:
            # W&B's own variable still sets the timeout, for a slow link to a working server.
            init_timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT_S))
            wandb.setup(wandb.Settings(silent=True))  # W&B's messages, its login's included, would be noise
            # Online needs an API key: look for one without W&B's interactive prompt, which would wait at a
            # terminal and fail without one.
            if mode == "online" and not wandb.login(prompt=False, verify=False):
                return "no W&B API key: set WANDB_API_KEY or run `wandb login`"
            self.wandb_run = wandb.init(
                mode=mode,
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                group=wandb_cfg.group,
                tags=list(wandb_cfg.tags),
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=OmegaConf.to_container(self.cfg, resolve=True),
                id=self._wandb_id,
                resume="allow" if self._wandb_id else None,
                settings=wandb.Settings(console="off", x_disable_stats=True, silent=True, init_timeout=init_timeout),
            )
        except Exception as error:  # the mirror is optional: whatever stops it is reported, never raised
            return _first_line(error)
        self.wandb_run.define_metric("env_steps")
        self.wandb_run.define_metric("*", step_metric="env_steps")
        return None

    def _log_wandb(self, row: dict[str, Any], staleness: np.ndarray) -> None:
        def payload() -> dict[str, Any]:
            import wandb

            logged = {name: value for name, value in row.items()
                      if not (isinstance(value, float) and math.isnan(value))}
            logged["staleness_hist"] = wandb.Histogram(np_histogram=np.histogram(staleness,
                                                                                 bins=staleness_bins(staleness)))
            return logged

        self._mirror(payload)

    def _log_wandb_eval(self, row: dict[str, Any]) -> None:
        self._mirror(lambda: {"env_steps": row["env_steps"], **{
            f"eval/{name}": row[name] for name in ("return_mean", "return_std", "length_mean", "eval_seconds")}})

    def _mirror(self, payload: Callable[[], dict[str, Any]]) -> None:
        """Log ``payload()`` to W&B. The mirror is optional: if logging fails, the run goes on without it (said in
        one line, and in meta.json), and the local record, written first, is whole."""
        if self.wandb_run is None:
            return
        try:
            self.wandb_run.log(payload())
        except Exception as error:
            reason = _first_line(error)
            print(f"warning: W&B logging failed at env step {self.env_steps} ({reason}); the run goes on without "
                  "a W&B mirror", file=sys.stderr)
            with contextlib.suppress(Exception):
                self.wandb_run.finish(exit_code=1)
            self.wandb_run = None
            self.meta["wandb"] = {**self.meta.get("wandb", {}), "dropped": f"at env step {self.env_steps}: {reason}"}

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
