"""Measure ``backend=simulated``'s costs on this machine and write them as a ``sim`` profile.

The costs are those of the run config the overrides compose (its env, model, ``n_steps`` and ``num_envs``).
Those of an update are timed where they are paid, by the timing hooks (``algorithms.infra.timing``) of the loop that
trains: a one-worker a3c run's (its worker's sync, rollout, gradient and step, then the update's rows recorded into a
scratch run record), each cost the mean over ``--repeats`` updates past a warm-up:

- ``env_step_s``: the rest of collecting a rollout, per env step: the env's step and the collector's bookkeeping
  (a rollout's time less its ``n_steps`` forward passes, over its ``n_steps * num_envs`` steps);
- ``backward_s``: the loss, its gradient and the clipping for one rollout (the update rule's gradient);
- ``apply_s``: the optimizer's step with one gradient;
- ``update_s``: the rest of the update, its bookkeeping: syncing the local model, the learning rate and the
  non-finite guards, copying the gradient into the optimizer, and recording the update's and episodes' rows (each
  update's time less its rollout, gradient and step).

The others are medians of ``--repeats`` timings of the operation alone:

- ``forward_s``: one acting forward pass over a worker's ``num_envs`` observations;
- ``byte_s``: per byte of a message through a process pipe, fitted over round trips of an empty message and one
  of the model's parameters' size;
- ``message_s``: the rest of a message: half the round trip of a real parameter-server exchange (a worker's
  :class:`~algorithms.infra.messages.Push` of its gradient, answered with a :class:`~algorithms.infra.messages.Reply` of
  parameters, both pickled, converted to and from the wire and copied into the model as the real ones are) less
  its bytes (``latency_s`` stays 0: one machine).

impala's actors and learner are timed by the hooks of their own loops (:func:`time_impala`): ``unroll_s``, an actor's
unroll beyond collecting it, and ``learn_s`` and ``learn_unroll_s``, a learner update's fixed part and its part per
unroll of the batch.

The profile is a YAML file of ``sim.*`` values; written to ``conf/sim/NAME.yaml`` it is selected with
``+sim=NAME``, and values given on the command line still win::

    python -m experiments.tools.calibrate --out conf/sim/cartpole_here.yaml env=cartpole algo=a3c
    python -m experiments.train algo=a3c backend=simulated algo.num_workers=16 +sim=cartpole_here
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from algorithms.config import RunConfig
from algorithms.infra.messages import (
    Push,
    Reply,
    SlotFree,
    UnrollReady,
    from_wire,
    to_wire,
)
from algorithms.infra.timing import TIMINGS
from algorithms.schedules.actor_learner import UnrollLearner
from algorithms.schedules.global_model import GlobalModel
from algorithms.schedules.worker import RolloutWorker
from algorithms.transports.local.actor_learner import SlotQueue, actor_loop
from algorithms.transports.local.asynchronous import train_one_worker
from experiments.config import ConfigError, validate
from experiments.record import RunRecord
from experiments.train import CONFIG_DIR


def median_seconds(operation: Callable[[], Any], repeats: int) -> float:
    return statistics.median(timed_seconds(operation) for _ in range(repeats))


def echo(conn: Any) -> None:
    """The far end of the pipe, until ``None``: answer a :class:`Push` as the parameter server does, with a
    :class:`Reply` of parameters (here the gradient's values) taken from and put on the wire; send anything else
    back."""
    while (message := conn.recv()) is not None:
        if isinstance(message, Push):
            message = Reply(message.version_at_sync + 1, to_wire(from_wire(message.gradient)), False)
        conn.send(message)


def message_costs(rollouts: RolloutWorker, repeats: int) -> tuple[float, float]:
    """(seconds per message, seconds per byte) of a one-way message between two processes: bytes from round
    trips of empty and parameter-sized payloads, the rest from round trips of the real exchange, a ``Push`` of
    ``rollouts``' gradient (with its last rollout's statistics and episodes) answered by a ``Reply``."""
    model = rollouts.model
    episodes, stats = rollouts.compute_gradient()
    size = len(to_wire(model.flat_params))
    context = mp.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=echo, args=(there,), daemon=True)
    process.start()
    try:
        def round_trip(payload: bytes) -> float:
            def send_and_receive() -> None:
                here.send(payload)
                here.recv()

            return median_seconds(send_and_receive, repeats)

        def exchange() -> None:  # the worker's side of parameter_server_worker
            here.send(Push(0, 0, to_wire(model.flat_grads), stats, episodes, rollouts.steps, None, time.monotonic()))
            model.flat_params.copy_(from_wire(here.recv().params))

        round_trip(b"")  # the first messages wake the process up
        empty, full = round_trip(b""), round_trip(bytes(size))
        byte_s = max(full - empty, 0.0) / (2 * size)
        real = median_seconds(exchange, repeats)
        return max(real / 2 - size * byte_s, 0.0), byte_s
    finally:
        here.send(None)
        process.join(timeout=10)


def measure(cfg: DictConfig, repeats: int) -> dict[str, float]:
    torch.set_num_threads(cfg.torch_threads)
    # The run's structured config (experiments.config.Config), which reads as the RunConfig it extends.
    rollouts = RolloutWorker(cast(RunConfig, cfg), 0, 0)
    try:
        model, collector = rollouts.model, rollouts.collector
        collector.collect(model)
        observations, rng = collector.current_obs, np.random.default_rng(0)
        assert observations is not None  # collected
        forward_s = median_seconds(lambda: model.act(observations, rng), repeats)
        message_s, byte_s = message_costs(rollouts, repeats)
    finally:
        rollouts.close()
    loop, algo = time_updates(cfg, repeats), cfg.algo
    return {
        "env_step_s": max(loop["rollout"] - algo.n_steps * forward_s, 0.0) / (algo.n_steps * algo.num_envs),
        "forward_s": forward_s,
        "backward_s": loop["gradient"],
        "apply_s": loop["step"],
        "message_s": message_s,
        "byte_s": byte_s,
        "latency_s": 0.0,
        "update_s": loop["rest"],
        **time_impala(cfg, repeats),
    }


def time_updates(cfg: DictConfig, updates: int) -> dict[str, float]:
    """Mean seconds of the parts of an update, from the timing hooks of the loop that trains a one-worker a3c run
    (``train_one_worker``: its worker's sync, rollout, gradient and step, then the update's rows recorded), run with
    ``cfg``'s env, model and rollout for ``updates`` updates past a warm-up, into a scratch run record.
    ``rollout``: collecting one; ``gradient``: the update rule's gradient; ``step``: the optimizer's step; ``rest``:
    everything else in the update (syncing, the learning rate and guards, the gradient's copy, recording the rows),
    the update's whole time less its three parts."""
    warmup = max(2, updates // 4)
    with (scratch_run(cfg, {"name": "a3c", "mode": "hogwild", "num_workers": 1},
                      (warmup + updates) * cfg.algo.n_steps * cfg.algo.num_envs) as (run_cfg, record),
          TIMINGS.recording() as seconds):
        train_one_worker(run_cfg, record, GlobalModel(run_cfg))
    means = {name: statistics.fmean(seconds[name][warmup:]) for name in ("rollout", "gradient", "step", "update")}
    parts = {name: means[name] for name in ("rollout", "gradient", "step")}
    return {**parts, "rest": max(means["update"] - sum(parts.values()), 0.0)}


@contextlib.contextmanager
def scratch_run(cfg: DictConfig, algo: dict[str, Any], env_steps: int) -> Iterator[tuple[RunConfig, RunRecord]]:
    """``cfg`` as a one-process local run of ``algo`` over ``env_steps``, with a run record in a scratch directory
    (no W&B, no evaluation), for timing its update path."""
    timed = OmegaConf.merge(cfg, {
        "algo": algo, "backend": "local", "device": "cpu", "total_env_steps": env_steps, "resume": False,
        "quiet": True, "eval": {"episodes": 0}, "logger": {"wandb": {"mode": "disabled"}}})
    assert isinstance(timed, DictConfig)  # merged into a DictConfig
    with (tempfile.TemporaryDirectory(prefix="svrl-calibrate-") as scratch,
          contextlib.redirect_stdout(sys.stderr),  # the record's summary line: stdout is the profile's
          RunRecord(scratch, timed) as record):
        yield RunConfig.from_config(OmegaConf.to_object(timed)), record


def discard(conn: Any) -> None:
    """The far end of the pipe: say it is reading (a pipe whose reader is still starting fills up and blocks its
    writer), then read and drop every message, until ``None``."""
    conn.send("reading")
    while conn.recv() is not None:
        pass


class HandBack:
    """Slots handed back through a pipe, as a learner's supervisor hands them to an actor."""

    def __init__(self, conn: Any):
        self.conn = conn

    def send(self, _worker: int, message: Any) -> None:
        self.conn.send(message)


LEARNER_BATCHES = (1, 2, 4, 8)


def time_impala(cfg: DictConfig, repeats: int) -> dict[str, float]:
    """impala's own costs from the timing hooks of its real loops, with ``cfg``'s env, model and rollout.
    ``unroll_s``: an actor's unroll beyond collecting it (``actor_loop``'s: reading the published parameters, the
    behaviour log-probabilities, the slot write and the announcement), the mean over ``repeats`` unrolls past a
    warm-up. ``learn_s`` and ``learn_unroll_s``: the least-squares line through the mean seconds of a learner update
    (:meth:`~algorithms.transports.local.actor_learner.SlotQueue.update`: gathering the batch, handing its slots back,
    the corrected loss and step, publishing, recording the rows) at batch sizes 1, 2, 4 and 8."""
    warmup, depth = max(10, repeats // 4), max(LEARNER_BATCHES)  # each batch size's first updates are slower
    context = mp.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=discard, args=(there,), daemon=True)
    process.start()
    try:
        here.recv()
        with scratch_run(cfg, {"name": "impala", "mode": "actor_learner", "num_workers": 1, "queue_depth": depth,
                               "wait_for_update": False}, 10**12) as (run_cfg, record):
            queue = SlotQueue(run_cfg, UnrollLearner(run_cfg, record, GlobalModel(run_cfg)))
            with TIMINGS.recording() as seconds:
                announced = run_actor(run_cfg, queue, warmup + repeats)
                unroll_s = statistics.fmean(seconds["unroll"][warmup:]) - statistics.fmean(seconds["rollout"][warmup:])
            with TIMINGS.recording() as seconds:
                for size in LEARNER_BATCHES:
                    for _ in range(warmup + repeats):
                        queue.update(announced[-size:], HandBack(here))  # in distinct slots
            updates = [statistics.fmean(seconds[f"learn/{size}"][warmup:]) for size in LEARNER_BATCHES]
    finally:
        here.send(None)
        process.join(timeout=10)
    per_unroll, fixed = np.polyfit(LEARNER_BATCHES, updates, 1)
    return {"unroll_s": max(unroll_s, 0.0), "learn_s": max(float(fixed), 0.0),
            "learn_unroll_s": max(float(per_unroll), 0.0)}


def run_actor(cfg: RunConfig, queue: SlotQueue, unrolls: int) -> list[UnrollReady]:
    """The real actor loop (``actor_loop``) in this process, whose timing hooks are on, for ``unrolls`` unrolls
    into ``queue``'s slots; a thread plays the learner's end of the pipe, handing each slot straight back (so the
    actor cycles through its slots in order) and then saying stop. Returns the announcements."""
    learner_end, actor_end = mp.Pipe()
    announced: list[UnrollReady] = []

    def hand_back() -> None:
        while len(announced) < unrolls:
            announced.append(learner_end.recv())
            learner_end.send(SlotFree(announced[-1].slot) if len(announced) < unrolls else None)

    answering = threading.Thread(target=hand_back, daemon=True)
    answering.start()
    actor_loop(cfg, 0, actor_end, queue.slots, queue.board, list(range(cfg.algo.queue_depth)), 0)
    answering.join()
    return announced


def timed_seconds(operation: Callable[[], Any]) -> float:
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


def profile_text(costs: dict[str, float], overrides: list[str]) -> str:
    lines = [f"# backend=simulated costs measured by experiments.tools.calibrate on {platform.node()} "
             f"({platform.processor() or platform.machine()}), {dt.date.today().isoformat()},",
             f"# for: {' '.join(overrides) or 'the default config'}. Select with +sim=<this file's name>.",
             *(f"{name}: {value:.6g}" for name, value in costs.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.tools.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides of the run to calibrate for (env=..., algo=...)")
    parser.add_argument("--out", type=Path, required=True, help="the profile to write (conf/sim/NAME.yaml)")
    parser.add_argument("--repeats", type=int, default=200,
                        help="timings per cost, and timed updates (medians and means are kept)")
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
