"""Run directories (or a W&B project) -> tidy pandas frames.

A run directory is what ``experiments.record.RunRecord`` writes: ``meta.json``, ``metrics.csv``,
``episodes.csv``, ``updates.csv``, ``evals.csv`` (absent from runs recorded before evaluation existed) and,
when launched through Hydra, ``.hydra/config.yaml`` and ``.hydra/overrides.yaml``. :func:`load_runs` accepts
one run directory, a multirun sweep or any tree of them: a directory holding any of those files is a run, and
so is an empty folder among a sweep's runs (a job killed before it wrote anything). A run that cannot be
trusted is skipped with a :class:`SkippedRunWarning` naming the run and the reason, and listed in
:attr:`RunSet.skipped`, so that a report can count it: a missing, empty, unreadable, non-UTF-8, truncated or
corrupted file, a header that does not match the run-record contract, duplicate rows, a status other than
``completed``, and a run with the condition and seed of an earlier run (a copy, or a rerun), so that no seed
counts twice.

Every frame carries the run's identifying columns (:data:`RUN_COLUMNS` plus the swept overrides), so
that it can be grouped or plotted without joins. One of them is the run's ``clock`` (meta.json ``clock``): ``real``
when its ``wall_time`` columns are the machine's seconds, ``simulated`` when they are the virtual seconds of
simulated workers (``backend=simulated``), whose cost model the runs frame keeps in ``cost_model``. A run
recorded before meta.json named its clock ran on the machine: its clock is ``real``. Two runs on different clocks
are different experiments, never copies of each other; when the runs loaded mix clocks, ``clock`` is a condition.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from experiments.columns import (
    EPISODE_COLUMNS,
    EVAL_COLUMNS,
    IMPALA_DEFAULTS,
    METRIC_COLUMNS,
    OFF_POLICY_ALGOS,
    UPDATE_COLUMNS,
)

# Columns that identify a run and its experimental condition in every frame.
RUN_COLUMNS = ("run_id", "env_name", "env_id", "algo", "mode", "schedule", "num_workers", "num_envs", "seed",
               "clock")
# What a run's wall_time counts (meta.json "clock"): the machine's seconds, or simulated workers' virtual ones.
CLOCKS = ("real", "simulated")
NOT_APPLICABLE = "n/a"  # a swept setting that the run's algorithm does not have
# The meta.json fields analysis reads, with their types; all but the status name a run's condition and seed.
REQUIRED_META = {"status": str, "algo": str, "mode": str, "env_id": str, "env_name": str, "num_workers": int,
                 "num_envs": int, "seed": int}
CONDITION_AND_SEED = tuple(key for key in REQUIRED_META if key != "status")
# The run-record files, the columns of the record's contract that analysis reads (a header without one
# of them does not match; columns added later to the record are fine, as the contract allows) and the
# columns that identify one row. A repeated key means rows were appended twice, e.g. by a resume that did not
# truncate. Episodes have none (None): two envs of one worker may end episodes of one length and return at one step.
RECORD_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "metrics": (("env_steps", "wall_time", "return_mean"), ("env_steps",)),
    "episodes": (("env_steps", "wall_time", "worker", "return", "length"), None),
    "updates": (("update", "wall_time", "env_steps", "worker", "staleness", "applied", "wait_time"), ("update",)),
    "evals": (("env_steps", "wall_time", "episodes", "return_mean", "deterministic", "returns", "lengths"),
              ("env_steps",)),
}
# evals.csv came with evaluation: a run recorded before it has none, and one with evaluation off
# (eval.episodes=0) only its header. Either way the run has no evaluations, which only --metric eval needs.
# Its ``returns`` and ``lengths`` list each evaluation episode's value, space-separated.
OPTIONAL_RECORD_FILES = {"evals"}
EPISODE_LISTS = ("returns", "lengths")
# Override keys already described by a meta.json column, and keys that are not experimental factors.
META_OVERRIDE_KEYS = {"seed", "algo", "env", "algo.name", "algo.mode", "algo.num_workers", "algo.num_envs",
                      "env.id", "env.name", "schedule", "experiment", "suite"}
NON_FACTOR_PREFIXES = ("hydra.", "logger.", "quiet", "resume", "torch_threads", "log_interval", "blowup_",
                       "checkpoint_interval", "cpu_budget", "return_window")
# A directory holding any of these is a run (Hydra writes .hydra/ before the record exists); a directory
# holding any of SWEEP_FILES is a sweep (Hydra's multirun, experiments.sweep). What a run keeps in
# RUN_SUBFOLDERS is never a run of its own.
RUN_FILES = {"meta.json", "events.jsonl", ".hydra", *(f"{name}.csv" for name in RECORD_FILES)}
SWEEP_FILES = {"multirun.yaml", "sweep_jobs.jsonl", "sweep_summary.json"}
RUN_SUBFOLDERS = {"wandb", ".hydra", "checkpoints"}


class SkippedRunWarning(UserWarning):
    """A run directory (or W&B run) left out of the analysis; the message names it and says why."""


class BrokenRun(Exception):
    """Raised while reading a run that cannot be used; the message is the reason shown to the user."""


@dataclass(frozen=True)
class SkippedRun:
    run: str
    reason: str
    kept: str | None = None  # for a copy or a rerun of another run: that run, analysed in its place


@dataclass
class RunData:
    """One run as read from its source, before the runs are combined."""

    run_id: str
    meta: dict[str, Any]
    overrides: dict[str, str]
    solved_return: float | None
    frames: dict[str, pd.DataFrame]
    config: dict[str, Any] | None = None  # the experimental factors of the resolved config, flattened
    no_evaluations: str | None = None  # why the run has no evaluations; None when it has some
    clock: str = "real"  # one of CLOCKS

    @property
    def cost_model(self) -> dict[str, Any] | None:
        """The simulated workers' cost model (the ``sim.*`` settings) its virtual seconds come from; None for a
        run on the real clock, or a simulated one that did not record it."""
        cost_model = self.meta.get("cost_model")
        return cost_model if self.clock == "simulated" and isinstance(cost_model, dict) else None


@dataclass
class RunSet:
    """Tidy frames of the loaded runs: one row per run in ``runs``, one row per record row elsewhere."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    episodes: pd.DataFrame
    updates: pd.DataFrame
    evals: pd.DataFrame
    swept: list[str] = field(default_factory=list)  # override keys that take several values
    skipped: list[SkippedRun] = field(default_factory=list)
    no_evaluations: dict[str, str] = field(default_factory=dict)  # run -> why it has no evaluations

    @property
    def labels(self) -> list[str]:
        """The identifying columns added to every record frame."""
        return [*RUN_COLUMNS, *self.swept]

    @property
    def conditions(self) -> list[str]:
        """Columns that define one experimental condition; the runs of a condition differ only by seed. The clock
        is one when the runs mix clocks: a simulated run's seeds are never pooled with a real run's."""
        clock = ["clock"] if self.runs["clock"].nunique() > 1 else []
        return ["env_name", "schedule", "algo", "mode", "num_workers", *clock, *self.swept]

    def select(self, envs: Sequence[str] | None) -> RunSet:
        """The runs on the given envs (short name or gymnasium id); all runs when ``envs`` is empty."""
        if not envs:
            return self
        keep = set(self.runs.loc[self.runs.env_name.isin(envs) | self.runs.env_id.isin(envs), "run_id"])
        return self.only(keep)

    def only(self, keep: set[str], left_out: Iterable[SkippedRun] = ()) -> RunSet:
        """The runs in ``keep``; ``left_out`` lists runs dropped for a reason, to be counted with ``skipped``."""
        frames = {name: getattr(self, name) for name in ("runs", *RECORD_FILES)}
        return replace(self, **{name: frame[frame.run_id.isin(keep)].reset_index(drop=True)
                                for name, frame in frames.items()},
                       skipped=[*self.skipped, *left_out],
                       no_evaluations={run: why for run, why in self.no_evaluations.items() if run in keep})


# --------------------------------------------------------------------------- local run directories
def find_run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) that hold a run record or part of one, and the empty
    folders among a sweep's runs: a job killed before it wrote anything is counted, not lost."""
    if RUN_FILES & {path.name for path in root.iterdir()}:
        return [root]
    runs, sweeps = set(), set()
    for folder, subfolders, files in os.walk(root):
        names = {*subfolders, *files}
        if RUN_FILES & names:
            runs.add(Path(folder))
        if SWEEP_FILES & names:
            sweeps.add(Path(folder))
        subfolders[:] = [name for name in subfolders if name not in RUN_SUBFOLDERS]
    sweeps |= {run.parent for run in runs}
    # A folder with files but no record file (a report's output, figures, notes) is not a run.
    empty = {folder for sweep in sweeps for folder in sweep.iterdir() if folder.is_dir() and folder not in runs
             and not folder.name.startswith(".") and not _holds_a_file(folder)}
    return sorted(runs | empty)


def _holds_a_file(folder: Path) -> bool:
    return any(path.is_file() for path in folder.rglob("*"))


def load_runs(roots: Path | str | Iterable[Path | str]) -> RunSet:
    """Load every run directory found under ``roots``; skip (and warn about) runs that cannot be used."""
    root_dirs = [Path(roots)] if isinstance(roots, str | Path) else [Path(root) for root in roots]
    for root in root_dirs:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory: give run directories or trees of them")
    # Runs are named by their path below the roots' common parent: short, and unique across roots.
    base = Path(os.path.commonpath([root.resolve().parent for root in root_dirs]))
    run_dirs = dict.fromkeys(run_dir.resolve() for root in root_dirs for run_dir in find_run_dirs(root))
    return _read_each(((run_dir, run_dir.relative_to(base).as_posix()) for run_dir in run_dirs), read_run_dir)


def _read_each(sources: Iterable[tuple[Any, str]], read: Callable[[Any, str], RunData]) -> RunSet:
    """Read every ``(source, run_id)``; a :class:`BrokenRun` skips that run with its reason, and so does
    a repeat of an earlier run."""
    loaded, broken = [], []
    for source, run_id in sources:
        try:
            loaded.append(read(source, run_id))
        except BrokenRun as reason:
            broken.append(SkippedRun(run_id, str(reason)))
    kept, repeats = _drop_repeated_runs(loaded)
    skipped = broken + repeats
    for skip in skipped:  # attributed to the caller of load_runs or load_wandb
        warnings.warn(f"skipping run {skip.run}: {skip.reason}", SkippedRunWarning, stacklevel=3)
    return combine(kept, skipped)


def read_run_dir(run_dir: Path, run_id: str) -> RunData:
    """Read and check one run directory; raise :class:`BrokenRun` saying why it cannot be used."""
    if not _holds_a_file(run_dir):
        raise BrokenRun("the directory is empty: a job killed before it wrote its record, or a stray folder")
    meta = _read_meta(run_dir)
    frames = {name: read_record_csv(run_dir / f"{name}.csv", columns, key)
              for name, (columns, key) in RECORD_FILES.items() if name not in OPTIONAL_RECORD_FILES}
    if frames["metrics"].empty:
        raise BrokenRun("metrics.csv has a header but no rows")
    frames["evals"], no_evaluations = _read_evals(run_dir)
    config = _read_yaml(run_dir, ".hydra/config.yaml", dict)
    overrides = _read_yaml(run_dir, ".hydra/overrides.yaml", list) or meta.get("overrides") or []
    if not isinstance(overrides, list):
        raise BrokenRun(f"meta.json overrides is {overrides!r}, not a list")
    factors = None if config is None else _factors(config)
    return RunData(run_id, meta, parse_overrides(overrides), _solved_return(factors, ".hydra/config.yaml"),
                   frames, factors, no_evaluations, _clock(meta, "meta.json"))


def _read_evals(run_dir: Path) -> tuple[pd.DataFrame, str | None]:
    """The run's evaluations, each episode list a tuple of floats, and why there are none when there are none."""
    columns, key = RECORD_FILES["evals"]
    if not (run_dir / "evals.csv").exists():
        return pd.DataFrame(columns=list(EVAL_COLUMNS)), "no evals.csv (recorded before runs were evaluated)"
    frame = read_record_csv(run_dir / "evals.csv", columns, key, text_columns=("deterministic", *EPISODE_LISTS))
    if frame.empty:
        return frame, "evals.csv has a header but no rows (evaluation off: eval.episodes=0)"
    frame["deterministic"] = _flags(frame["deterministic"], "evals.csv")
    for column in EPISODE_LISTS:
        frame[column] = _episode_lists(frame, column)
    return frame, None


def _flags(cells: pd.Series, name: str) -> pd.Series:
    """A column the record writes as Python's True or False."""
    words = cells.astype(str)
    bad = ~words.isin(["True", "False"])
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise BrokenRun(f"{name} line {row + 2} column {cells.name} is not True or False: {cells.iloc[row]!r}")
    return words.eq("True")


def _episode_lists(frame: pd.DataFrame, column: str) -> list[tuple[float, ...]]:
    """Each row's space-separated list of ``episodes`` numbers, checked, as a tuple of floats."""
    lists = []
    for row, (cell, episodes) in enumerate(zip(frame[column], frame["episodes"], strict=True)):
        try:
            values = tuple(float(value) for value in cell.split())
        except (AttributeError, ValueError):  # AttributeError: an empty cell (NaN)
            values = None
        if values is None or len(values) != episodes:
            raise BrokenRun(f"evals.csv line {row + 2} column {column} is not a list of {episodes:g} numbers: "
                            f"{cell!r}")
        lists.append(values)
    return lists


def _read_text(path: Path, name: str) -> str:
    """The text of a run's file; raise :class:`BrokenRun` when it is missing, unreadable or not text."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise BrokenRun(f"{name} is missing") from error
    except OSError as error:
        raise BrokenRun(f"{name} cannot be read ({error.strerror or error})") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BrokenRun(f"{name} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})") from error
    if "\0" in text:
        # A file zero-filled up to its size is what some filesystems leave after a crash.
        raise BrokenRun(f"{name} holds NUL bytes (the first at offset {data.index(0)}): binary, or zero-filled "
                        "by a crash")
    return text


def _read_meta(run_dir: Path) -> dict[str, Any]:
    text = _read_text(run_dir / "meta.json", "meta.json")
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise BrokenRun(f"meta.json is truncated or not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise BrokenRun(f"meta.json holds a {type(meta).__name__}, not a JSON object")
    _check_fields(meta, "meta.json")
    _check_status(meta)
    return meta


def _check_fields(meta: dict[str, Any], source: str) -> None:
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise BrokenRun(f"{source} lacks {', '.join(missing)}")
    for key, kind in REQUIRED_META.items():
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, kind):  # JSON true is no worker count
            raise BrokenRun(f"{source} {key} is {value!r}, not {'an integer' if kind is int else 'a string'}")


def _clock(meta: dict[str, Any], source: str) -> str:
    """The run's clock; ``real`` for a run recorded before meta.json named it, which ran on the machine."""
    clock = meta.get("clock", "real")
    if clock not in CLOCKS:
        raise BrokenRun(f"{source} clock is {clock!r}, not {' or '.join(map(repr, CLOCKS))}")
    return clock


def _check_status(meta: dict[str, Any]) -> None:
    status = meta["status"]
    if status == "completed":
        return
    final = meta.get("final")
    final_steps = final.get("env_steps") if isinstance(final, dict) else None
    reasons = {
        "running": "status is 'running': still training, or killed without closing its record",
        "failed": f"the run failed: {meta.get('error') or 'no error recorded'}",
        "interrupted": f"the run was interrupted at {final_steps} env steps; resume it to include it",
    }
    raise BrokenRun(reasons.get(status, f"unknown status {status!r} in meta.json"))


def read_record_csv(path: Path, columns: Sequence[str], key: Sequence[str] | None,
                    text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read one run-record CSV, checking it against the contract; raise :class:`BrokenRun` if it breaks it.

    Every column holds numbers except ``text_columns``, which are read as text for the caller to check.
    """
    name = path.name
    text = _read_text(path, name)
    if not text:
        raise BrokenRun(f"{name} is empty")
    try:
        header = next(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise BrokenRun(f"{name} header is not CSV ({error})") from error
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
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=dict.fromkeys(text_columns, str) or None)
    except ValueError as error:  # pandas' ParserError, e.g. a stray quote
        raise BrokenRun(f"{name} cannot be parsed as CSV ({error})") from error
    _check_numbers(frame.drop(columns=list(text_columns)), name)
    repeated = frame.duplicated(subset=list(key)) if key else pd.Series(False, index=frame.index)
    if repeated.any():
        raise BrokenRun(f"{name} has {int(repeated.sum())} duplicate rows (repeated {', '.join(key or ())} values)")
    return frame


def _check_numbers(frame: pd.DataFrame, name: str) -> None:
    """The record writes numbers only (an empty cell is NaN): any other text is corruption."""
    for column in frame.select_dtypes(exclude="number").columns:
        cells = frame[column]
        not_numbers = cells.notna() & pd.to_numeric(cells, errors="coerce").isna()
        if not_numbers.any():
            row = int(not_numbers.to_numpy().argmax())
            raise BrokenRun(f"{name} line {row + 2} column {column} is not a number: {cells.iloc[row]!r}")


def _read_yaml(run_dir: Path, name: str, kind: type) -> Any:
    """A Hydra file of the run (None when absent), which must hold a ``kind``; raise :class:`BrokenRun` if not."""
    path = run_dir / name
    if not path.exists():
        return None
    try:
        value = yaml.safe_load(_read_text(path, name))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BrokenRun(f"{name} is not valid YAML ({getattr(error, 'problem', None) or error}{where})") from error
    if value is not None and not isinstance(value, kind):
        raise BrokenRun(f"{name} holds a {type(value).__name__}, not a {'mapping' if kind is dict else 'list'}")
    return value


def _factors(config: dict[str, Any]) -> dict[str, Any]:
    """The config flattened to dotted keys, without the keys that are not experimental factors."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": leaf for inner, leaf in _factors(value).items()})
        else:
            flat[str(key)] = value
    return {key: value for key, value in flat.items() if not key.startswith(NON_FACTOR_PREFIXES)}


def _solved_return(factors: dict[str, Any] | None, source: str) -> float | None:
    solved = (factors or {}).get("env.solved_return")
    if solved is None:
        return None
    if isinstance(solved, bool) or not isinstance(solved, int | float):
        raise BrokenRun(f"{source} env.solved_return is {solved!r}, not a number")
    return float(solved)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["algo.lr=1e-3", "+x=1"]`` -> ``{"algo.lr": "1e-3", "x": "1"}``, experimental factors only."""
    parsed = {}
    for override in overrides:
        key, sep, value = str(override).lstrip("+~").partition("=")
        if sep and key not in META_OVERRIDE_KEYS and not key.startswith(NON_FACTOR_PREFIXES):
            parsed[key] = value
    return parsed


# --------------------------------------------------------------------------- repeated runs
def _drop_repeated_runs(runs: list[RunData]) -> tuple[list[RunData], list[SkippedRun]]:
    """Keep the first run (by path) of each condition and seed; skip the later ones, which would count
    that seed twice: copies of it, reruns of it, or runs of a config that the condition does not tell apart."""
    kept, skipped = [], []
    earlier_runs: dict[tuple[Any, ...], list[RunData]] = {}
    for run in runs:
        identity = (*(run.meta[key] for key in CONDITION_AND_SEED), run.clock, *sorted(run.overrides.items()))
        earlier = earlier_runs.setdefault(identity, [])
        if earlier:
            skipped.append(SkippedRun(run.run_id, _repeat_reason(run, earlier), kept=earlier[0].run_id))
        else:
            kept.append(run)
        earlier.append(run)
    return kept, skipped


def _repeat_reason(run: RunData, earlier: list[RunData]) -> str:
    twin = next((other for other in earlier if _same_record(run, other)), None)
    if twin is not None:
        return f"duplicate of {twin.run_id} (a copy: same condition, seed and record)"
    first = earlier[0]
    counted_once = f"only {first.run_id} is analysed, so that seed {run.meta['seed']} counts once"
    differing = _config_differences(first, run)
    if differing:
        assert first.config is not None and run.config is not None  # differing configs: both have one
        shown = ", ".join(f"{key} {first.config.get(key, 'unset')} vs {run.config.get(key, 'unset')}"
                          for key in differing[:3])
        more = ", ..." if len(differing) > 3 else ""
        return (f"same condition and seed as {first.run_id} but another .hydra/config.yaml ({shown}{more}) that "
                f"no override names, so the analysis cannot tell them apart; {counted_once}")
    return f"same config and seed as {first.run_id}, different content (a rerun?); {counted_once}"


def _config_differences(run: RunData, other: RunData) -> list[str]:
    """Keys whose values differ between two runs' configs (none when either has no config to compare)."""
    if run.config is None or other.config is None:
        return []
    keys = run.config.keys() | other.config.keys()
    return sorted(key for key in keys if run.config.get(key) != other.config.get(key))


def _same_record(run: RunData, other: RunData) -> bool:
    return run.no_evaluations == other.no_evaluations and all(
        run.frames[name].equals(other.frames[name]) for name in RECORD_FILES)


# --------------------------------------------------------------------------- combining runs
def combine(loaded: list[RunData], skipped: list[SkippedRun]) -> RunSet:
    """Put the runs' frames together, each row labelled with its run's identifying columns."""
    override_keys = sorted({key for run in loaded for key in run.overrides})
    rows = []
    for run in loaded:
        meta = run.meta
        rows.append({
            "run_id": run.run_id, "env_name": meta["env_name"], "env_id": meta["env_id"], "algo": meta["algo"],
            "mode": meta["mode"], "schedule": f"{meta['algo']}/{meta['mode']}",
            "num_workers": int(meta["num_workers"]), "num_envs": int(meta["num_envs"]), "seed": int(meta["seed"]),
            "clock": run.clock, "cost_model": run.cost_model,
            "solved_return": math.nan if run.solved_return is None else run.solved_return,
            "total_env_steps": meta.get("total_env_steps"), "start_time": meta.get("start_time"),
            "git_commit": meta.get("git_commit"), "eval_interval": _eval_interval(run.config),
            **_override_values(run, override_keys),
        })
    runs = pd.DataFrame(rows, columns=[*RUN_COLUMNS, "cost_model", "solved_return"] if not rows else None)
    # A factor is swept when it varies within one env: a budget set per env (total_env_steps=5e5 for one
    # env, 1e6 for another) describes the env, not a condition to compare.
    swept = [key for key in override_keys
             if (runs[key].astype(str).groupby(runs["env_name"]).nunique(dropna=False) > 1).any()]
    for key in swept:
        runs[key] = _numeric_if_all(runs[key])
    label_columns = [*RUN_COLUMNS, *swept]
    frames = {}
    for name, (columns, _) in RECORD_FILES.items():
        parts = [run.frames[name].assign(run_id=run.run_id) for run in loaded if not run.frames[name].empty]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*columns, "run_id"])
        frames[name] = frame.merge(runs[label_columns], on="run_id", how="left")
    no_evaluations = {run.run_id: run.no_evaluations for run in loaded if run.no_evaluations}
    return RunSet(runs, **frames, swept=swept, skipped=skipped, no_evaluations=no_evaluations)


def _numeric_if_all(values: pd.Series) -> pd.Series:
    """A swept factor's values as numbers when every one is a number, so that conditions sort 4 before 16; as
    they are otherwise (``0,4,16`` but also ``none``: strings)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any():
        return values
    return numbers.astype(int) if values.astype(str).str.fullmatch(r"-?\d+").all() else numbers


def _override_values(run: RunData, keys: Iterable[str]) -> dict[str, str]:
    """The run's value of each override key of the runs loaded: its own override, else its config's value (a run
    that did not override a key, e.g. ``backend`` beside runs given ``backend=simulated``, ran with the config's),
    else ``unset``: a condition's value is never missing, which would make it no group at all. An IMPALA setting
    of another algorithm's run (``algo.correction`` of an a3c run beside impala runs) does not apply: ``n/a``."""
    config = run.config or {}

    def value(key: str) -> str:
        if key in run.overrides:
            return run.overrides[key]
        if key.removeprefix("algo.") in IMPALA_DEFAULTS and run.meta.get("algo") not in (None, *OFF_POLICY_ALGOS):
            return NOT_APPLICABLE
        return str(config[key]) if key in config else "unset"

    return {key: value(key) for key in keys}


def _eval_interval(config: dict[str, Any] | None) -> float:
    """The config's ``eval.interval`` in env steps: infinite when null (only the final evaluation), NaN when the
    run has no config to say."""
    if config is None or "eval.interval" not in config:
        return math.nan
    interval = config["eval.interval"]
    if interval is None:
        return math.inf
    return float(interval) if isinstance(interval, int | float) and not isinstance(interval, bool) else math.nan


# --------------------------------------------------------------------------- Weights & Biases
def load_wandb(project: str, entity: str | None = None, filters: dict[str, Any] | None = None) -> RunSet:
    """Load the finished runs of a W&B project (needs network access and a W&B login).

    The mirror holds the metrics only, so ``episodes``, ``updates`` and ``evals`` come back empty and the
    figures that need them are skipped. Local run directories remain the source of truth.
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
                "seed": config["seed"], "total_env_steps": config.get("total_env_steps"),
                # The mirror's config is the run's whole config: its backend says which clock wall_time counted.
                "clock": "simulated" if config.get("backend") == "simulated" else "real",
                "cost_model": config.get("sim")}
    except (KeyError, TypeError) as error:
        raise BrokenRun(f"W&B config lacks {error}") from error
    _check_fields(meta, "W&B config")
    history = pd.DataFrame(list(run.scan_history()))
    required, _ = RECORD_FILES["metrics"]
    missing = [column for column in required if column not in history.columns]
    if missing:
        raise BrokenRun(f"W&B history has no column {', '.join(missing)}")
    present = [column for column in METRIC_COLUMNS if column in history.columns]
    metrics = history[present].dropna(subset=["env_steps"]).sort_values("env_steps")
    frames = {"metrics": metrics.reset_index(drop=True),
              "episodes": pd.DataFrame(columns=list(EPISODE_COLUMNS)),
              "updates": pd.DataFrame(columns=list(UPDATE_COLUMNS)),
              "evals": pd.DataFrame(columns=list(EVAL_COLUMNS))}
    factors = _factors(config)
    return RunData(run_id, meta, {}, _solved_return(factors, "W&B config"), frames, factors,
                   "loaded from W&B, whose mirror holds the metrics only", _clock(meta, "W&B config"))
