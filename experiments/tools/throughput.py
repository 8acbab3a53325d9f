"""Throughput benchmark: env steps per second of each schedule, next to the env's raw stepping rate.

Each run is a real training run whose steady-state rate is read from its own ``metrics.csv`` past the
first ``--warmup`` fraction of its steps; right before it, the same env alone with random actions gives
the raw rate each run is reported against. The table shows medians over ``--repeats``. ``--against DIR``
also measures each run with the benchmark of another checkout (``git worktree add DIR REV``) right
after it here, and reports the ratio. docs/design.md says how and why.

Run specs are ``ALGO[:MODE][:N[w]][:Me][:BACKEND]``: N workers, M envs per worker, backend local or ray::

    python -m experiments.tools.throughput --env cartpole --runs single a2c:vector:8e a2c:workers:2w:1e \\
        a3c:hogwild:2w a3c:parameter_server:2w a3c:parameter_server:2w:ray --steps 200000
    python -m experiments.tools.throughput --runs single a2c:workers:2w:1e --repeats 3 --against /tmp/old
    python -m experiments.tools.throughput --env atari_pong --runs a2c:vector:16e --steps 20000 --sb3

``--sb3`` times Stable-Baselines3's A2C or PPO (``experiments.tools.sb3_peer``) on each one-learner spec's settings
right after it, over SB3's own Atari stack (``native``) or over our envs (``--sb3 ours``: only the learners differ).

Each multi-worker spec's row has its parallel efficiency, rate / (workers x the rate of the same schedule with one
worker: same algo, mode, backend and envs per worker, measured in this invocation), and the processes it keeps busy
(``experiments.sweep.busy_processes``) against this machine's cores, marked ``over`` where they outnumber them: such
a run's workers time-share cores, and its efficiency measures that. Where the invocation has no one-worker spec of a
schedule, the benchmark adds one and says so (a row marked ``+``, under ``baselines`` in the JSON, never measured
``--against`` or with ``--sb3``): an efficiency is meaningless without its denominator, and one taken from another
invocation would fold the machine's drift into it, so a researcher asking for ``a3c:hogwild:4w`` gets the column
filled at the price of one more run. ``--no-baselines`` skips that run and prints the efficiency as n/a.
``--steps-per-worker`` gives a run of N workers N times ``--steps``, so that at perfect scaling every run lasts as
long; ``--time-limit`` starts no run past it (``experiments.tools.device_check`` uses both). A run that gives no rate
(too few metrics rows, or an error) is listed under ``failed`` and the others go on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from algorithms import algorithm_modes, backends, schedule_for
from algorithms.config import EnvConfig, RunConfig
from algorithms.core.envs import make_env
from experiments.config import ConfigError, validate
from experiments.record import git_state
from experiments.sweep import busy_processes
from experiments.train import CONFIG_DIR, train

SB3_MODES = ("serial", "vector")  # one learner stepping its envs in lockstep: what SB3's A2C is
SPEC_PART = re.compile(r"(?P<count>\d+)(?P<unit>w|workers?|e|envs?)?")
NO_BASELINE = "n/a (no 1-worker run of this schedule)"


@dataclass
class RunSpec:
    algo: str
    mode: str
    num_workers: int | None = None
    num_envs: int | None = None
    backend: str = "local"

    @property
    def label(self) -> str:
        parts = [self.algo, self.mode]
        if self.num_workers is not None:
            parts.append(f"{self.num_workers}w")
        if self.num_envs is not None:
            parts.append(f"{self.num_envs}e")
        if self.backend != "local":
            parts.append(self.backend)
        return ":".join(parts)

    def overrides(self) -> list[str]:
        overrides = [f"algo={self.algo}", f"algo.mode={self.mode}"]
        if self.num_workers is not None:
            overrides.append(f"algo.num_workers={self.num_workers}")
        if self.num_envs is not None:
            overrides.append(f"algo.num_envs={self.num_envs}")
        if self.backend != "local":
            overrides.append(f"backend={self.backend}")
        return overrides


def parse_spec(text: str) -> RunSpec:
    """``ALGO[:MODE][:N[w]][:Me][:BACKEND]``; the mode defaults to the algorithm's first one, the backend to local."""
    modes, backend_names = algorithm_modes(), backends()
    algo, *rest = text.split(":")
    backend = "local"
    if rest and rest[-1] in backend_names:
        backend = rest.pop()
    if algo not in modes:
        raise ValueError(f"run spec {text!r}: unknown algorithm {algo!r} (one of {', '.join(modes)})")
    mode = modes[algo][0]
    if rest and not rest[0][:1].isdigit():
        mode = rest.pop(0)
        if mode not in modes[algo]:
            raise ValueError(f"run spec {text!r}: algo {algo} has modes {', '.join(modes[algo])}, not {mode!r}")
    spec = RunSpec(algo, mode, backend=backend)
    for part in rest:
        match = SPEC_PART.fullmatch(part)
        if match is None:
            raise ValueError(f"run spec {text!r}: cannot read {part!r}; expected N or Nw (workers), Ne (envs), "
                             f"or a backend ({', '.join(backend_names)}) last")
        if (match["unit"] or "w").startswith("w"):
            spec.num_workers = int(match["count"])
        else:
            spec.num_envs = int(match["count"])
    return spec


def raw_env_rate(env_cfg: DictConfig, seconds: float, seed: int = 0) -> float:
    """Steps per second of one env with random actions and nothing else, resetting at episode ends."""
    env = make_env(cast(EnvConfig, env_cfg))  # a structured config of the EnvConfig schema reads as one
    try:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        steps, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            for _ in range(200):  # check the clock every 200 steps, not every step
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                if terminated or truncated:
                    env.reset()
            steps += 200
        return steps / elapsed
    finally:
        env.close()


def steady_rate(run_dir: Path, warmup: float) -> float:
    """Env steps per second between the first metrics row past ``warmup`` of the run's steps and the last."""
    import csv

    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = [(int(row["env_steps"]), float(row["wall_time"])) for row in csv.DictReader(handle)]
    if len(rows) < 2:
        raise RuntimeError(f"{run_dir}: too few metrics rows for a steady-state rate; lower log_interval")
    last_steps, last_wall = rows[-1]
    first_steps, first_wall = next((steps, wall) for steps, wall in rows if steps >= warmup * last_steps)
    if first_steps == last_steps:
        first_steps, first_wall = rows[-2]
    return (last_steps - first_steps) / (last_wall - first_wall)


@dataclass
class Measurement:
    spec: str
    algo: str
    mode: str
    num_workers: int
    num_envs: int
    backend: str
    env_steps: int = 0  # each run's total_env_steps
    busy_processes: int = 1  # CPU-bound processes the run keeps busy (experiments.sweep.busy_processes)
    added: bool = False  # a one-worker baseline the benchmark added for an efficiency, not asked for
    errors: list[str] = field(default_factory=list)  # why a repeat gave no rate (the others go on)
    status: list[str] = field(default_factory=list)
    steady_sps: list[float] = field(default_factory=list)  # one per repeat
    overall_sps: list[float] = field(default_factory=list)  # including start-up
    raw_sps: list[float] = field(default_factory=list)  # measured right before each repeat
    against_sps: list[float] = field(default_factory=list)  # in the --against checkout, right after each repeat
    sb3_sps: list[float] = field(default_factory=list)  # Stable-Baselines3's peer (--sb3), right after each repeat

    def summary(self) -> dict[str, Any]:
        steady, raw = statistics.median(self.steady_sps), statistics.median(self.raw_sps)
        against = statistics.median(self.against_sps) if self.against_sps else None
        sb3 = statistics.median(self.sb3_sps) if self.sb3_sps else None
        return {**asdict(self), "steady_sps_median": steady, "raw_sps_median": raw,
                "sb3_sps_median": sb3, "vs_sb3": None if sb3 is None else steady / sb3,
                "fraction_of_raw": statistics.median(s / r for s, r in zip(self.steady_sps, self.raw_sps,
                                                                            strict=True)),
                "against_sps_median": against, "vs_against": None if against is None else steady / against}


def benchmark_module(checkout: Path) -> str | None:
    """This benchmark's module in another checkout of the project: ``experiments.tools.throughput``, or
    ``experiments.throughput`` in commits before the tools had a folder of their own; None if neither is there."""
    for module in ("experiments.tools.throughput", "experiments.throughput"):
        if (checkout / (module.replace(".", "/") + ".py")).is_file():
            return module
    return None


@dataclass(frozen=True)
class OtherCheckout:
    """Another checkout of this project (``--against``), whose own benchmark measures one spec at a time."""

    path: Path
    options: tuple[str, ...]  # --env, --raw-seconds, --warmup and --set, as given here

    def steady_rate(self, spec: str, steps: int) -> float:
        with tempfile.TemporaryDirectory(prefix="svrl-throughput-against-") as scratch:
            output = Path(scratch) / "throughput.json"
            module = benchmark_module(self.path)
            assert module is not None  # checked when the arguments were read
            command = [sys.executable, "-m", module, "--runs", spec, "--repeats", "1", "--steps", str(steps),
                       *self.options, "--json", str(output)]
            # PYTHONPATH (and the working directory) make the subprocess import that checkout's code, not this one.
            result = subprocess.run(command, cwd=self.path, capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": str(self.path)})
            if result.returncode != 0:
                raise SystemExit(f"error: run {spec} in {self.path} failed with exit status {result.returncode}:\n"
                                 f"{result.stderr[-4000:]}")
            return json.loads(output.read_text())["runs"][0]["steady_sps_median"]


def compose_run(spec: RunSpec, env: str, steps: int, log_rows: int, extra: list[str]) -> DictConfig:
    overrides = [*spec.overrides(), f"env={env}", f"total_env_steps={steps}",
                 f"log_interval={max(1, steps // log_rows)}", f"checkpoint_interval={steps}",
                 "logger.wandb.mode=disabled", "quiet=true", *extra]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def schedule_key(algo: str, mode: str, backend: str, num_envs: int) -> tuple[str, str, str, int]:
    """What a one-worker baseline shares with the multi-worker runs it is the denominator of."""
    return algo, mode, backend, num_envs


def is_multi_worker(algo: str, mode: str, backend: str, num_workers: int) -> bool:
    """More than one worker, each a process (or Ray actor) of its own: a simulated run's workers are virtual."""
    return num_workers > 1 and schedule_for(algo, mode, backend).worker_processes


def with_baselines(specs: list[RunSpec], configs: list[DictConfig],
                   compose_spec: Callable[[RunSpec], DictConfig]) -> tuple[list[RunSpec], list[DictConfig], list[bool]]:
    """The specs with, right before the first multi-worker spec of each schedule that has no one-worker spec here,
    that schedule's one-worker spec (same envs per worker); and which of them were added. A baseline the config
    validation refuses is left out (its schedule's efficiency is then n/a)."""
    keys = [schedule_key(cfg.algo.name, cfg.algo.mode, cfg.backend, cfg.algo.num_envs) for cfg in configs]
    have = {key for key, cfg in zip(keys, configs, strict=True) if cfg.algo.num_workers == 1}
    planned: list[tuple[RunSpec, DictConfig, bool]] = []
    for spec, cfg, key in zip(specs, configs, keys, strict=True):
        if is_multi_worker(cfg.algo.name, cfg.algo.mode, cfg.backend, cfg.algo.num_workers) and key not in have:
            have.add(key)
            baseline = RunSpec(spec.algo, spec.mode, num_workers=1, num_envs=spec.num_envs, backend=spec.backend)
            baseline_cfg = compose_spec(baseline)
            try:
                validate(baseline_cfg)
                planned.append((baseline, baseline_cfg, True))
            except ConfigError as error:
                print(f"note: no 1-worker baseline for {spec.label}: {error}", file=sys.stderr)
        planned.append((spec, cfg, False))
    return [spec for spec, _, _ in planned], [cfg for _, cfg, _ in planned], [added for _, _, added in planned]


def compose_spec(spec: RunSpec, env: str, steps: int, extra: list[str], per_worker: bool = False) -> DictConfig:
    """A spec's run config: ``steps`` env steps, or ``steps`` per worker with ``per_worker``."""
    cfg = compose_run(spec, env, steps, log_rows=50, extra=extra)
    if per_worker and cfg.algo.num_workers != 1:
        cfg = compose_run(spec, env, steps * cfg.algo.num_workers, log_rows=50, extra=extra)
    return cfg


def measure(specs: list[RunSpec], env: str, steps: int, repeats: int, raw_seconds: float, warmup: float,
            extra: list[str], keep: Path | None, against: OtherCheckout | None = None,
            sb3: str | None = None, baselines: bool = True, per_worker: bool = False,
            deadline: float | None = None) -> list[Measurement]:
    """Run every spec ``repeats`` times, each run followed by the same spec in ``against``'s checkout and, for
    the one-learner specs, by Stable-Baselines3's A2C or PPO on the same settings (``sb3``: whose envs). With
    ``baselines``, a multi-worker schedule's one-worker run is added where no spec asks for it (``with_baselines``);
    with ``per_worker``, ``steps`` are per worker. No run starts after ``deadline`` (``time.monotonic``): those
    left are returned without rates."""
    configs = [compose_spec(spec, env, steps, extra, per_worker) for spec in specs]
    for spec, cfg in zip(specs, configs, strict=True):  # every config checked before the first run
        try:
            validate(cfg)
        except ConfigError as error:
            raise SystemExit(f"error: run {spec.label}: {error}") from error
    added = [False] * len(specs)
    if baselines:
        specs, configs, added = with_baselines(specs, configs,
                                               lambda spec: compose_spec(spec, env, steps, extra, per_worker))
    results = [Measurement(spec.label, cfg.algo.name, cfg.algo.mode, cfg.algo.num_workers, cfg.algo.num_envs,
                           cfg.backend, cfg.total_env_steps, busy_processes(cfg), is_added)
               for spec, cfg, is_added in zip(specs, configs, added, strict=True)]
    for result in results:
        if result.added:
            print(f"  {result.spec}: added, the 1-worker baseline of this schedule's parallel efficiency",
                  file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="svrl-throughput-") as scratch:
        root = keep or Path(scratch)
        for repeat in range(repeats):
            for index, (cfg, result) in enumerate(zip(configs, results, strict=True)):
                if deadline is not None and time.monotonic() > deadline:
                    print(f"  time limit reached: {result.spec} repeat {repeat + 1}/{repeats} and the runs after it "
                          "not started", file=sys.stderr, flush=True)
                    return results
                run_dir = root / f"{index:02d}_{result.spec.replace(':', '-')}_r{repeat}"
                try:
                    measure_once(cfg, result, run_dir, raw_seconds, warmup, f"repeat {repeat + 1}/{repeats}")
                except Exception as error:  # one run that gives no rate must not cost the others theirs
                    del result.raw_sps[len(result.steady_sps):], result.status[len(result.steady_sps):]
                    result.errors.append(f"{type(error).__name__}: {error}")
                    print(f"  {result.spec} repeat {repeat + 1}/{repeats}: no rate: {result.errors[-1]}",
                          file=sys.stderr, flush=True)
                    continue
                # Right after the run here, so that the machine's drift stays out of the ratio.
                if against is not None and not result.added:
                    result.against_sps.append(against.steady_rate(result.spec, result.env_steps))
                    print(f"  {result.spec} repeat {repeat + 1}/{repeats} in {against.path}: "
                          f"{result.against_sps[-1]:,.0f} steps/s", file=sys.stderr, flush=True)
                if sb3 is not None and result.mode in SB3_MODES and not result.added:
                    from experiments.tools.sb3_peer import peer_steady_rate

                    result.sb3_sps.append(peer_steady_rate(cfg, warmup, sb3))
                    print(f"  {result.spec} repeat {repeat + 1}/{repeats} in Stable-Baselines3 ({sb3} envs): "
                          f"{result.sb3_sps[-1]:,.0f} steps/s", file=sys.stderr, flush=True)
    return results


def measure_once(cfg: DictConfig, result: Measurement, run_dir: Path, raw_seconds: float, warmup: float,
                 repeat: str) -> None:
    """One run of ``cfg`` into ``run_dir``, the raw env rate right before it; its rates appended to ``result``."""
    result.raw_sps.append(raw_env_rate(cfg.env, raw_seconds))
    started = time.perf_counter()
    record = train(cfg, str(run_dir))
    elapsed = time.perf_counter() - started
    result.status.append(record.status)
    # A simulated run's record keeps virtual seconds; what it costs here is the real rate.
    result.steady_sps.append(record.env_steps / elapsed if cfg.backend == "simulated"
                             else steady_rate(run_dir, warmup))
    result.overall_sps.append(record.summary()["sps"])
    print(f"  {result.spec} {repeat}: {result.steady_sps[-1]:,.0f} steps/s (raw env {result.raw_sps[-1]:,.0f})",
          file=sys.stderr, flush=True)


def ray_call_floor(cfg: DictConfig, calls: int = 2000) -> dict[str, float]:
    """The floor under a Ray update's overhead on this machine: the round trip, in ms, of one actor's call to
    another that answers at once, with nothing and with the model's parameters as bytes each way (what a
    push and its answer carry), median of three batches of ``calls`` after a warm-up, on a local cluster."""
    import ray

    from algorithms.core.model import build_spaces_model

    class Echo:
        def echo(self, payload: Any) -> Any:
            return payload

    class Caller:
        def round_trip_ms(self, target: Any, payload: Any, calls: int) -> float:
            for _ in range(calls // 10):
                ray.get(target.echo.remote(payload))
            started = time.perf_counter()
            for _ in range(calls):
                ray.get(target.echo.remote(payload))
            return (time.perf_counter() - started) / calls * 1e3

    # float32; the run's structured config (experiments.config.Config) reads as the RunConfig it extends
    parameters = bytes(4 * build_spaces_model(cast(RunConfig, cfg)).flat_params.numel())
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    try:
        # Ray actor handles, typed Any: ray's types give their methods no .remote
        target: Any = ray.remote(Echo).options(num_cpus=0).remote()
        caller: Any = ray.remote(Caller).options(num_cpus=0).remote()
        floor = {label: statistics.median(ray.get(caller.round_trip_ms.remote(target, payload, calls))
                                          for _ in range(3))
                 for label, payload in (("empty", None), ("parameters", parameters))}
        return {**floor, "parameter_bytes": len(parameters)}
    finally:
        if started_here:
            ray.shutdown()


def local_ratio(result: Measurement, results: list[Measurement]) -> float | None:
    """A non-local run's steady rate over that of the same schedule on the local backend in this benchmark."""
    if result.backend == "local":
        return None
    twin = next((other for other in results if other.backend == "local" and (other.algo, other.mode,
                 other.num_workers, other.num_envs) == (result.algo, result.mode, result.num_workers,
                                                        result.num_envs)), None)
    if twin is None:
        return None
    return statistics.median(result.steady_sps) / statistics.median(twin.steady_sps)


def efficiency(result: Measurement, results: list[Measurement]) -> float | None:
    """A multi-worker run's steady rate over ``num_workers`` times that of the same schedule's one-worker run in
    ``results`` (``schedule_key``); None for a run that is not multi-worker, or whose schedule has no such run."""
    if not is_multi_worker(result.algo, result.mode, result.backend, result.num_workers):
        return None
    key = schedule_key(result.algo, result.mode, result.backend, result.num_envs)
    baseline = next((other for other in results if other.num_workers == 1 and other.steady_sps
                     and schedule_key(other.algo, other.mode, other.backend, other.num_envs) == key), None)
    if baseline is None:
        return None
    return statistics.median(result.steady_sps) / (result.num_workers * statistics.median(baseline.steady_sps))


def scaling(result: Measurement, results: list[Measurement], cores: int) -> dict[str, Any]:
    """The JSON's efficiency and busy-process fields of one run (``efficiency`` None where it is n/a)."""
    multi = is_multi_worker(result.algo, result.mode, result.backend, result.num_workers)
    value = efficiency(result, results)
    return {"efficiency": value, "efficiency_note": NO_BASELINE if multi and value is None else None,
            "cores": cores, "oversubscribed": result.busy_processes > cores}


def table_cells(result: Measurement, results: list[Measurement], cores: int, against: bool,
                with_sb3: bool) -> list[str]:
    """One row's cells, in the order of ``table_headers``."""
    summary, fields = result.summary(), scaling(result, results, cores)
    ratios = [local_ratio(result, results), *([summary["vs_against"]] if against else []),
              *([summary["vs_sb3"]] if with_sb3 else [])]
    multi = is_multi_worker(result.algo, result.mode, result.backend, result.num_workers)
    value = fields["efficiency"]
    shown = f"{value:.2f}" if value is not None else (NO_BASELINE if multi else "")
    busy = f"{result.busy_processes}/{cores}" + (" over" if fields["oversubscribed"] else "")
    return [result.spec + (" +" if result.added else ""), str(result.num_workers), str(result.num_envs),
            f"{summary['steady_sps_median']:,.0f}", f"{summary['raw_sps_median']:,.0f}",
            f"{summary['fraction_of_raw']:.1%}", shown, busy,
            *("" if ratio is None else f"{ratio:.2f}" for ratio in ratios)]


def table_headers(against: str | None, with_sb3: bool) -> list[str]:
    return ["run", "workers", "envs", "steps/s", "raw env", "of raw", "efficiency", "busy/cores", "vs local",
            *([against] if against else []), *(["vs SB3"] if with_sb3 else [])]


def table_notes(results: list[Measurement], cores: int) -> list[str]:
    """The lines under a table that say what its marks mean, only those that occur in it."""
    notes = []
    if any(result.added for result in results):
        notes.append("+ added by the benchmark: the 1-worker run its schedule's efficiency is measured against")
    if any(result.busy_processes > cores for result in results):
        notes.append(f"over: more busy processes than the {cores} cores here; its workers time-share them, and its "
                     "rate and efficiency measure that")
    return notes


def table(results: list[Measurement], against: str | None = None, cores: int | None = None) -> str:
    """One row per spec, aligned for a terminal; ``against`` heads a column: each rate over the ``--against``
    checkout's; with ``--sb3`` a last column has each rate over Stable-Baselines3's."""
    cores = cores or os.cpu_count() or 1
    with_sb3 = any(result.sb3_sps for result in results)
    headers = table_headers(against, with_sb3)
    rows = [table_cells(result, results, cores, against is not None, with_sb3) for result in results]
    widths = [max(len(text) for text in column) for column in zip(headers, *rows, strict=True)]
    widths = [max(width, 36 if index == 0 else 7) for index, width in enumerate(widths)]

    def line(cells: list[str]) -> str:
        return " ".join(cell.ljust(width) if index == 0 else cell.rjust(width)
                        for index, (cell, width) in enumerate(zip(cells, widths, strict=True)))

    header = line(headers)
    return "\n".join([header, "-" * len(header), *map(line, rows), *table_notes(results, cores)])


def markdown_table(results: list[Measurement], against: str | None = None, cores: int | None = None) -> str:
    """The same table in Markdown, its notes below it."""
    cores = cores or os.cpu_count() or 1
    with_sb3 = any(result.sb3_sps for result in results)
    headers = table_headers(against, with_sb3)
    lines = ["| " + " | ".join(headers) + " |", "| --- | " + " | ".join("---:" for _ in headers[1:]) + " |"]
    for result in results:
        cells = table_cells(result, results, cores, against is not None, with_sb3)
        cells[0] = f"`{result.spec}`" + (" +" if result.added else "")
        lines.append("| " + " | ".join(cells) + " |")
    notes = table_notes(results, cores)
    return "\n".join(lines + ([""] + [f"{note}." for note in notes] if notes else []))


def machine() -> dict[str, Any]:
    import torch

    return {"host": platform.node(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="SPEC",
                        help="ALGO[:MODE][:N[w]][:Me][:BACKEND], e.g. single a2c:vector:8e a2c:workers:2w:1e "
                             "a3c:hogwild:2w a3c:parameter_server:2w:ray")
    parser.add_argument("--env", default="cartpole", help="env config group (conf/env), default cartpole")
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per run (default 200000)")
    parser.add_argument("--steps-per-worker", action="store_true",
                        help="--steps is per worker: a run of N workers takes N times as many, so that at perfect "
                             "scaling every run lasts about as long")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no run later than this many seconds after the benchmark started; the table "
                             "has the runs made, the JSON lists the others under not_run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each spec; the table shows medians")
    parser.add_argument("--raw-seconds", type=float, default=3.0, help="seconds of raw env stepping before each run")
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="fraction of each run's steps left out of its steady-state rate (default 0.2)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. model.hidden_sizes=[64,64] algo.n_steps=5")
    parser.add_argument("--json", type=Path, default=Path("throughput.json"), help="where to write the results")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table here in Markdown")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="do not add the 1-worker run of a multi-worker schedule that has none among --runs; "
                             "its efficiency is then n/a")
    parser.add_argument("--keep", type=Path, help="keep the runs' directories here instead of a temporary one")
    parser.add_argument("--ray-calls", type=int, default=2000, metavar="N",
                        help="with a Ray spec: round trips in each of the three batches that time a bare Ray call "
                             "(default 2000)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="also measure every run with the benchmark of this checkout of another commit (e.g. "
                             "made with git worktree add DIR REV), right after it here; report the ratio")
    parser.add_argument("--sb3", nargs="?", const="native", choices=("native", "ours"),
                        help="also time Stable-Baselines3's A2C or PPO (a dev dependency) on each single, "
                             "a2c:vector and ppo:vector spec's settings, right after it: over SB3's own Atari stack "
                             "(native, the default) or over our envs (ours: only the learners differ); report the "
                             "ratio")
    args = parser.parse_args(argv)
    try:
        args.specs = [parse_spec(text) for text in args.runs]
    except ValueError as error:
        parser.error(str(error))
    if args.against is not None and benchmark_module(args.against) is None:
        parser.error(f"--against {args.against}: not a checkout of this project (no experiments/tools/throughput.py)")
    return args


def other_checkout(args: argparse.Namespace) -> OtherCheckout | None:
    if args.against is None:
        return None
    options = ("--env", args.env, "--raw-seconds", str(args.raw_seconds),
               "--warmup", str(args.warmup), *(["--set", *args.set] if args.set else []))
    return OtherCheckout(args.against.resolve(), options)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    against = other_checkout(args)
    started = machine()
    measured = measure(args.specs, args.env, args.steps, args.repeats, args.raw_seconds, args.warmup, args.set,
                       args.keep, against, args.sb3, args.baselines, args.steps_per_worker, deadline)
    results = [result for result in measured if result.steady_sps]
    floor = None
    if any(spec.backend == "ray" for spec in args.specs):
        floor = ray_call_floor(compose_run(args.specs[0], args.env, args.steps, log_rows=50, extra=args.set),
                               args.ray_calls)
    against_header = None if against is None else f"vs {against.path.name}"
    checkout = None if against is None else {"dir": str(against.path), **git_state(against.path)}
    cores = os.cpu_count() or 1
    print(table(results, against_header, cores))
    failed = {result.spec: result.errors[-1] for result in measured if result.errors and not result.steady_sps}
    not_run = [result.spec for result in measured if not result.steady_sps and result.spec not in failed]
    for spec, error in failed.items():
        print(f"no rate for {spec}: {error}")
    if not_run:
        print(f"not run, past --time-limit {args.time_limit:g} s: {', '.join(not_run)}")
    if floor is not None:
        print(f"Ray actor-to-actor call round trip here: {floor['empty']:.2f} ms empty, {floor['parameters']:.2f} ms "
              f"with the model's {floor['parameter_bytes']:,} bytes of parameters each way")
    if args.sb3 is not None:
        print(f"vs SB3: steady rate here over Stable-Baselines3's A2C or PPO on the same settings ({args.sb3} envs), "
              "timed right after each run here")
    if checkout is not None:
        dirty = " with uncommitted changes" if checkout["git_dirty"] else ""
        print(f"{against_header}: steady rate here over that of {checkout['dir']} (commit "
              f"{str(checkout['git_commit'])[:10]}{dirty}), measured right after each run here")
    payload = {"env": args.env, "steps": args.steps, "steps_per_worker": args.steps_per_worker,
               "repeats": args.repeats, "warmup": args.warmup, "time_limit": args.time_limit,
               "not_run": not_run, "failed": failed,
               "overrides": args.set, "machine": started, "load_average_after": os.getloadavg(),
               "ray_call_round_trip_ms": floor,
               "against": checkout, "sb3_envs": args.sb3,
               "runs": [run_json(result, results, cores) for result in results if not result.added],
               "baselines": [run_json(result, results, cores) for result in results if result.added]}
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(markdown_table(results, against_header, cores) + "\n")
        print(f"wrote {args.markdown}")


def run_json(result: Measurement, results: list[Measurement], cores: int) -> dict[str, Any]:
    """One run's entry in the JSON: its measurements, medians and ratios, efficiency and busy processes."""
    return {**result.summary(), "vs_local": local_ratio(result, results), **scaling(result, results, cores)}


if __name__ == "__main__":
    main()
