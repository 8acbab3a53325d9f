"""One prepared check for a machine with a GPU and 16 cores, into one JSON and one Markdown table.

On such a machine, from the repository root, in under 8 minutes (``--timeout``, 450 s by default, stops it sooner
and writes what it has)::

    .venv/bin/python -m experiments.tools.device_check

writes ``docs/results/device/device_check.json`` and its table, ``README.md`` there, which names the card (``--out
DIR`` puts them elsewhere):

1. ``experiments.tools.gpu_check``, whole: the CUDA learner against the CPU's (skipped, "no GPU", without one);
2. ``experiments.tools.throughput`` at 1, 2, 4, 8 and 16 workers of every local multi-worker schedule (the
   parameter server, Hogwild, a2c and ppo workers with one env each, impala, appo) on CartPole and on MinAtar
   Breakout, in five invocations (``FULL.jobs``): each schedule's runs share one, so each parallel efficiency's
   1-worker rate is measured in the same invocation; ``--steps-per-worker`` makes every run about as long at
   perfect scaling. ``--ray`` adds the Ray schedules (each run starts a cluster: give ``--timeout`` minutes more);
3. ``experiments.tools.validate_simulation --workers 1 2 4 8`` on CartPole, one trial of each of its schedules.

``--reduced`` runs the same pipeline on a CPU-only 2-core machine in about half a minute (1 and 2 workers, two
schedules, tiny step counts; ``gpu_check`` skipped with "no GPU", or with a GPU its batch comparisons alone) and
writes ``device_check_reduced.json`` and ``.md`` into ``runs/device/`` by default, never over a result;
tests/test_device_check.py runs it::

    .venv/bin/python -m experiments.tools.device_check --reduced

Either form first validates every config of the full check, so that a spec the 16-core machine would refuse fails
here, in seconds.

The budget of the full check, 425 s, from the 2-core reference machine's rates (docs/benchmarks.md, docs/results):

- gpu_check, 130 s: about two minutes by its own docstring (four short runs on CUDA and on the CPU).
- throughput, 195 s: 60 runs in 5 invocations. An invocation starts in about 4 s; a run costs about 1.5 s besides
  its steps (workers forked, envs made, first rollout, teardown: 0.9 s measured on 2 cores, more with 16 workers;
  0.2 s of raw env stepping). At perfect scaling a run steps for (steps per worker) / (one worker's rate), at an
  efficiency of 0.5 twice that: CartPole's four 5-step schedules 1,000 / 3,300 steps/s (Hogwild, 1 worker) x 20
  runs: 12 s, so 4 + 30 + 12 = 46 s, planned 50; MinAtar Breakout's five 400 / 750 (``single`` 726, Hogwild 907)
  x 25: 27 s, 68 s, planned 75; ppo workers on CartPole 1,280 / 4,600 x 5: 3 s, 14 s, planned 15; appo on
  CartPole 5,120 / 13,700 x 5: 4 s, 15 s, planned 15; ppo workers on MinAtar 1,280 / 520 x 5: 25 s, 36 s, planned
  40. (ppo's rounds are 128 steps per worker and appo's CartPole batches 512 steps: ten of each per run.)
- validate_simulation, 100 s: 16 real runs of 3,000 steps (about 2 s each: 32 s), 40 simulated ones (4 schedules x
  (4 counts calibrated + 4 fitted + 2 to fit), about 1 s each: 40 s), a calibration of 200 repeats and the start:
  10 s. About 82 s.

Each stage may run until its cumulative share of the budget (scaled to ``--timeout``, less 13 s to stop the last
stage and write) has passed: time an early stage leaves goes to the later ones, and no stage eats a later one's
share. A stage still running at its limit is stopped (SIGTERM to its process group, on which runs stop cleanly,
then SIGKILL); the throughput benchmark also starts no run within 12 s of its limit (``--time-limit``), so a slow
machine loses its last runs, not a whole table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from algorithms import SCHEDULES
from experiments.config import ConfigError, validate
from experiments.record import git_state
from experiments.tools.throughput import compose_spec, machine, parse_spec
from experiments.tools.validate_simulation import SCHEDULES as VALIDATED_SCHEDULES

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path("docs/results/device")
REDUCED_OUT = Path("runs/device")  # a CPU rehearsal is no result
GRACE_S = 5.0  # between a stage's SIGTERM and its SIGKILL
RESERVE_S = 2 * GRACE_S + 3  # of --timeout, for stopping the last stage and writing the results
ENV_NAMES = {"cartpole": "CartPole", "minatar_breakout": "MinAtar Breakout"}
# Local multi-worker schedules as run specs, {} the workers; a2c and ppo workers with one env each, like the others
# (their YAML's num_envs is the vector mode's).
PS, HOGWILD, A2C = "a3c:parameter_server:{}w", "a3c:hogwild:{}w", "a2c:workers:{}w:1e"
IMPALA, PPO, APPO = "impala:actor_learner:{}w", "ppo:workers:{}w:1e", "appo:actor_learner:{}w"


@dataclass(frozen=True)
class Job:
    """One throughput invocation: ``schedules`` on ``env``, ``steps`` per worker, planned to take ``seconds``."""

    env: str
    steps: int
    schedules: tuple[str, ...]
    seconds: float

    @property
    def name(self) -> str:
        return f"throughput {self.env}: " + " ".join(":".join(schedule.split(":")[:2]) for schedule in self.schedules)

    def specs(self, workers: tuple[int, ...], ray: bool) -> list[str]:
        """Every schedule at every worker count; with ``ray``, then each schedule that has a Ray entry, on Ray."""
        remote = [f"{schedule}:ray" for schedule in self.schedules if ray and has_ray_entry(schedule)]
        return [schedule.format(count) for schedule in [*self.schedules, *remote] for count in workers]


def has_ray_entry(schedule: str) -> bool:
    spec = parse_spec(schedule.format(1))
    return (spec.algo, spec.mode, "ray") in SCHEDULES


@dataclass(frozen=True)
class Plan:
    """What one form of the check runs; each stage's planned seconds (a job's own, ``shares`` for the others)."""

    name: str
    workers: tuple[int, ...]
    jobs: tuple[Job, ...]  # most wanted first: a short --timeout cuts the last
    raw_seconds: float
    last_run_s: float  # the longest a throughput run is expected to take: no run starts closer to the limit
    validate_workers: tuple[int, ...]
    validate_schedules: tuple[str, ...]
    validate_steps: int
    validate_repeats: int
    shares: dict[str, float]  # gpu_check, validate_simulation
    timeout: float


# ppo's rounds are 128 steps per worker: 1,280 make 10; appo's batches on CartPole are 2 unrolls of 128 steps in 2
# envs: 5,120 steps per worker make 10 with 1 worker. The others update every 5 steps (impala, appo on MinAtar: 10).
FULL = Plan("full", (1, 2, 4, 8, 16),
            (Job("cartpole", 1000, (PS, HOGWILD, A2C, IMPALA), 50),
             Job("minatar_breakout", 400, (PS, HOGWILD, A2C, IMPALA, APPO), 75),
             Job("cartpole", 1280, (PPO,), 15), Job("cartpole", 5120, (APPO,), 15),
             Job("minatar_breakout", 1280, (PPO,), 40)),
            raw_seconds=0.2, last_run_s=12.0, validate_workers=(1, 2, 4, 8), validate_schedules=VALIDATED_SCHEDULES,
            validate_steps=3000, validate_repeats=200, shares={"gpu_check": 130, "validate_simulation": 100},
            timeout=450)
REDUCED = Plan("reduced", (1, 2),
               (Job("cartpole", 300, (PS, IMPALA), 12), Job("minatar_breakout", 100, (PS, IMPALA), 12)),
               raw_seconds=0.05, last_run_s=3.0, validate_workers=(1, 2), validate_schedules=("a3c_parameter_server",),
               validate_steps=300, validate_repeats=10, shares={"gpu_check": 5, "validate_simulation": 20}, timeout=90)


@dataclass
class Finished:
    """A stage's subprocess: its exit status (None: stopped at its limit), output and seconds; its pid, which is
    also its process group's and session's."""

    pid: int
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def run_until(command: list[str], deadline: float) -> Finished:
    """Run ``command`` from the repository root in a process group of its own; stop the group at ``deadline``."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=max(0.0, deadline - started))
        return Finished(process.pid, process.returncode, out, err, time.monotonic() - started)
    except subprocess.TimeoutExpired:
        out, err = stop(process)
        return Finished(process.pid, None, out, err, time.monotonic() - started)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM to the process's group (a run stops cleanly on it), SIGKILL to what is left ``GRACE_S`` later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            continue
    return "", ""


def stage_record(stage: str, finished: Finished, statuses: dict[int, tuple[str, str]], **extra: Any) -> dict[str, Any]:
    """A stage's entry: status and reason from its exit status (``statuses``; any other is a failure)."""
    if finished.returncode is None:
        status, reason = "timed out", f"stopped at its limit after {finished.seconds:.0f} s"
    else:
        status, reason = statuses.get(finished.returncode, ("failed", f"exit status {finished.returncode}"))
    return {"stage": stage, "status": status, "reason": reason, "seconds": round(finished.seconds, 1),
            "session": finished.pid, **extra,
            "output_tail": (finished.stdout[-2000:] + finished.stderr[-3000:]) if status != "ok" else ""}


def gpu_stage(plan: Plan, deadline: float, scratch: Path) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"stage": "gpu_check", "status": "skipped", "reason": "no GPU", "seconds": 0.0}
    if plan.name == "reduced":  # the batch comparisons alone, in seconds: the runs are the full check's
        from experiments.tools.gpu_check import BATCHES, compare_one_batch

        started = time.monotonic()
        checks = [compare_one_batch(name, space, actions) for name, (space, actions) in BATCHES.items()]
        ok = all(check["ok"] for check in checks)
        return {"stage": "gpu_check", "status": "ok" if ok else "failed",
                "reason": "batch comparisons only (--reduced)" + ("" if ok else ": some differ"),
                "seconds": round(time.monotonic() - started, 1),
                "result": {"gpu": torch.cuda.get_device_name(), "batches": checks, "runs": []}}
    if deadline - time.monotonic() < 1:
        return not_run("gpu_check")
    path = scratch / "gpu_check.json"
    finished = run_until([sys.executable, "-m", "experiments.tools.gpu_check", "--json", str(path)], deadline)
    result = json.loads(path.read_text()) if path.exists() else None
    return stage_record("gpu_check", finished, {0: ("ok", ""), 1: ("failed", "some checks differ"),
                                                2: ("skipped", "no GPU")}, result=result)


def throughput_stage(plan: Plan, job: Job, deadline: float, scratch: Path, ray: bool) -> dict[str, Any]:
    """One throughput invocation; it starts no run within ``plan.last_run_s`` of ``deadline``, and is stopped there."""
    limit = deadline - time.monotonic()
    if limit < 1:
        return not_run(job.name)
    stem = scratch / job.name.replace(" ", "_").replace(":", "-")
    json_path, markdown_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    command = [sys.executable, "-m", "experiments.tools.throughput", "--env", job.env,
               "--runs", *job.specs(plan.workers, ray), "--steps", str(job.steps), "--steps-per-worker",
               "--raw-seconds", str(plan.raw_seconds), "--time-limit", f"{max(0.0, limit - plan.last_run_s):.1f}",
               "--json", str(json_path), "--markdown", str(markdown_path)]
    finished = run_until(command, deadline)
    result = json.loads(json_path.read_text()) if json_path.exists() else None
    record = stage_record(job.name, finished, {0: ("ok", "")}, env=job.env, steps_per_worker=job.steps,
                          result=result, markdown=markdown_path.read_text() if markdown_path.exists() else None)
    if result is not None and (result["not_run"] or result["failed"]):
        reasons = [f"no rate for {spec}: {error}" for spec, error in result["failed"].items()]
        reasons += [f"not run, past its time limit: {', '.join(result['not_run'])}"] if result["not_run"] else []
        record.update(status="partial" if result["runs"] or result["baselines"] else "not run",
                      reason="; ".join(reasons))
    return record


def validate_stage(plan: Plan, deadline: float, scratch: Path) -> dict[str, Any]:
    if deadline - time.monotonic() < 1:
        return not_run("validate_simulation")
    path = scratch / "validate_simulation.json"
    command = [sys.executable, "-m", "experiments.tools.validate_simulation",
               "--workers", *map(str, plan.validate_workers), "--schedules", *plan.validate_schedules,
               "--steps", str(plan.validate_steps), "--trials", "1", "--repeats", str(plan.validate_repeats),
               "env=cartpole", "--out", str(path)]
    finished = run_until(command, deadline)
    table = "\n".join(line for line in finished.stdout.splitlines() if line.startswith("|"))
    # Each setting's line as it finished: all there is of a validation stopped at its limit.
    progress = [line.strip() for line in finished.stderr.splitlines() if ": real " in line]
    return stage_record("validate_simulation", finished, {0: ("ok", "")}, command=command[2:],
                        result=json.loads(path.read_text()) if path.exists() else None,
                        markdown=table or None, progress=progress)


def not_run(stage: str) -> dict[str, Any]:
    return {"stage": stage, "status": "not run", "reason": "its share of --timeout was spent", "seconds": 0.0}


def preflight(plan: Plan, ray: bool = False) -> list[str]:
    """Every throughput config of ``plan`` at its fewest and most workers, validated; the problems found."""
    problems = []
    for job in plan.jobs:
        for text in job.specs((min(plan.workers), max(plan.workers)), ray):
            try:
                validate(compose_spec(parse_spec(text), job.env, job.steps, [], per_worker=True))
            except ConfigError as error:
                problems.append(f"{job.env} {text}: {error}")
    return problems


def provenance(plan: Plan, argv: list[str], timeout: float) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"form": plan.name, "command": " ".join([".venv/bin/python -m experiments.tools.device_check", *argv]),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), **git_state(ROOT),
            "machine": {**machine(), "gpu": gpu}, "timeout_s": timeout, "plan": asdict(plan)}


def run_stages(plan: Plan, timeout: float, ray: bool, scratch: Path, started: float) -> list[dict[str, Any]]:
    """Each stage until its cumulative share of what is left of ``timeout`` (less ``RESERVE_S``) has passed: what an
    early stage leaves goes to the later ones, and no stage eats a later one's share. A stage left less than a second
    is not run."""
    stages: list[tuple[str, float, Callable[[float], dict[str, Any]]]] = [
        ("gpu_check", plan.shares["gpu_check"], lambda deadline: gpu_stage(plan, deadline, scratch)),
        *((job.name, job.seconds, partial(throughput_stage, plan, job, scratch=scratch, ray=ray)) for job in plan.jobs),
        ("validate_simulation", plan.shares["validate_simulation"],
         lambda deadline: validate_stage(plan, deadline, scratch))]
    begin, end = time.monotonic(), started + timeout - RESERVE_S
    total, done, records = sum(seconds for _, seconds, _ in stages), 0.0, []
    for name, seconds, stage in stages:
        done += seconds
        deadline = begin + (end - begin) * done / total
        print(f"device check: {name}, until {deadline - started:.0f} s of {timeout:.0f}", file=sys.stderr, flush=True)
        records.append(stage(deadline))
    return records


def stage_markdown(stage: dict[str, Any]) -> list[str]:
    """A stage's own table under a heading, or nothing where it has none."""
    result = stage.get("result")
    if stage["stage"] == "gpu_check" and result:
        lines = ["", f"## gpu_check: {result['gpu']}", "", "| check | cuda | cpu | ok |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {check['check']} batch | | | {check['ok']} |" for check in result["batches"]]
        return lines + [f"| {run['run']} (steps/s) | {run['cuda']['sps'] or 0:,.0f} | {run['cpu']['sps'] or 0:,.0f} | "
                        f"{run['ok']} |" for run in result["runs"]]
    if stage["stage"].startswith("throughput") and result and (result["runs"] or result["baselines"]):
        return ["", f"## Throughput, {ENV_NAMES.get(stage['env'], stage['env'])}, {stage['steps_per_worker']:,} steps "
                "per worker", "", stage["markdown"].strip()]
    if stage["stage"] == "validate_simulation" and (stage.get("markdown") or stage.get("progress")):
        return ["", "## The simulator against real runs (CartPole)", "",
                *([stage["markdown"]] if stage.get("markdown") else [f"- {line}" for line in stage["progress"]])]
    return []


def markdown(report: dict[str, Any], json_name: str) -> str:
    """The whole report: provenance (card, cores, commit, date, command), one row per stage, each stage's table."""
    machine_ = report["machine"]
    dirty = " with uncommitted changes" if report["git_dirty"] else ""
    lines = [f"# Device check ({report['form']}): {machine_['gpu'] or 'no GPU'}, {machine_['cpu_count']} cores", "",
             f"Measured {report['date']} at commit `{str(report['git_commit'])[:7]}`{dirty} on {machine_['host']} "
             f"({machine_['cpu_count']} cores, GPU: {machine_['gpu'] or 'none'}) in {report['seconds']:.0f} s of a "
             f"{report['timeout_s']:.0f} s budget; [`{json_name}`]({json_name}) holds every number.", "",
             "```bash", report["command"], "```", "",
             "| stage | status | seconds | note |", "| --- | --- | ---: | --- |"]
    if report["preflight"]:
        lines.append(f"| preflight | failed | | {'; '.join(report['preflight'])} |")
    lines += [f"| {stage['stage']} | {stage['status']} | {stage['seconds']:.1f} | {stage.get('reason') or ''} |"
              for stage in report["stages"]]
    for stage in report["stages"]:
        lines += stage_markdown(stage)
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.tools.device_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        help=f"where to write (default {DEFAULT_OUT}, {REDUCED_OUT} with --reduced)")
    parser.add_argument("--reduced", action="store_true",
                        help="the same pipeline on a CPU-only 2-core machine in about half a minute")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help=f"stop by then, writing what it has (default {FULL.timeout:.0f}, "
                             f"{REDUCED.timeout:.0f} with --reduced)")
    parser.add_argument("--ray", action="store_true", help="also the Ray schedules' throughput (over budget)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    plan = REDUCED if args.reduced else FULL
    timeout = args.timeout or plan.timeout
    report = provenance(plan, argv, timeout)
    report["preflight"] = preflight(FULL, args.ray)
    for problem in report["preflight"]:
        print(f"error: the full check would refuse {problem}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="svrl-device-") as scratch:
        report["stages"] = run_stages(plan, timeout, args.ray, Path(scratch), started)
    report["seconds"] = round(time.monotonic() - started, 1)
    out = args.out or (REDUCED_OUT if args.reduced else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    # The full check's table is its results folder's page (docs/results/*/README.md, as every result's is).
    json_path, markdown_path = ((out / "device_check.json", out / "README.md") if plan is FULL else
                                (out / "device_check_reduced.json", out / "device_check_reduced.md"))
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    markdown_path.write_text(text := markdown(report, json_path.name))
    print(text)
    print(f"wrote {json_path} and {markdown_path} in {report['seconds']:.0f} s")
    ok = not report["preflight"] and all(stage["status"] in ("ok", "skipped") for stage in report["stages"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
