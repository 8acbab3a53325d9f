"""Simulated workers against real ones, side by side: does the calibrated simulator predict this machine?

It calibrates ``sim.*`` here (``experiments.tools.calibrate``), then runs each multi-worker schedule (a2c workers,
Hogwild, the parameter server, impala) at each worker count with the same settings and seed: on real local
processes, and on ``backend=simulated`` with the calibrated costs. With one worker among the counts it also fits
one cost of each schedule to its real one-worker run and simulates every count with it: one worker is then the
fit, and more workers are the prediction. The fitted cost is where that schedule spends what the calibration's
isolated timings miss: ``update_s`` for a2c and a3c (a barrier, a server's messages), ``learn_s`` for impala (the
trainer's loop around each update: receiving the actors' announcements and supervising them).

It reports the steady rates (env steps per second past the warm-up; virtual seconds for the simulation), their
ratios, and both staleness distributions (mean and 95th percentile). The real rate is the median of ``--trials``
runs of each setting, made in rounds that each start with a calibration (each cost is the median of the rounds'),
and the table gives their range: the same run on this machine varies by up to a factor of two from one minute to
the next, most for the schedules whose processes wait on each other (a2c's barrier, the parameter server's
replies, impala's slots), so a single run's ratio says little. Run it on a quiet machine: other load slows the
real runs, not the simulated ones. Quiet means no other busy process at all, whatever its niceness: with the
kernel's autogroups (on by default), a busy process of another session at nice 19 competes as an equal of this
whole session; a stopped one (SIGSTOP) is quiet.

    python -m experiments.tools.validate_simulation --workers 1 2 --steps 15000 --trials 3 env=cartpole
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.columns import UPDATE_COLUMNS
from experiments.config import ConfigError, validate
from experiments.tools.calibrate import measure
from experiments.tools.throughput import steady_rate
from experiments.train import CONFIG_DIR, train

SCHEDULES = ("a2c_workers", "a3c_hogwild", "a3c_parameter_server", "impala")
FITTED_COST = {"impala": "learn_s"}  # the others': update_s
WARMUP = 0.2  # the fraction of each run left out of its steady rate (process start-up, for the real runs)


def compose_run(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "quiet=true", "logger.wandb.mode=disabled",
                                                       "eval.episodes=0"])
    try:
        validate(cfg)
    except ConfigError as error:
        raise SystemExit(f"error: invalid config: {error}") from error
    return cfg


def run_once(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    record = train(cfg, str(run_dir))
    if record.status != "completed":
        raise SystemExit(f"error: the run in {run_dir} ended {record.status}: {record.error}")
    staleness = np.loadtxt(run_dir / "updates.csv", delimiter=",", skiprows=1, ndmin=1,
                           usecols=UPDATE_COLUMNS.index("staleness"))
    return {"sps": steady_rate(run_dir, WARMUP), "staleness_mean": float(staleness.mean()),
            "staleness_p95": float(np.percentile(staleness, 95))}


def real_runs(all_runs: list[Runs], workers: list[int], trials: int,
              calibrate: Callable[[], dict[str, float]]) -> tuple[dict[tuple[str, int], dict[str, Any]],
                                                                 list[dict[str, float]]]:
    """A calibration, then every schedule's real runs at every worker count, ``trials`` times in rounds (so that a
    slow spell of the machine touches the calibration and every setting alike): for each setting the median rate,
    every trial's, and the mean staleness statistics; and each round's calibrated costs."""
    measured: dict[tuple[str, int], list[dict[str, float]]] = {}
    calibrations = []
    for _ in range(trials):
        calibrations.append(calibrate())
        for runs in all_runs:
            for count in workers:
                measured.setdefault((runs.schedule, count), []).append(runs.real(count))
    return {key: {"sps": statistics.median(run["sps"] for run in runs), "sps_trials": [run["sps"] for run in runs],
                  **{name: statistics.fmean(run[name] for run in runs) for name in ("staleness_mean", "staleness_p95")}}
            for key, runs in measured.items()}, calibrations


def compare(overrides: list[str], schedules: list[str], workers: list[int], steps: int, trials: int,
            calibrate: Callable[[], dict[str, float]], root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every schedule at every worker count: real (the median of ``trials``), simulated with the calibrated costs
    (each the median of the rounds' calibrations), and (with one worker among ``workers``) simulated with the
    schedule's ``FITTED_COST`` fitted to its real one-worker run. Returns the rows, and the costs with every
    calibration."""
    rows, all_runs = [], [Runs(overrides, schedule, steps, root) for schedule in schedules]
    measured, calibrations = real_runs(all_runs, workers, trials, calibrate)
    costs = {name: statistics.median(calibration[name] for calibration in calibrations) for name in calibrations[0]}
    for runs in all_runs:
        schedule = runs.schedule
        real = {count: measured[schedule, count] for count in workers}
        calibrated = {count: runs.simulated(count, costs) for count in workers}
        fitted_name = FITTED_COST.get(schedule, "update_s")
        fitted_costs = {**costs, fitted_name: runs.fit(fitted_name, costs, real[1]["sps"])} if 1 in workers else None
        for count in workers:
            row = {"schedule": schedule, "workers": count, "real": real[count], "simulated": calibrated[count],
                   "ratio": calibrated[count]["sps"] / real[count]["sps"]}
            if fitted_costs is not None:
                fitted = runs.simulated(count, fitted_costs)
                row.update(fitted_cost=fitted_name, fitted_s=fitted_costs[fitted_name], fitted=fitted,
                           fitted_ratio=fitted["sps"] / real[count]["sps"])
            rows.append(row)
            fit = f", with {fitted_name} fitted {row['fitted']['sps']:,.0f}" if "fitted" in row else ""
            print(f"  {schedule}_{count}w: real {real[count]['sps']:,.0f} steps/s, simulated "
                  f"{calibrated[count]['sps']:,.0f}{fit}", file=sys.stderr, flush=True)
    return rows, {"costs": costs, "calibrations": calibrations}


class Runs:
    """One schedule's runs, real and simulated, each in a directory of its own under ``root``."""

    def __init__(self, overrides: list[str], schedule: str, steps: int, root: Path):
        self.overrides, self.schedule, self.steps, self.root = overrides, schedule, steps, root
        self.count = 0

    def common(self, workers: int) -> list[str]:
        return [*self.overrides, f"+schedule={self.schedule}", f"algo.num_workers={workers}",
                f"total_env_steps={self.steps}", f"log_interval={max(1, self.steps // 50)}"]

    def run(self, overrides: list[str], clock: str, workers: int) -> dict[str, float]:
        self.count += 1
        return run_once(compose_run(overrides), self.root / f"{self.schedule}_{workers}w_{clock}_{self.count}")

    def real(self, workers: int) -> dict[str, float]:
        return self.run(self.common(workers), "real", workers)

    def simulated(self, workers: int, costs: dict[str, float]) -> dict[str, float]:
        sim = [f"sim.{name}={value!r}" for name, value in costs.items()]
        return self.run([*self.common(workers), "backend=simulated", *sim], "simulated", workers)

    def fit(self, name: str, costs: dict[str, float], real_sps: float) -> float:
        """The cost ``name`` at which one simulated worker steps at ``real_sps``. Seconds per env step grow
        linearly with it where the worker's loop is serial (for impala, once the learner, not the actor, is the
        slower); one-worker runs with it one and two milliseconds above the calibrated value give the line, and
        the fit is where it meets the real rate (never below 0)."""
        low, high, step = costs[name] + 1e-3, costs[name] + 2e-3, 1e-3
        at_low, at_high = (1 / self.simulated(1, {**costs, name: cost})["sps"] for cost in (low, high))
        return max(0.0, low + (1 / real_sps - at_low) * step / (at_high - at_low))


def table(rows: list[dict[str, Any]]) -> str:
    fitted = any("fitted" in row for row in rows)
    header = "| schedule | workers | real steps/s, median (range) | simulated steps/s | simulated / real |"
    header += " cost fitted at 1 worker (ms) | simulated with it | its / real |" if fitted else ""
    header += " staleness mean, real / simulated | staleness p95, real / simulated |"
    rule = "| --- | --- | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if fitted else "") + " --- | --- |"
    lines = [header, rule]
    for row in rows:
        real, simulated = row["real"], row["simulated"]
        spread = f"{min(real['sps_trials']):,.0f}-{max(real['sps_trials']):,.0f}"
        line = (f"| {row['schedule']} | {row['workers']} | {real['sps']:,.0f} ({spread}) | {simulated['sps']:,.0f} | "
                f"{row['ratio']:.2f} |")
        if fitted:
            line += (f" `{row['fitted_cost']}` {row['fitted_s'] * 1e3:.3f} | {row['fitted']['sps']:,.0f} | "
                     f"{row['fitted_ratio']:.2f}"
                     f"{' (the fit)' if row['workers'] == 1 else ''} |")
        lines.append(line + f" {real['staleness_mean']:.2f} / {simulated['staleness_mean']:.2f} | "
                     f"{real['staleness_p95']:.1f} / {simulated['staleness_p95']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.tools.validate_simulation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides shared by every run (env=..., seed=...)")
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=30_000, help="env steps of every run")
    parser.add_argument("--trials", type=int, default=3,
                        help="real runs of each setting, in rounds; their median rate is compared")
    parser.add_argument("--repeats", type=int, default=1000,
                        help="the calibration's timings per cost and timed updates "
                             "(experiments.tools.calibrate --repeats)")
    parser.add_argument("--out", type=Path, help="write the table and every number here as JSON too")
    args = parser.parse_args(argv)
    if args.steps < 1 or min(args.workers) < 1 or args.repeats < 1 or args.trials < 1:
        parser.error(f"--steps {args.steps} --workers {args.workers} --repeats {args.repeats} --trials "
                     f"{args.trials}: must be positive")
    calibrated = compose_run([*args.overrides, "algo=a3c"])
    with tempfile.TemporaryDirectory(prefix="svrl-validate-") as scratch:
        rows, costs = compare(args.overrides, args.schedules, args.workers, args.steps, args.trials,
                              partial(measure, calibrated, args.repeats), Path(scratch))
    print(table(rows))
    if args.out is not None:
        args.out.write_text(json.dumps({**costs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
