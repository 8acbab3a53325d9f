"""A2C: config rules, equivalence with ``single``, identical replicas, the synchronous run record, worker
faults, interrupts and resume in workers mode, and (slow) learning CartPole."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms.infra.supervision import WorkerFailure
from algorithms.schedules.synchronous import ReplicaDivergence, checkpoint_from_parts
from experiments.config import ConfigError, validate
from tests.conftest import compose_config, read_csv, read_meta, train_run
from tests.processes import ROOT, alive, cli, events, start_cli, wait_for_rows

FAST = ["quiet=true", "logger.wandb.mode=disabled"]
WORKERS = ["algo=a2c", "algo.mode=workers", "algo.num_envs=1"]
EXPLODING_ENV = "tests.exploding_env:ExplodingCartPole-v0"


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


@pytest.mark.parametrize(("overrides", "key"), [
    (["algo.num_workers=2"], "algo.num_workers"),  # vector mode is one process
    (["algo.mode=workers", "algo.num_workers=0"], "algo.num_workers"),
    (["algo.mode=hogwild"], "algo.mode"),
    (["algo.mode=workers", "algo.staleness.delay=2"], "algo.staleness.delay"),
    (["algo.mode=workers", "algo.vector_backend=async"], "algo.vector_backend"),
])
def test_bad_a2c_config_is_rejected_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config("algo=a2c", *overrides))
    assert error.value.key == key and str(error.value).startswith(f"{key}=")


@pytest.mark.parametrize("mode", ["vector", "workers"])
def test_one_env_or_one_worker_gives_the_parameters_of_single(tmp_path, mode):
    common = ["seed=4", "total_env_steps=600", "log_interval=200"]
    train_run(tmp_path / "single", "algo=single", *common)
    train_run(tmp_path / "a2c", "algo=a2c", f"algo.mode={mode}", "algo.num_envs=1", *common)
    single, a2c = checkpoint(tmp_path / "single"), checkpoint(tmp_path / "a2c")
    assert a2c["policy_version"] == single["policy_version"] == 120
    assert single["model"].keys() == a2c["model"].keys()
    assert all(torch.equal(single["model"][name], a2c["model"][name]) for name in single["model"])
    single_state, a2c_state = single["optimizer"]["state"][0], a2c["optimizer"]["state"][0]
    assert torch.equal(single_state["square_avg"], a2c_state["square_avg"])
    single_episodes, a2c_episodes = (
        [{key: value for key, value in row.items() if key != "wall_time"} for row in read_csv(run / "episodes.csv")]
        for run in (tmp_path / "single", tmp_path / "a2c"))
    assert len(single_episodes) > 10 and single_episodes == a2c_episodes


def test_workers_forked_by_the_forkserver_train_as_spawned_ones_do(tmp_path):
    """How a worker process starts (``algo.start_method``) changes its start-up cost, never what it computes."""
    common = [*WORKERS, "algo.num_workers=2", "seed=5", "total_env_steps=400", "log_interval=200"]
    for method in ("forkserver", "spawn"):
        train_run(tmp_path / method, *common, f"algo.start_method={method}")
    forked, spawned = checkpoint(tmp_path / "forkserver"), checkpoint(tmp_path / "spawn")
    assert forked["policy_version"] == spawned["policy_version"] == 40
    assert all(torch.equal(forked["model"][name], spawned["model"][name]) for name in forked["model"])


@pytest.mark.parametrize("mode", ["vector", "workers"])
def test_resume_continues_from_the_checkpoint(run_dir, mode):
    args = ["algo=a2c", f"algo.mode={mode}", "algo.num_envs=4", "log_interval=200"]
    train_run(run_dir, *args, "total_env_steps=800")
    record = train_run(run_dir, *args, "total_env_steps=1600", "resume=true")
    assert record.status == "completed" and read_meta(run_dir)["resumed_at_env_steps"] == [800]
    assert checkpoint(run_dir)["policy_version"] == record.policy_version == 80
    assert [int(row["env_steps"]) for row in read_csv(run_dir / "metrics.csv")] == list(range(200, 1601, 200))
    assert [int(row["update"]) for row in read_csv(run_dir / "updates.csv")] == list(range(1, 81))


def test_workers_keep_bit_identical_replicas_and_record_every_barrier_wait(run_dir):
    """Three workers, 40 synchronous updates; every 2 updates each worker sends its parameters with its
    checkpoint part and the trainer fails the run unless all three are bit-identical."""
    record = train_run(run_dir, *WORKERS, "algo.num_workers=3", "total_env_steps=600", "checkpoint_interval=30",
                       "log_interval=150")
    assert record.status == "completed"
    assert record.policy_version == 40 and record.updates == 120
    rows = read_csv(run_dir / "updates.csv")
    assert [int(row["update"]) for row in rows] == list(range(1, 121))
    assert [(int(row["version_at_sync"]), int(row["worker"])) for row in rows] == [
        (version, worker) for version in range(40) for worker in range(3)]
    assert all(row["version_at_sync"] == row["version_at_apply"] and row["staleness"] == "0" for row in rows)
    assert [int(row["env_steps"]) for row in rows[::3]] == list(range(15, 601, 15))
    waits = np.array([float(row["wait_time"]) for row in rows])
    assert (waits >= 0).all() and waits.max() > 0  # someone always arrives last and waits ~0; others wait
    metrics = read_csv(run_dir / "metrics.csv")
    assert [int(row["env_steps"]) for row in metrics] == [150, 300, 450, 600]
    for row in metrics:
        assert float(row["staleness_mean"]) == float(row["staleness_max"]) == 0
        assert float(row["barrier_wait_mean"]) > 0
    saved = checkpoint(run_dir)
    assert saved["policy_version"] == 40 and saved["env_steps"] == 600 and len(saved["collectors"]) == 3
    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and meta["num_workers"] == 3


def test_diverged_replicas_are_refused_naming_the_workers():
    params = torch.arange(6, dtype=torch.float32)
    parts = {worker: {"params": params.clone(), "collector": {}, "model": {}, "optimizer": {}} for worker in range(3)}
    assert checkpoint_from_parts(parts, version=7, env_steps=70)["policy_version"] == 7
    parts[2]["params"][4] += 1e-6
    with pytest.raises(ReplicaDivergence, match=r"version 7 the parameters of workers \[2\] differ"):
        checkpoint_from_parts(parts, version=7, env_steps=70)


def test_sigkilled_worker_fails_the_run_promptly_naming_it_and_leaves_no_process(tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli(tmp_path, *WORKERS, "algo.num_workers=2", "total_env_steps=10000000", "log_interval=500",
                        *FAST, f"hydra.run.dir={run_dir}")
    wait_for_rows(run_dir, 3, process)
    pids = {event["worker"]: event["pid"] for event in events(run_dir) if event["event"] == "worker_started"}
    assert sorted(pids) == [0, 1] and all(alive(pid) for pid in pids.values())
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - killed < 10, "the run did not end promptly"
    assert process.returncode == 1, stderr
    meta = read_meta(run_dir)
    assert meta["status"] == "failed"
    match = re.fullmatch(r"WorkerFailure: worker 1 died with exit code -9 \(killed by SIGKILL\) at env step (\d+)",
                         meta["error"])
    assert match, meta["error"]
    assert [failure["worker"] for failure in meta["worker_failures"]] == [1]
    assert not [pid for pid in pids.values() if alive(pid)], "orphan worker processes"
    # Everything logged before the death stays, up to the env step the message names.
    updates = read_csv(run_dir / "updates.csv")
    assert int(updates[-1]["env_steps"]) >= int(match.group(1)) >= 1500
    assert int(read_csv(run_dir / "metrics.csv")[-1]["env_steps"]) >= 1500


def test_an_exception_in_a_worker_fails_the_run_with_its_message(run_dir):
    with pytest.raises(WorkerFailure) as error:
        train_run(run_dir, *WORKERS, "algo.num_workers=2", f"env.id={EXPLODING_ENV}", "total_env_steps=5000",
                  "log_interval=100")
    # Each worker's env raises on its 300th step, in the update of version 59 (5 steps per update).
    assert re.fullmatch(r"worker [01] died with exit code 1 at env step 590: RuntimeError: simulator diverged",
                        str(error.value)), str(error.value)
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and "simulator diverged" in meta["worker_failures"][0]["error"]
    assert int(read_csv(run_dir / "metrics.csv")[-1]["env_steps"]) >= 500
    assert len(read_csv(run_dir / "updates.csv")) >= 118


@pytest.mark.slow
def test_signal_checkpoints_and_resume_continues_in_workers_mode(tmp_path):
    """SIGTERM to the trainer, as a scheduler stops a job (the record handles SIGINT the same way: see
    tests/test_train.py, which sends it)."""
    signum = signal.SIGTERM
    run_dir = tmp_path / "run"
    args = [*WORKERS, "algo.num_workers=2", "total_env_steps=10000000", "log_interval=500",
            "checkpoint_interval=100000", *FAST, f"hydra.run.dir={run_dir}"]
    process = start_cli(tmp_path, *args)
    wait_for_rows(run_dir, 3, process)
    pids = [event["pid"] for event in events(run_dir) if event["event"] == "worker_started"]
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert process.returncode == 130, stderr
    assert not [pid for pid in pids if alive(pid)], "orphan worker processes"
    meta = read_meta(run_dir)
    assert meta["status"] == "interrupted" and stdout.startswith("interrupted:")
    stopped_at = meta["final"]["env_steps"]
    saved = checkpoint(run_dir)
    assert saved["env_steps"] == saved["record"]["env_steps"] == stopped_at
    assert saved["policy_version"] * 10 == stopped_at
    assert int(read_csv(run_dir / "metrics.csv")[-1]["env_steps"]) == stopped_at // 500 * 500  # on the grid

    total = (stopped_at // 500 + 3) * 500
    resumed = subprocess.run(cli(*args, "resume=true", f"total_env_steps={total}"), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert resumed.returncode == 0, resumed.stderr
    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and meta["resumed_at_env_steps"] == [stopped_at]
    steps = [int(row["env_steps"]) for row in read_csv(run_dir / "metrics.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == total
    rows = read_csv(run_dir / "updates.csv")
    assert [int(row["update"]) for row in rows] == list(range(1, total // 5 + 1))
    assert [int(row["version_at_sync"]) for row in rows] == [version for version in range(total // 10)
                                                             for _ in range(2)]
    episode_steps = [int(row["env_steps"]) for row in read_csv(run_dir / "episodes.csv")]
    assert episode_steps == sorted(episode_steps)


@pytest.mark.slow
def test_vector_a2c_learns_cartpole_in_3_of_3_seeds(tmp_path):
    """CartPole-v1 with the env's A2C settings (8 envs, n_steps=5, RMSprop lr 7e-4), 3 seeds side by side.

    Measured with seeds 0, 1, 2: the 20-episode mean return first reached 475 at 107.7k, 112.3k and
    104.8k env steps; 150k steps (not the issue's 500k) keeps the suite short with a third to spare.

    Cost: three busy processes for about 17 s on two idle cores.
    """
    processes = {seed: subprocess.Popen(
        cli("algo=a2c", "env=cartpole", f"seed={seed}", "total_env_steps=150000", "log_interval=10000", *FAST,
            f"hydra.run.dir={tmp_path}/s{seed}"),
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (0, 1, 2)}
    for seed, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        returns = np.array([float(row["return"]) for row in read_csv(tmp_path / f"s{seed}" / "episodes.csv")])
        best_mean_20 = np.convolve(returns, np.ones(20) / 20, mode="valid").max()
        assert best_mean_20 >= 475, f"seed {seed}: best 20-episode mean return {best_mean_20:.1f}"
