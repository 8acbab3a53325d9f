"""Start-up benchmark: seconds from the command line to a run's first applied update.

Each measurement runs ``python -m experiments.train`` in a fresh process, as a user does, and watches the run's
``updates.csv`` for its first row: interpreter and imports, config, the run record, worker processes (each
importing torch under ``spawn``, forked ready from the forkserver by default) and the first rollout. ``--against
DIR`` runs the same command in another checkout (``git worktree add DIR REV``) right after each run here, so
that the machine's drift stays out of the ratio. Specs are those of ``experiments.tools.throughput``::

    python -m experiments.tools.startup --runs a3c:hogwild:2w impala:actor_learner:2w --repeats 5 --against /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.record import git_state
from experiments.tools.throughput import RunSpec, machine, parse_spec

HERE = Path(__file__).resolve().parents[2]  # this checkout's root
POLL_S = 0.005


def seconds_to_first_update(checkout: Path, spec: RunSpec, env: str, extra: list[str], timeout: float = 300) -> float:
    """Start ``spec`` from the command line in ``checkout``; the seconds until its updates.csv has a row. The run
    is short, and it finishes before this returns, so that the next measurement has the machine to itself."""
    with tempfile.TemporaryDirectory(prefix="svrl-startup-") as scratch:
        run_dir = Path(scratch) / "run"
        updates = run_dir / "updates.csv"
        command = [sys.executable, "-m", "experiments.train", *spec.overrides(), f"env={env}", "total_env_steps=2000",
                   "quiet=true", "logger.wandb.mode=disabled", "eval.episodes=0", *extra, f"hydra.run.dir={run_dir}"]
        started = time.perf_counter()
        # PYTHONPATH (and the working directory) make the run import that checkout's code.
        process = subprocess.Popen(command, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not (updates.exists() and updates.read_bytes().count(b"\n") >= 2):  # the header and one row
            if process.poll() is not None or time.perf_counter() - started > timeout:
                process.kill()
                raise SystemExit(f"error: {spec.label} in {checkout} wrote no update: {process.communicate()[1]}")
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        _, stderr = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise SystemExit(f"error: {spec.label} in {checkout} exited with {process.returncode}: {stderr[-2000:]}")
        return elapsed


def measure(specs: list[RunSpec], env: str, repeats: int, extra: list[str],
            against: Path | None) -> dict[str, dict[str, list[float]]]:
    """Seconds to the first update of each spec, ``repeats`` times, here and (right after) in ``against``."""
    checkouts = {"here": HERE, **({"against": against} if against is not None else {})}
    times: dict[str, dict[str, list[float]]] = {spec.label: {name: [] for name in checkouts} for spec in specs}
    for repeat in range(repeats):
        for spec in specs:
            for name, checkout in checkouts.items():
                times[spec.label][name].append(seconds_to_first_update(checkout, spec, env, extra))
                print(f"  {spec.label} repeat {repeat + 1}/{repeats} in {checkout}: "
                      f"{times[spec.label][name][-1]:.2f} s", file=sys.stderr, flush=True)
    return times


def table(times: dict[str, dict[str, list[float]]]) -> str:
    against = any("against" in row for row in times.values())
    lines = [f"{'spec':<28} {'here: median (min-max) s':>26}"
             + (f" {'against: median (min-max) s':>29} {'here/against':>13}" if against else "")]
    for spec, row in times.items():
        cells = [f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})" for values in row.values()]
        line = f"{spec:<28} {cells[0]:>26}"
        if against:
            ratio = statistics.median(row["here"]) / statistics.median(row["against"])
            line += f" {cells[1]:>29} {ratio:>13.2f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="SPEC",
                        help="ALGO[:MODE][:N[w]][:Me][:BACKEND], e.g. a3c:hogwild:2w impala:actor_learner:2w")
    parser.add_argument("--env", default="cartpole", help="env config group (conf/env), default cartpole")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each spec; the table shows medians")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--against", type=Path, metavar="DIR", help="another checkout, measured right after each run")
    parser.add_argument("--json", type=Path, default=Path("startup.json"), help="where to write the results")
    args = parser.parse_args(argv)
    try:
        specs = [parse_spec(text) for text in args.runs]
    except ValueError as error:
        parser.error(str(error))
    if args.against is not None and not (args.against / "experiments" / "train.py").is_file():
        parser.error(f"--against {args.against}: not a checkout of this project (no experiments/train.py)")
    started = machine()
    times = measure(specs, args.env, args.repeats, args.set, args.against)
    print(table(times))
    checkouts = {"here": git_state(HERE), **({"against": {"dir": str(args.against), **git_state(args.against)}}
                                             if args.against is not None else {})}
    args.json.write_text(json.dumps({"env": args.env, "repeats": args.repeats, "overrides": args.set,
                                     "machine": started, "checkouts": checkouts,
                                     "seconds_to_first_update": times}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
