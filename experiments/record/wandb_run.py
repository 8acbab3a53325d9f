"""The run's optional Weights & Biases mirror of its metrics rows and evaluations.

Local files are the source of truth: each row is written there first, and the mirror can never fail a run except
when asked to (``logger.wandb.fallback=fail``). When its mode cannot start (no API key, no network) it says why in one
line and goes on offline, then without; when logging fails mid-run, the run goes on without it. meta.json's
``wandb`` says which.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from omegaconf import DictConfig, OmegaConf

from experiments.record.meta import MetaFile, RunFailed

WandbMode = Literal["online", "offline"]  # the modes a mirror starts in

WANDB_MAX_BINS = 512  # wandb.Histogram refuses more
WANDB_INIT_TIMEOUT_S = 10.0  # W&B's own default (90 s) holds a run without network for a minute and a half


def staleness_bins(staleness: np.ndarray) -> np.ndarray:
    """Histogram edges with one bin per integer staleness value (counts of 0, 1, 2, ... versions behind), or
    W&B's most, 512 equal bins, past that."""
    most = int(staleness.max())
    if most + 1 <= WANDB_MAX_BINS:
        return np.arange(most + 2) - 0.5
    return np.linspace(-0.5, most + 0.5, WANDB_MAX_BINS + 1)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class WandbMirror:
    """The W&B run mirroring one run record (``run``: None while there is none)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, meta: MetaFile):
        self.cfg = cfg
        self.run_dir = run_dir
        self.meta = meta
        self.run: Any = None
        self.resume_id: str | None = None  # the W&B run of the checkpoint a run resumes from

    def open(self) -> None:
        """Start the mirror in ``logger.wandb.mode``, falling back as the module docstring says; meta.json says how
        it started."""
        wandb_cfg = self.cfg.logger.wandb
        if wandb_cfg.mode == "disabled":
            return
        reasons = []
        modes: list[WandbMode] = ["online", "offline"] if wandb_cfg.mode == "online" else ["offline"]
        for mode in modes:
            reason = self._start(mode)
            if reason is None:
                break
            reasons.append(f"{mode}: {reason}")
            if wandb_cfg.fallback == "fail":
                raise RunFailed(f"W&B {mode} mode cannot start ({reason}) and logger.wandb.fallback=fail")
            then = "mirroring offline instead" if mode == "online" else "the run goes on without a W&B mirror"
            print(f"warning: W&B {mode} mode cannot start ({reason}); {then}", file=sys.stderr)
        run = self.run
        self.meta.fields["wandb"] = {"mode": mode if run is not None else "disabled", "requested": wandb_cfg.mode,
                                     "fallback_reason": "; ".join(reasons) or None,
                                     "id": getattr(run, "id", None), "dir": getattr(run, "dir", None)}
        self.meta.write()

    def _start(self, mode: WandbMode) -> str | None:
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
            self.run = wandb.init(
                mode=mode,
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                group=wandb_cfg.group,
                tags=list(wandb_cfg.tags),
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=cast("dict[str, Any]", OmegaConf.to_container(self.cfg, resolve=True)),  # a DictConfig's
                id=self.resume_id,
                resume="allow" if self.resume_id else None,
                settings=wandb.Settings(console="off", x_disable_stats=True, silent=True, init_timeout=init_timeout),
            )
        except Exception as error:  # the mirror is optional: whatever stops it is reported, never raised
            return _first_line(error)
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")
        return None

    def log_row(self, row: dict[str, Any], staleness: np.ndarray, env_steps: int) -> None:
        """Mirror a metrics row (its NaN statistics left out) and its interval's staleness histogram."""
        def payload() -> dict[str, Any]:
            import wandb

            logged = {name: value for name, value in row.items()
                      if not (isinstance(value, float) and math.isnan(value))}
            logged["staleness_hist"] = wandb.Histogram(np_histogram=np.histogram(staleness,
                                                                                 bins=staleness_bins(staleness)))
            return logged

        self._log(payload, env_steps)

    def log_eval(self, row: dict[str, Any], env_steps: int) -> None:
        """Mirror an evaluation's row of evals.csv."""
        self._log(lambda: {"env_steps": row["env_steps"], **{
            f"eval/{name}": row[name] for name in ("return_mean", "return_std", "length_mean", "eval_seconds")}},
            env_steps)

    def _log(self, payload: Callable[[], dict[str, Any]], env_steps: int) -> None:
        """Log ``payload()``. If logging fails, the run (at ``env_steps``) goes on without the mirror (said in one
        line, and in meta.json), and the local record, written first, is whole."""
        if self.run is None:
            return
        try:
            self.run.log(payload())
        except Exception as error:
            reason = _first_line(error)
            print(f"warning: W&B logging failed at env step {env_steps} ({reason}); the run goes on without "
                  "a W&B mirror", file=sys.stderr)
            with contextlib.suppress(Exception):
                self.run.finish(exit_code=1)
            self.run = None
            fields = self.meta.fields
            fields["wandb"] = {**fields.get("wandb", {}), "dropped": f"at env step {env_steps}: {reason}"}

    def close(self, status: str) -> None:
        """Finish the W&B run, marked failed unless the run ended with ``status`` completed."""
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None
