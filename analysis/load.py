"""Run directories (or a W&B project) -> tidy pandas frames.

A run directory is what ``experiments.record.RunRecord`` writes: ``meta.json``, ``metrics.csv``,
``episodes.csv``, ``updates.csv`` and, when launched through Hydra, ``.hydra/config.yaml`` and
``.hydra/overrides.yaml``. :func:`load_runs` accepts one run directory, a multirun sweep or any tree
of them. A run that cannot be trusted is skipped with a :class:`SkippedRunWarning` naming the run and
the reason, and listed in :attr:`RunSet.skipped`, so that a report can count it: a missing, empty or
truncated file, a header that does not match the run-record contract, duplicate rows, a run whose
status is not ``completed`` (still running, failed or interrupted).

Every frame carries the run's identifying columns (:data:`RUN_COLUMNS` plus the swept overrides), so
that it can be grouped or plotted without joins.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from experiments.columns import EPISODE_COLUMNS, METRIC_COLUMNS, UPDATE_COLUMNS

# Columns that identify a run and its experimental condition in every frame.
RUN_COLUMNS = ("run_id", "env_name", "env_id", "algo", "mode", "schedule", "num_workers", "num_envs", "seed")
REQUIRED_META = ("status", "algo", "mode", "env_id", "env_name", "num_workers", "num_envs", "seed")
# The run-record files, the columns of the record's contract that analysis reads (a header without one
# of them does not match; columns added later to the record are fine, as the contract allows) and the
# columns that identify one row (None: the whole row). A repeated key means rows were appended twice,
# e.g. by a resume that did not truncate.
RECORD_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "metrics": (("env_steps", "wall_time", "return_mean"), ("env_steps",)),
    "episodes": (("env_steps", "wall_time", "worker", "return", "length"), None),
    "updates": (("update", "wall_time", "env_steps", "worker", "staleness", "applied", "wait_time"), ("update",)),
}
# Override keys already described by a meta.json column, and keys that are not experimental factors.
META_OVERRIDE_KEYS = {"seed", "algo", "env", "algo.name", "algo.mode", "algo.num_workers", "algo.num_envs",
                      "env.id", "env.name", "schedule", "experiment", "suite"}
NON_FACTOR_PREFIXES = ("hydra.", "logger.", "quiet", "resume", "torch_threads", "log_interval",
                       "checkpoint_interval", "cpu_budget", "return_window")


class SkippedRunWarning(UserWarning):
    """A run directory (or W&B run) left out of the analysis; the message names it and says why."""


class BrokenRun(Exception):
    """Raised while reading a run that cannot be used; the message is the reason shown to the user."""


@dataclass(frozen=True)
class SkippedRun:
    run: str
    reason: str


@dataclass
class RunData:
    """One run as read from its source, before the runs are combined."""

    run_id: str
    meta: dict[str, Any]
    overrides: dict[str, str]
    solved_return: float | None
    frames: dict[str, pd.DataFrame]


@dataclass
class RunSet:
    """Tidy frames of the loaded runs: one row per run in ``runs``, one row per record row elsewhere."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    episodes: pd.DataFrame
    updates: pd.DataFrame
    swept: list[str] = field(default_factory=list)  # override keys that take several values
    skipped: list[SkippedRun] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The identifying columns added to every record frame."""
        return [*RUN_COLUMNS, *self.swept]

    @property
    def conditions(self) -> list[str]:
        """Columns that define one experimental condition; the runs of a condition differ only by seed."""
        return ["env_name", "schedule", "algo", "mode", "num_workers", *self.swept]

    def select(self, envs: Sequence[str] | None) -> RunSet:
        """The runs on the given envs (short name or gymnasium id); all runs when ``envs`` is empty."""
        if not envs:
            return self
        keep = set(self.runs.loc[self.runs.env_name.isin(envs) | self.runs.env_id.isin(envs), "run_id"])
        return RunSet(*(frame[frame.run_id.isin(keep)].reset_index(drop=True)
                        for frame in (self.runs, self.metrics, self.episodes, self.updates)),
                      swept=self.swept, skipped=self.skipped)


# --------------------------------------------------------------------------- local run directories
def find_run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) that hold a run record or part of one."""
    markers = ("meta.json", "metrics.csv")
    if any((root / marker).exists() for marker in markers):
        return [root]
    found = {path.parent for marker in markers for path in root.rglob(marker)}
    # W&B and Hydra keep their own files inside a run directory; none of them is a run.
    return sorted(path for path in found if not {"wandb", ".hydra", "checkpoints"} & set(path.parts))


def load_runs(roots: Path | str | Iterable[Path | str]) -> RunSet:
    """Load every run directory found under ``roots``; skip (and warn about) runs that cannot be used."""
    roots = [Path(roots)] if isinstance(roots, str | Path) else [Path(root) for root in roots]
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
    # Runs are named by their path below the roots' common parent: short, and unique across roots.
    base = Path(os.path.commonpath([root.resolve().parent for root in roots]))
    run_dirs = dict.fromkeys(run_dir.resolve() for root in roots for run_dir in find_run_dirs(root))
    return _read_each(((run_dir, run_dir.relative_to(base).as_posix()) for run_dir in run_dirs), read_run_dir)


def _read_each(sources: Iterable[tuple[Any, str]], read: Callable[[Any, str], RunData]) -> RunSet:
    """Read every ``(source, run_id)``; a :class:`BrokenRun` skips that run with its reason."""
    loaded, skipped = [], []
    for source, run_id in sources:
        try:
            loaded.append(read(source, run_id))
        except BrokenRun as reason:
            skipped.append(_skip(run_id, str(reason)))
    return combine(loaded, skipped)


def read_run_dir(run_dir: Path, run_id: str) -> RunData:
    """Read and check one run directory; raise :class:`BrokenRun` saying why it cannot be used."""
    meta = _read_meta(run_dir / "meta.json")
    frames = {name: read_record_csv(run_dir / f"{name}.csv", columns, key)
              for name, (columns, key) in RECORD_FILES.items()}
    if frames["metrics"].empty:
        raise BrokenRun("metrics.csv has a header but no rows")
    config = _read_yaml(run_dir / ".hydra" / "config.yaml")
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml") or meta.get("overrides") or []
    solved = (config or {}).get("env", {}).get("solved_return")
    return RunData(run_id, meta, parse_overrides(overrides), None if solved is None else float(solved), frames)


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise BrokenRun("meta.json is missing")
    try:
        meta = json.loads(path.read_text())
    except ValueError as error:
        raise BrokenRun(f"meta.json is truncated or not valid JSON ({error})") from error
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise BrokenRun(f"meta.json lacks {', '.join(missing)}")
    _check_status(meta)
    return meta


def _check_status(meta: dict[str, Any]) -> None:
    status = meta["status"]
    if status == "completed":
        return
    final_steps = (meta.get("final") or {}).get("env_steps")
    reasons = {
        "running": "status is 'running': still training, or killed without closing its record",
        "failed": f"the run failed: {meta.get('error') or 'no error recorded'}",
        "interrupted": f"the run was interrupted at {final_steps} env steps; resume it to include it",
    }
    raise BrokenRun(reasons.get(status, f"unknown status {status!r} in meta.json"))


def read_record_csv(path: Path, columns: Sequence[str], key: Sequence[str] | None) -> pd.DataFrame:
    """Read one run-record CSV, checking it against the contract; raise :class:`BrokenRun` if it breaks it."""
    name = path.name
    if not path.exists():
        raise BrokenRun(f"{name} is missing")
    text = path.read_text()
    if not text:
        raise BrokenRun(f"{name} is empty")
    header = next(csv.reader(io.StringIO(text)))
    missing = [column for column in columns if column not in header]
    if missing:
        raise BrokenRun(f"{name} header does not match the run record: no column {', '.join(missing)}")
    if not text.endswith("\n"):
        raise BrokenRun(f"{name} is truncated: its last line is incomplete")
    # The record writes numbers only, never quoted commas, so every line has exactly len(header) - 1 commas.
    lines = text.count("\n")
    if text.count(",") != lines * (len(header) - 1):
        bad = next(number for number, line in enumerate(text.splitlines(), start=1)
                   if line.count(",") != len(header) - 1)
        raise BrokenRun(f"{name} line {bad} has the wrong number of fields (truncated or corrupted)")
    frame = pd.read_csv(io.StringIO(text))
    repeated = frame.duplicated(subset=list(key) if key else None)
    if repeated.any():
        what = f"{', '.join(key)} " if key else ""
        raise BrokenRun(f"{name} has {int(repeated.sum())} duplicate rows (repeated {what}values)")
    return frame


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # the config only supplies the default threshold; the CSVs are the record


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["algo.lr=1e-3", "+x=1"]`` -> ``{"algo.lr": "1e-3", "x": "1"}``, experimental factors only."""
    parsed = {}
    for override in overrides:
        key, sep, value = str(override).lstrip("+~").partition("=")
        if sep and key not in META_OVERRIDE_KEYS and not key.startswith(NON_FACTOR_PREFIXES):
            parsed[key] = value
    return parsed


def _skip(run: str, reason: str) -> SkippedRun:
    warnings.warn(f"skipping run {run}: {reason}", SkippedRunWarning, stacklevel=3)
    return SkippedRun(run, reason)


# --------------------------------------------------------------------------- combining runs
def combine(loaded: list[RunData], skipped: list[SkippedRun]) -> RunSet:
    """Put the runs' frames together, each row labelled with its run's identifying columns."""
    rows = []
    for run in loaded:
        meta = run.meta
        rows.append({
            "run_id": run.run_id, "env_name": meta["env_name"], "env_id": meta["env_id"], "algo": meta["algo"],
            "mode": meta["mode"], "schedule": f"{meta['algo']}/{meta['mode']}",
            "num_workers": int(meta["num_workers"]), "num_envs": int(meta["num_envs"]), "seed": int(meta["seed"]),
            "solved_return": math.nan if run.solved_return is None else run.solved_return,
            "total_env_steps": meta.get("total_env_steps"), "start_time": meta.get("start_time"),
            "git_commit": meta.get("git_commit"), **run.overrides,
        })
    runs = pd.DataFrame(rows, columns=[*RUN_COLUMNS, "solved_return"] if not rows else None)
    override_keys = sorted({key for run in loaded for key in run.overrides})
    # A factor is swept when it varies within one env: a budget set per env (total_env_steps=5e5 for one
    # env, 1e6 for another) describes the env, not a condition to compare.
    swept = [key for key in override_keys
             if (runs[key].astype(str).groupby(runs["env_name"]).nunique(dropna=False) > 1).any()]
    label_columns = [*RUN_COLUMNS, *swept]
    frames = {}
    for name, (columns, _) in RECORD_FILES.items():
        parts = [run.frames[name].assign(run_id=run.run_id) for run in loaded if not run.frames[name].empty]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*columns, "run_id"])
        frames[name] = frame.merge(runs[label_columns], on="run_id", how="left")
    return RunSet(runs, frames["metrics"], frames["episodes"], frames["updates"], swept, skipped)


# --------------------------------------------------------------------------- Weights & Biases
def load_wandb(project: str, entity: str | None = None, filters: dict[str, Any] | None = None) -> RunSet:
    """Load the finished runs of a W&B project (needs network access and a W&B login).

    The mirror holds the metrics only, so ``episodes`` and ``updates`` come back empty and the figures
    that need them are skipped. Local run directories remain the source of truth.
    """
    import wandb

    api = wandb.Api()
    runs = api.runs(f"{entity}/{project}" if entity else project, filters=filters)
    return _read_each(((run, f"wandb:{run.path[-1]}:{run.name}") for run in runs), _read_wandb_run)


def _read_wandb_run(run: Any, run_id: str) -> RunData:
    if run.state != "finished":
        raise BrokenRun(f"W&B state is {run.state!r}, not 'finished'")
    config = dict(run.config)
    try:
        algo, env = config["algo"], config["env"]
        meta = {"status": "completed", "algo": algo["name"], "mode": algo["mode"], "env_id": env["id"],
                "env_name": env["name"], "num_workers": algo["num_workers"], "num_envs": algo["num_envs"],
                "seed": config["seed"], "total_env_steps": config.get("total_env_steps")}
    except (KeyError, TypeError) as error:
        raise BrokenRun(f"W&B config lacks {error}") from error
    history = pd.DataFrame(list(run.scan_history()))
    required, _ = RECORD_FILES["metrics"]
    missing = [column for column in required if column not in history.columns]
    if missing:
        raise BrokenRun(f"W&B history has no column {', '.join(missing)}")
    present = [column for column in METRIC_COLUMNS if column in history.columns]
    metrics = history[present].dropna(subset=["env_steps"]).sort_values("env_steps")
    frames = {"metrics": metrics.reset_index(drop=True),
              "episodes": pd.DataFrame(columns=list(EPISODE_COLUMNS)),
              "updates": pd.DataFrame(columns=list(UPDATE_COLUMNS))}
    solved = env.get("solved_return")
    return RunData(run_id, meta, {}, None if solved is None else float(solved), frames)
