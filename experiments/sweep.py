"""Sweeps that survive failure and can be re-run.

Each job of a Hydra multirun runs in a directory named by its overrides. Re-running a sweep into the
same ``hydra.sweep.dir`` skips the jobs whose ``meta.json`` says ``completed``, resumes the
interrupted (or killed) ones from their checkpoint (``last.pt``, or ``prev.pt`` when that one is
damaged), and reruns the failed ones from scratch (a job whose checkpoints are all damaged is marked
failed, so the next rerun starts it afresh). A failing job never stops the others: its record is marked
``failed`` and the sweep goes on. Every job appends its outcome to ``sweep_jobs.jsonl`` in the sweep
directory; at the end :class:`SweepSummary` prints the completed, skipped, resumed and failed jobs with
their overrides and errors, writes ``sweep_summary.json`` and ``sweep_summary.md`` beside them, and
exits with status 1 if any job failed.

A parallel launcher (Hydra's joblib launcher, ``hydra/launcher=joblib``) runs several jobs at once;
:func:`limit_parallel_jobs` caps how many so that the busy processes of all running jobs fit the CPU
budget (``cpu_budget``, all CPUs by default): parallel runs must not distort each other's wall-clock.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from algorithms import schedule_for
from experiments.composition import parse_overrides

if TYPE_CHECKING:  # planning a sweep must not load torch
    from experiments.record import RunRecord

JOB_LOG = "sweep_jobs.jsonl"
SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MARKDOWN = "sweep_summary.md"
OUTCOMES = ("completed", "resumed", "skipped", "failed", "interrupted", "busy")
# Set (to anything but 0 or empty) to see the traceback of a failed run, which is otherwise one line.
TRACEBACK_VARIABLE = "SVRL_TRACEBACK"


def busy_processes(cfg: DictConfig) -> int:
    """CPU-bound processes one run keeps busy (a multi-process trainer itself mostly waits on its workers)."""
    algo = cfg.algo
    if cfg.backend == "ray" and cfg.ray.address is not None:
        return 1  # the driver; the cluster places the workers where its CPUs are free
    per_worker = 1 + (algo.num_envs if algo.vector_backend == "async" else 0)
    return schedule_for(algo.name, algo.mode, cfg.backend).busy_processes(algo.num_workers, per_worker)


def limit_parallel_jobs(config: DictConfig, job_cfgs: list[DictConfig]) -> None:
    """Cap a parallel launcher's ``n_jobs`` so that concurrent runs never oversubscribe the CPU budget."""
    launcher = config.hydra.launcher
    if "n_jobs" not in launcher or not job_cfgs:  # the basic launcher runs one job at a time
        return
    cpus = os.cpu_count() or 1
    budget = config.cpu_budget or cpus
    widest = max(busy_processes(job_cfg) for job_cfg in job_cfgs)
    allowed = max(1, budget // widest)
    # joblib reads n_jobs=-1 as all CPUs, -2 as all but one, and so on.
    requested = launcher.n_jobs if launcher.n_jobs > 0 else cpus + 1 + launcher.n_jobs
    if requested > allowed:
        print(f"warning: hydra.launcher.n_jobs={launcher.n_jobs} would keep up to {requested * widest} processes "
              f"busy on a budget of {budget} CPUs; running {allowed} job(s) at a time so that parallel runs do "
              "not distort each other's wall-clock", file=sys.stderr)
        with read_write(config), open_dict(config):
            launcher.n_jobs = allowed
    if widest > budget:
        print(f"warning: a run of this sweep keeps {widest} processes busy on a budget of {budget} CPUs: its "
              "workers time-share cores, and its wall-clock measures that", file=sys.stderr)


def previous_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "meta.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def run_sweep_job(cfg: DictConfig, run_dir: Path, sweep_dir: Path, job_name: str, overrides: list[str],
                  train: Callable[[DictConfig, str, list[str]], RunRecord]) -> str:
    """Run, resume or skip one job of a sweep; record its outcome; never raise for a failed run."""
    from experiments.admission import RunDirectoryBusy, RunRefused
    from experiments.record import RunFailed, checkpoint_paths  # here: planning a sweep must not load torch

    restore_start_method()

    status = previous_status(run_dir)
    error = None
    if status == "completed":
        outcome = "skipped"
        print(f"skipped (already completed): {run_dir}", flush=True)
    else:
        # An interrupted or killed run continues from its checkpoint; a failed one starts afresh, and so does a
        # simulated one, which cannot resume but is deterministic: its rerun leaves the record it would have left.
        cfg.resume = (status in ("interrupted", "running") and cfg.backend != "simulated"
                      and any(path.exists() for path in checkpoint_paths(run_dir)))
        try:
            record = train(cfg, str(run_dir), overrides)
            outcome = {"completed": "resumed" if cfg.resume else "completed"}.get(record.status, record.status)
        except RunDirectoryBusy as busy:  # another sweep is running this job: it is that one's to finish
            outcome = "busy"
            print(f"skipped (another process is running it): {busy}", flush=True)
        except RunRefused as refusal:  # nothing written: the record still says how the job last ended
            outcome, error = "failed", str(refusal)
            print(f"error: {refusal}", file=sys.stderr, flush=True)
        except RunFailed as failure:  # the record has marked the run failed and said why in one line
            outcome, error = "failed", str(failure)
        except Exception as exception:  # the record has marked the run failed and printed why; the sweep goes on
            show_traceback_if_asked()
            outcome, error = "failed", f"{type(exception).__name__}: {exception}"
    entry = {"job": job_name, "overrides": overrides, "run_dir": str(run_dir), "outcome": outcome,
             "error": error, "time": time.time()}
    with (sweep_dir / JOB_LOG).open("a") as log:
        log.write(json.dumps(entry) + "\n")
    return outcome


def sweep_jobs(sweeper_params: Mapping[str, object] | None, arguments: Sequence[str]) -> list[list[str]]:
    """Each job's overrides, in launch order, as Hydra's basic sweeper expands them."""
    lines = [f"{key}={value}" for key, value in (sweeper_params or {}).items()] + list(arguments)
    overrides = parse_overrides(lines)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, max_batch_size=None) for job in batch]


def read_job_log(sweep_dir: Path, since: float) -> list[dict[str, Any]]:
    """The entries of the sweep's job log written since ``since`` (a job's line may be half written: left out)."""
    log = sweep_dir / JOB_LOG
    entries = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return [entry for entry in entries if entry["time"] >= since]


def duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(entries: list[dict[str, Any]], total: int, elapsed: float, job: str, outcome: str,
                  took: float | None) -> str:
    """``[done/total] outcome in 12s, ETA 4m05s: JOB``: jobs done (this invocation's lines of the job log, whichever
    process ran them) and the time left at the rate the jobs that ran finished (wall-clock per job, so a parallel
    launcher's jobs count at the rate they finish together; skipped jobs cost nothing and do not count)."""
    done, ran = len(entries), sum(entry["outcome"] != "skipped" for entry in entries)
    failed = sum(entry["outcome"] == "failed" for entry in entries)
    left = max(total - done, 0)
    eta = "all done" if not left else f"ETA {duration(elapsed / ran * left)}" if ran else "ETA unknown"
    return (f"[{done}/{total}{f', {failed} failed' if failed else ''}] {outcome}"
            f"{f' in {duration(took)}' if took is not None else ''}, {eta}: {job or '(no overrides)'}")


class SweepSummary(Callback):
    """Hydra callback: a line per finished job with the jobs done of the sweep's and an ETA; after a multirun, a
    summary of this invocation's jobs, and exit status 1 if any job failed.

    Jobs may run in other processes (a parallel launcher): each gets a copy of this callback, made after
    ``on_multirun_start``, and counts the jobs done from the sweep's job log, which every job appends to. The total
    is the sweep's planned jobs, as ``experiments.plan.ValidateBeforeLaunch`` left the sweep (it runs first)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        self.total = len(sweep_jobs(config.hydra.sweeper.get("params"), config.hydra.overrides.task))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not hasattr(self, "total"):  # a single run: no sweep to count
            return
        now, hydra = time.time(), config.hydra
        entries = read_job_log(Path(hydra.sweep.dir), self.started)
        run_dir = str(Path(hydra.runtime.output_dir))
        outcome = next((entry["outcome"] for entry in reversed(entries) if entry["run_dir"] == run_dir), "ended")
        took = now - self.job_started if hasattr(self, "job_started") else None
        print(progress_line(entries, self.total, now - self.started, hydra.job.override_dirname, outcome, took),
              flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        entries = read_job_log(sweep_dir, self.started)
        counts = {outcome: sum(entry["outcome"] == outcome for entry in entries) for outcome in OUTCOMES}
        lines = [f"# Sweep summary: {sweep_dir}", "",
                 ", ".join(f"{count} {outcome}" for outcome, count in counts.items()), "",
                 "| outcome | job | error |", "| --- | --- | --- |"]
        lines += [f"| {entry['outcome']} | {entry['job'] or '(no overrides)'} | {entry['error'] or ''} |"
                  for entry in sorted(entries, key=lambda entry: (entry["outcome"], entry["job"]))]
        (sweep_dir / SUMMARY_MARKDOWN).write_text("\n".join(lines) + "\n")
        (sweep_dir / SUMMARY_JSON).write_text(json.dumps({"counts": counts, "jobs": entries}, indent=2) + "\n")
        print("\n".join(lines[2:]) + f"\nSweep summary written to {sweep_dir / SUMMARY_MARKDOWN}", flush=True)
        if counts["failed"]:
            sys.exit(1)


def show_traceback_if_asked() -> None:
    """Print the exception being handled when ``SVRL_TRACEBACK`` asks for it; a run's failure is otherwise the one
    line its record prints."""
    if os.environ.get(TRACEBACK_VARIABLE, "0") not in ("", "0"):
        traceback.print_exc()


def restore_start_method() -> None:
    """Give multiprocessing back a start method that a spawned process can take. The joblib launcher runs jobs in
    loky processes, whose default start method is ``loky``: a worker process spawned from there is told to set it
    too and dies before it runs a line of ours (``cannot find context for 'loky'``)."""
    if multiprocessing.get_start_method(allow_none=True) not in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("spawn", force=True)
