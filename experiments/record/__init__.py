"""The run record: the contract between training and analysis.

A run directory holds ``meta.json`` (status and provenance), ``metrics.csv`` (one row per logging
interval), ``episodes.csv`` (every finished episode), ``updates.csv`` (every applied or dropped
gradient, with its policy versions and staleness), ``evals.csv`` (every evaluation, see
``experiments.record.evaluations``), ``events.jsonl`` (resumes, worker failures and
restarts, interrupts), ``checkpoints/last.pt`` (and ``prev.pt``, the one before) and, unless disabled,
``wandb/`` mirroring the metrics. The CSV files' columns are listed in ``experiments.columns``.

Local files are the source of truth. They are appended in whole lines and flushed as the run goes, so a
killed run keeps everything up to its last interval, and no failure (a full disk included) leaves a torn
line or ``meta.json`` at ``running``. Algorithms talk to the record only through ``episode``, ``update``,
``event``, the evaluation calls and the checkpoint calls (see ``algorithms.infra.messages.Record``); the record
derives every aggregate. docs/design.md says how it keeps the metrics grid, resumes and fails.

:class:`RunRecord` is the one object training talks to; it delegates to a module per concern: ``files`` (the line
files and the record's fault), ``meta`` (meta.json), ``clock`` (training time), ``metrics`` (the counters and the
metrics grid), ``checkpoints``, ``evaluations``, ``blowup``, ``wandb_run`` (the W&B mirror), ``progress`` (the
terminal) and ``signals``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from algorithms.infra.checkpoint import Checkpoint, CheckpointRefused, dropped_partial_episodes
from algorithms.infra.messages import EvalSnapshot
from experiments.admission import Admission, admit, describe_changes, unlock
from experiments.columns import EVAL_COLUMNS, METRIC_COLUMNS
from experiments.record.blowup import BlowupWatch
from experiments.record.checkpoints import Checkpoints, checkpoint_paths
from experiments.record.clock import TrainingClock
from experiments.record.evaluations import Evaluations, Row
from experiments.record.files import Repair, ResumePoint, RunFiles, WriteGuard
from experiments.record.meta import MetaFile, RunFailed, git_state, initial_meta, now_iso, outcome, package_versions
from experiments.record.metrics import MetricsGrid
from experiments.record.progress import ProgressBar, summary_line
from experiments.record.signals import StopSignals
from experiments.record.wandb_run import WandbMirror

__all__ = ["RECORDED", "RunFailed", "RunRecord", "checkpoint_paths", "git_state", "package_versions", "was_recorded"]

# The note on an exception that ended a run: the record says how it ended, and its summary line printed why.
RECORDED = "the run record says how the run ended; its summary line gives the reason"


def was_recorded(error: BaseException) -> bool:
    """Whether ``error`` ended a run whose record and summary line say so: a command line prints nothing more."""
    return RECORDED in getattr(error, "__notes__", ())


class RunRecord:
    """Opened as a context manager around one training run; see the module docstring for the files."""

    def __init__(self, run_dir: str | Path, cfg: DictConfig, overrides: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.overrides = list(overrides or [])
        self.stop_requested = False
        self.resume_state: Checkpoint | None = None
        self.status = "running"
        self.error: str | None = None
        self.guard = WriteGuard()
        self.files = RunFiles(self.run_dir, self.guard)
        self.meta = MetaFile(self.run_dir, self.guard)
        self.grid = MetricsGrid(cfg)  # the counters, restored from the checkpoint when resuming
        self.clock = TrainingClock()
        self.checkpoints = Checkpoints(self.run_dir, cfg.checkpoint_interval)
        self.wandb = WandbMirror(cfg, self.run_dir, self.meta)
        self.progress = ProgressBar(cfg)
        self.signals = StopSignals()
        self._blowups = (BlowupWatch(cfg.blowup_factor, cfg.blowup_window, cfg.blowup_floor) if cfg.blowup_factor
                         else None)
        self._evaluations: Evaluations | None = None
        self._evaluation_error: Exception | None = None  # a failed evaluation fails the run
        self._last_eval: dict[str, Any] | None = None
        self.admission = Admission()
        self._repairs: list[Repair] = []

    @property
    def env_steps(self) -> int:
        return self.grid.env_steps

    @property
    def updates(self) -> int:
        return self.grid.updates

    @property
    def policy_version(self) -> int:
        return self.grid.policy_version

    @property
    def wandb_run(self) -> Any:
        return self.wandb.run

    # ----------------------------------------------------------------- opening and closing
    def __enter__(self) -> RunRecord:
        self.admission = admit(self.run_dir, self.cfg)  # RunRefused before anything is written
        self.meta.fields = initial_meta(self.cfg, self.overrides)
        try:
            self._open()
        except BaseException as error:
            self._end(error)
            self._raise_fault(error)
            error.add_note(RECORDED)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._end(exc)
        self._raise_fault(exc)
        if exc is not None:
            exc.add_note(RECORDED)
        # A KeyboardInterrupt has been handled: the run is recorded as interrupted.
        return isinstance(exc, KeyboardInterrupt)

    def _open(self) -> None:
        self.checkpoints.create_dir()
        resuming = self._resume()
        if resuming:
            self.meta.add_resume(self.env_steps, self.overrides, self.admission)
        else:
            self.checkpoints.discard()
        self.files.open(append=resuming)
        self._evaluations = Evaluations(self.cfg, self.env_steps)
        self.meta.reserve()
        self.meta.write()
        if resuming:
            self._log_resume()
        else:
            self.event("started", env_steps=self.env_steps)
        if resuming and self.resume_state is not None and (dropped := dropped_partial_episodes(self.resume_state)):
            self.event("partial_episodes_dropped", env_steps=self.env_steps, episodes=dropped,
                       reason="the envs' state could not be saved in the checkpoint; they start fresh episodes")
        self.wandb.open()
        self.progress.open(self.env_steps)
        self.signals.install(self._request_stop)
        self.clock.restart()

    def _resume(self) -> bool:
        """Continue from the latest checkpoint that can be read, when ``resume=true`` and there is one; whether it
        does. The run's rows after the checkpoint are dropped (the resumed run writes them again)."""
        if not self.cfg.resume:
            return False
        if not self.checkpoints.exist():
            print(f"resume=true but {self.checkpoints.last} does not exist: starting from scratch", file=sys.stderr)
            return False
        self.meta.carry_over()
        state = self.checkpoints.load()
        saved = state.pop("record")
        self.resume_state = state
        self.grid.restore(saved)
        self.clock.offset = saved["wall_time"]
        self.wandb.resume_id = saved.get("wandb_id")
        self.checkpoints.schedule_after(self.env_steps)
        self._repairs = self.files.drop_rows_after(ResumePoint(self.grid.last_row[0], self.env_steps, self.updates))
        return True

    def _log_resume(self) -> None:
        """The ``resumed`` event with the config changes the resume was admitted with, then each torn line it cut
        off (``record_repaired``), said on the terminal too."""
        admission = self.admission
        self.event("resumed", env_steps=self.env_steps, config_checked=admission.checked,
                   harmless_changes=admission.harmless, accepted_changes=admission.accepted)
        if admission.accepted:
            print(f"warning: resuming with a changed experiment (resume_accept_changes=true): "
                  f"{describe_changes(admission.accepted)}", file=sys.stderr, flush=True)
        for repair in self._repairs:
            self.event("record_repaired", env_steps=self.env_steps, **vars(repair))
            print(f"warning: {repair.file} ended in a torn line ({repair.bytes_cut} bytes), cut off on resume: "
                  f"{repair.rows_restored} row restored (written again from the checkpoint on), {repair.rows_lost} "
                  "lost", file=sys.stderr, flush=True)

    def _end(self, exc: BaseException | None) -> None:
        """Record how the run ended (last rows, end event, meta.json), then close W&B and the progress bar and give
        the directory's lock back."""
        self.signals.restore()
        try:
            if self.files.logs:
                self._write_last_rows(completed=self._outcome(exc)[0] == "completed")
            self.status, self.error = self._outcome(exc)
            self._log_end(exc)
            self.meta.write_end(self.status, self.error, self.summary())
        finally:
            self.progress.close()
            self.wandb.close(self.status)
            unlock(self.run_dir)
        print(self.summary_line(), flush=True)

    def _write_last_rows(self, completed: bool) -> None:
        """The evaluations' last rows and the metrics row due; a failure becomes the run's fault, for meta.json must
        still say how the run ended."""
        try:
            with contextlib.suppress(OSError), self.guard.writing():
                self._close_evaluations(completed)
                self._write_due_row()
                # A completed run's last row is its end, even between two rows of the grid; a stopped or
                # failed one ends at its last grid row (a resume carries the interval on from the checkpoint).
                if completed and self.env_steps > self.grid.last_row[0]:
                    self._write_metrics_row(self.wall_time())
                self.files.flush()
        except Exception as error:  # whatever breaks the last rows
            self.guard.keep(error)

    def _outcome(self, exc: BaseException | None) -> tuple[str, str | None]:
        """Status and error: the record's own failed write first, then what the run raised, then a stop."""
        failure = self.guard.fault or (None if isinstance(exc, KeyboardInterrupt) else exc) or self._evaluation_error
        return outcome(failure, stopped=exc is not None or self.stop_requested)

    def _log_end(self, exc: BaseException | None) -> None:
        """The end event, then every file closed; on a full disk meta.json still says how the run ended."""
        try:
            self.files.write_end_event(self._event_entry(self.status, env_steps=self.env_steps, error=self.error))
        except OSError as error:
            if self.guard.fault is None:
                self.guard.fault = error
                self.status, self.error = self._outcome(exc)
        finally:
            self.files.close()

    def _raise_fault(self, exc: BaseException | None) -> None:
        """A failed write of the record's own fails the run with that one line rather than its traceback."""
        if self.guard.fault is not None and not isinstance(exc, RunFailed):
            failure = RunFailed(self.error)
            failure.add_note(RECORDED)
            raise failure from self.guard.fault

    def _request_stop(self, signum: int, frame: Any) -> None:
        """SIGINT or SIGTERM: the algorithm finishes its update, checkpoints and returns (``stop_requested``)."""
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the update to finish
        self.stop_requested = True
        self.event("stop_requested", signal=signal.Signals(signum).name, env_steps=self.env_steps)

    # ----------------------------------------------------------------- what algorithms call
    def wall_time(self) -> float:
        """Seconds of training (see ``TrainingClock``)."""
        paused = self._evaluations.paused_seconds if self._evaluations is not None else 0.0
        return self.clock.seconds(paused)

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Measure ``wall_time`` with ``clock`` (virtual seconds) from now on; meta.json says so."""
        self.clock.virtual = clock
        self.meta.fields.update(clock="simulated", cost_model=OmegaConf.to_container(self.cfg.sim))
        self.meta.write()

    def episode(self, worker: int, env_steps: int, ret: float, length: int) -> None:
        self._write_due_row(env_steps)
        self.grid.add_episode(ret, length)
        self.files.write("episodes", (env_steps, self.wall_time(), worker, ret, length))

    def update(self, worker: int, env_steps: int, version_at_sync: int, version_at_apply: int,
               applied: bool, lr: float, wait_time: float = 0.0, **stats: float) -> None:
        """One gradient: applied at ``version_at_apply`` (or dropped) after syncing at ``version_at_sync``."""
        self._write_due_row(env_steps)
        staleness = self.grid.add_update(version_at_sync, version_at_apply, applied, wait_time, stats)
        self.files.write("updates", (self.updates, self.wall_time(), env_steps, worker, version_at_sync,
                                     version_at_apply, staleness, int(applied), wait_time, lr))
        self._warn_blowups(worker, env_steps, stats)
        if self._evaluations is not None:
            self._write_evals(self._evaluations.finished())
        self.grid.reach(env_steps, lr, self.wall_time)

    def _warn_blowups(self, worker: int, env_steps: int, stats: dict[str, float]) -> None:
        """Each blow-up is an event and counts in ``meta.json``; only a quantity's first in the run is printed."""
        counts = self.meta.fields["blowup_warnings"]
        for blowup in self._blowups.observe(stats) if self._blowups is not None else ():
            counts[blowup.quantity] = counts.get(blowup.quantity, 0) + 1
            if counts[blowup.quantity] == 1:
                print(f"warning: worker {worker} at env step {env_steps}: {blowup.describe()} "
                      f"(blowup_factor={self.cfg.blowup_factor:g}; later ones are counted in meta.json's "
                      "blowup_warnings and listed in events.jsonl)", file=sys.stderr, flush=True)
            self.event("blowup_warning", worker=worker, env_steps=env_steps, quantity=blowup.quantity,
                       value=blowup.value, median=blowup.median, scale=blowup.scale)

    def event(self, kind: str, **fields: Any) -> None:
        entry = self._event_entry(kind, **fields)
        self.files.write_event(entry)
        if kind == "worker_failed":
            self.meta.fields["worker_failures"].append(entry)
            idle = self.meta.fields["stalled_idle_s"] + fields.get("idle_s", 0.0)
            self.meta.fields["stalled_idle_s"] = round(idle, 3)
            self.meta.write()

    def _event_entry(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"time": now_iso(), "wall_time": round(self.wall_time(), 3), "event": kind, **fields}

    def evaluation_due(self, env_steps: int) -> bool:
        return self._evaluations is not None and self._evaluations.due(env_steps)

    def evaluate(self, snapshot: EvalSnapshot) -> None:
        """Evaluate the policy of ``snapshot`` (see ``experiments.record.evaluations`` for where and when its row
        appears)."""
        assert self._evaluations is not None, "evaluations start with the run's files"
        self._write_evals(self._evaluations.evaluate(snapshot, self.wall_time()))

    def _write_evals(self, rows: list[Row]) -> None:
        if not rows:
            return
        self.files.write_now("evals", rows)
        for row in rows:
            self._last_eval = dict(zip(EVAL_COLUMNS, row, strict=True))
            self.wandb.log_eval(self._last_eval, self.env_steps)

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
        return self.checkpoints.due(env_steps)

    def save_checkpoint(self, state: Checkpoint) -> None:
        """Write ``checkpoints/last.pt`` (the previous one kept as ``prev.pt``) after flushing every file it
        must agree with. One holding a non-finite value is refused, logged as ``checkpoint_refused`` and not
        raised: a diverged run keeps its last good checkpoint and reports its divergence where it occurs."""
        with self.guard.writing():
            self._write_due_row()
            self.files.flush()
            state = {**state, "record": self.grid.saved(self.wall_time(), getattr(self.wandb.run, "id", None))}
            try:
                self.checkpoints.save(state)
            except CheckpointRefused as refused:
                self.event("checkpoint_refused", part=refused.part, reason=refused.reason, env_steps=self.env_steps)
        self.checkpoints.schedule_after(self.env_steps)

    # ----------------------------------------------------------------- metrics rows
    def _write_due_row(self, env_steps: int | None = None) -> None:
        """Write the metrics row that became due once every row of its update is in (see ``MetricsGrid.row_due``)."""
        if self.grid.row_due(env_steps):
            assert self.grid.row_due_at is not None  # what row_due says
            self._write_metrics_row(self.grid.row_due_at)

    def _write_metrics_row(self, wall: float) -> None:
        if self._blowups is not None:
            self._blowups.new_row()
        row, staleness = self.grid.row(wall)
        self.files.write("metrics", tuple(row[name] for name in METRIC_COLUMNS))
        self.files.flush()
        self.wandb.log_row(row, staleness, self.env_steps)
        self.progress.advance(row)
        self.grid.row_written(wall)

    def summary(self) -> dict[str, Any]:
        return self.grid.summary(self.wall_time(), self._last_eval)

    def summary_line(self) -> str:
        return summary_line(self.cfg, self.run_dir, self.status, self.error, self.summary(),
                            virtual=self.clock.virtual is not None)
