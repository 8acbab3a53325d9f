"""Measure ``backend=simulated``'s costs on this machine and write them as a ``sim`` profile.

Each cost is the median of repeated timings of the real operation, for the run config the overrides compose
(its env, model, ``n_steps`` and ``num_envs``):

- ``forward_s``: one acting forward pass over a worker's ``num_envs`` observations;
- ``env_step_s``: the rest of collecting a rollout, per env step: the env's step and the collector's bookkeeping
  (a rollout's time less its ``n_steps`` forward passes, over its ``n_steps * num_envs`` steps);
- ``backward_s``: the loss, its gradient and the clipping for one rollout (``compute_gradients``);
- ``apply_s``: the optimizer's step with one gradient;
- ``message_s`` and ``byte_s``: half the round trip of a message through a process pipe, fitted over an empty
  message and one of the model's parameters (``latency_s`` stays 0: one machine).

The profile is a YAML file of ``sim.*`` values; written to ``conf/sim/NAME.yaml`` it is selected with
``+sim=NAME``, and values given on the command line still win::

    python -m experiments.calibrate --out conf/sim/cartpole_here.yaml env=cartpole algo=a3c
    python -m experiments.train algo=a3c backend=simulated algo.num_workers=16 +sim=cartpole_here
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from algorithms.learner import LocalLearner, compute_gradients, make_optimizer
from algorithms.protocol import to_wire
from experiments.config import ConfigError, validate
from experiments.train import CONFIG_DIR


def median_seconds(operation: Callable[[], Any], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def echo(conn: Any) -> None:
    """The far end of the pipe: send every message back until ``None``."""
    while (message := conn.recv()) is not None:
        conn.send(message)


def message_costs(size: int, repeats: int) -> tuple[float, float]:
    """(seconds per message, seconds per byte) of a one-way pipe message, from round trips of 0 and ``size``
    bytes between two processes."""
    context = mp.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=echo, args=(there,), daemon=True)
    process.start()
    try:
        def round_trip(payload: bytes) -> float:
            return median_seconds(lambda: (here.send(payload), here.recv()), repeats) / 2

        round_trip(b"")  # the first messages wake the process up
        empty, full = round_trip(b""), round_trip(bytes(size))
        return empty, max(full - empty, 0.0) / size
    finally:
        here.send(None)
        process.join(timeout=10)


def measure(cfg: DictConfig, repeats: int) -> dict[str, float]:
    torch.set_num_threads(cfg.torch_threads)
    learner = LocalLearner(cfg, 0, 0)
    try:
        model, collector, algo = learner.model, learner.collector, cfg.algo
        collector.collect(model)
        observations = collector.current_obs
        rng = np.random.default_rng(0)
        optimizer = make_optimizer(model, algo)
        message_s, byte_s = message_costs(len(to_wire(model.flat_params)), repeats)
        forward_s = median_seconds(lambda: model.act(observations, rng), repeats)
        rollout_s = median_seconds(lambda: collector.collect(model), repeats)
        return {
            "env_step_s": max(rollout_s - algo.n_steps * forward_s, 0.0) / (algo.n_steps * algo.num_envs),
            "forward_s": forward_s,
            "backward_s": median_seconds(lambda: compute_gradients(model, collector.rollout, cfg.algo), repeats),
            "apply_s": median_seconds(optimizer.step, repeats),
            "message_s": message_s,
            "byte_s": byte_s,
            "latency_s": 0.0,
        }
    finally:
        learner.close()


def profile_text(costs: dict[str, float], overrides: list[str]) -> str:
    lines = [f"# backend=simulated costs measured by experiments.calibrate on {platform.node()} "
             f"({platform.processor() or platform.machine()}), {dt.date.today().isoformat()},",
             f"# for: {' '.join(overrides) or 'the default config'}. Select with +sim=<this file's name>.",
             *(f"{name}: {value:.6g}" for name, value in costs.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides of the run to calibrate for (env=..., algo=...)")
    parser.add_argument("--out", type=Path, required=True, help="the profile to write (conf/sim/NAME.yaml)")
    parser.add_argument("--repeats", type=int, default=200, help="timings per cost (their median is kept)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be positive")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)
    try:
        validate(cfg)
    except ConfigError as error:
        parser.exit(2, f"error: invalid config: {error}\n")
    text = profile_text(measure(cfg, args.repeats), args.overrides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
