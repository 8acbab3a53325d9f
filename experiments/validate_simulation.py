"""Simulated workers against real ones, side by side: does the calibrated simulator predict this machine?

It calibrates ``sim.*`` here (``experiments.calibrate``), then runs each multi-worker schedule (a2c workers,
Hogwild, the parameter server) at each worker count twice with the same settings and seed: on real local
processes, and on ``backend=simulated`` with the calibrated costs. It reports both steady rates (env steps per
second past the warm-up; virtual seconds for the simulation) and their ratio, and both staleness distributions
(mean and 95th percentile). Run it on a quiet machine: other load slows the real runs, not the simulated ones.
Quiet means no other busy process at all, whatever its niceness: with the kernel's autogroups (on by default),
a busy process of another session at nice 19 competes as an equal of this whole session, and a2c's barrier
and the parameter server's replies suffer most (each wakes a process that slept). Even then this machine's speed
varies between runs, so compare several tables before reading a ratio.

    python -m experiments.validate_simulation --workers 1 2 --steps 30000 env=cartpole
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir

from experiments.calibrate import measure
from experiments.columns import UPDATE_COLUMNS
from experiments.config import ConfigError, validate
from experiments.throughput import steady_rate
from experiments.train import CONFIG_DIR, train

SCHEDULES = ("a2c_workers", "a3c_hogwild", "a3c_parameter_server")
WARMUP = 0.2  # the fraction of each run left out of its steady rate (process start-up, for the real runs)


def compose_run(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "quiet=true", "logger.wandb.mode=disabled",
                                                       "eval.episodes=0"])
    try:
        validate(cfg)
    except ConfigError as error:
        raise SystemExit(f"error: invalid config: {error}") from error
    return cfg


def run_once(cfg: Any, run_dir: Path) -> dict[str, float]:
    record = train(cfg, str(run_dir))
    if record.status != "completed":
        raise SystemExit(f"error: the run in {run_dir} ended {record.status}: {record.error}")
    staleness = np.loadtxt(run_dir / "updates.csv", delimiter=",", skiprows=1, ndmin=1,
                           usecols=UPDATE_COLUMNS.index("staleness"))
    return {"sps": steady_rate(run_dir, WARMUP), "staleness_mean": float(staleness.mean()),
            "staleness_p95": float(np.percentile(staleness, 95))}


def compare(overrides: list[str], schedules: list[str], workers: list[int], steps: int,
            costs: dict[str, float], root: Path) -> list[dict[str, Any]]:
    rows = []
    sim = [f"sim.{name}={value!r}" for name, value in costs.items()]
    for schedule in schedules:
        for count in workers:
            common = [*overrides, f"+schedule={schedule}", f"algo.num_workers={count}", f"total_env_steps={steps}",
                      f"log_interval={max(1, steps // 50)}"]
            name = f"{schedule}_{count}w"
            real = run_once(compose_run(common), root / f"{name}_real")
            simulated = run_once(compose_run([*common, "backend=simulated", *sim]), root / f"{name}_simulated")
            rows.append({"schedule": schedule, "workers": count, "real": real, "simulated": simulated,
                         "ratio": simulated["sps"] / real["sps"]})
            print(f"  {name}: real {real['sps']:,.0f} steps/s, simulated {simulated['sps']:,.0f}", file=sys.stderr,
                  flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| schedule | workers | real steps/s | simulated steps/s | simulated / real | staleness mean, real "
             "/ simulated | staleness p95, real / simulated |", "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for row in rows:
        real, simulated = row["real"], row["simulated"]
        lines.append(f"| {row['schedule']} | {row['workers']} | {real['sps']:,.0f} | {simulated['sps']:,.0f} | "
                     f"{row['ratio']:.2f} | {real['staleness_mean']:.2f} / {simulated['staleness_mean']:.2f} | "
                     f"{real['staleness_p95']:.1f} / {simulated['staleness_p95']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.validate_simulation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides shared by every run (env=..., seed=...)")
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=30_000, help="env steps of every run")
    parser.add_argument("--repeats", type=int, default=1000,
                        help="the calibration's timings per cost and timed updates (experiments.calibrate --repeats)")
    parser.add_argument("--out", type=Path, help="write the table and every number here as JSON too")
    args = parser.parse_args(argv)
    if args.steps < 1 or min(args.workers) < 1 or args.repeats < 1:
        parser.error(f"--steps {args.steps} --workers {args.workers} --repeats {args.repeats}: must be positive")
    costs = measure(compose_run([*args.overrides, "algo=a3c"]), repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="svrl-validate-") as scratch:
        rows = compare(args.overrides, args.schedules, args.workers, args.steps, costs, Path(scratch))
    print(table(rows))
    if args.out is not None:
        args.out.write_text(json.dumps({"costs": costs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
