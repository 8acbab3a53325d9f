"""Real training runs of the single-worker baseline: the command line, the run record, the W&B mirror,
interrupts, resume, failures, determinism and learning."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from experiments.columns import EPISODE_COLUMNS, METRIC_COLUMNS, UPDATE_COLUMNS
from tests.conftest import read_csv, read_meta, train_run

EXPLODING_ENV = "tests.exploding_env:ExplodingCartPole-v0"

ROOT = Path(__file__).resolve().parents[1]
FAST = ["quiet=true", "logger.wandb.mode=disabled"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    return read_csv(run_dir / "metrics.csv")


def wandb_history(run_dir: Path) -> list[dict[str, float]]:
    """The history rows of the run's offline W&B file, decoded with wandb's own protobuf records.

    The ``.wandb`` file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then
    records of (crc32, length, type) + payload in 32 KiB blocks; a record of type FULL holds one
    serialized ``wandb.proto.wandb_internal_pb2.Record``, FIRST/MIDDLE/LAST hold pieces of one.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, payloads = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room left for a header: the block is padded
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
        else:
            break
    rows = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real run from the command line, with the W&B mirror on (offline) and the progress bar."""
    cwd = tmp_path_factory.mktemp("cli")
    run_dir = cwd / "run"
    result = run_cli("algo=single", "env=cartpole", "seed=3", "total_env_steps=6000", "log_interval=1000",
                     "checkpoint_interval=2500", f"hydra.run.dir={run_dir}", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_command_line_writes_a_complete_run_record(cli_run):
    run_dir, result = cli_run
    for name in ("meta.json", "metrics.csv", "episodes.csv", "updates.csv", "evals.csv", "events.jsonl",
                 "checkpoints/last.pt", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (run_dir / name).is_file(), name
    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and meta["error"] is None
    assert (meta["algo"], meta["mode"], meta["env_id"], meta["seed"], meta["num_workers"]) == (
        "single", "serial", "CartPole-v1", 3, 1)
    assert meta["git_commit"] and isinstance(meta["git_dirty"], bool)
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["gymnasium"] == gym.__version__
    assert meta["cpu_count"] == os.cpu_count() and meta["torch_threads"] == 1 and meta["host"]
    assert meta["start_time"] <= meta["end_time"] and meta["final"]["env_steps"] == 6000
    assert "seed=3" in meta["overrides"]

    metrics = metric_rows(run_dir)
    assert tuple(metrics[0]) == METRIC_COLUMNS
    assert [int(row["env_steps"]) for row in metrics] == [1000, 2000, 3000, 4000, 5000, 6000]
    wall = [float(row["wall_time"]) for row in metrics]
    assert wall == sorted(wall) and wall[0] > 0
    assert all(float(row["staleness_max"]) == 0 and float(row["barrier_wait_mean"]) == 0 for row in metrics)
    assert metrics[-1]["updates"] == metrics[-1]["policy_version"] == "1200"  # one update per 5 steps

    updates = read_csv(run_dir / "updates.csv")
    assert tuple(updates[0]) == UPDATE_COLUMNS and len(updates) == 1200
    assert [int(row["update"]) for row in updates] == list(range(1, 1201))
    assert all(row["staleness"] == "0" and row["applied"] == "1" for row in updates)
    assert [int(row["version_at_sync"]) for row in updates] == list(range(1200))

    episodes = read_csv(run_dir / "episodes.csv")
    assert tuple(episodes[0]) == EPISODE_COLUMNS
    assert int(metrics[-1]["episodes"]) == len(episodes) > 20
    assert sum(int(row["length"]) for row in episodes) <= 6000
    # CartPole pays 1 per step, so an episode's return is its length.
    assert all(float(row["return"]) == int(row["length"]) for row in episodes)
    last_20 = [float(row["return"]) for row in episodes[-20:]]
    assert float(metrics[-1]["return_mean"]) == pytest.approx(np.mean(last_20))

    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events == ["started", "completed"]
    assert "completed: single/serial on CartPole-v1, seed 3: 6000 env steps" in result.stdout
    assert str(run_dir) in result.stdout
    assert "steps/s, return" in result.stderr  # the progress bar


def test_wandb_offline_run_mirrors_metrics(cli_run):
    run_dir, _ = cli_run
    meta = read_meta(run_dir)
    assert meta["wandb"]["mode"] == "offline" and Path(meta["wandb"]["dir"]).is_relative_to(run_dir)
    logged_rows = wandb_history(run_dir)
    history = [row for row in logged_rows if "eval/return_mean" not in row]
    (evaluation,) = [row for row in logged_rows if "eval/return_mean" in row]  # the final evaluation's
    (final,) = read_csv(run_dir / "evals.csv")
    assert evaluation["env_steps"] == 6000
    assert evaluation["eval/return_mean"] == pytest.approx(float(final["return_mean"]), rel=1e-12)
    metrics = metric_rows(run_dir)
    assert len(history) == len(metrics)
    for logged, row in zip(history, metrics, strict=True):
        for column in METRIC_COLUMNS:
            if row[column] == "":  # NaN in the CSV (no episode finished yet) is not sent to W&B
                assert column not in logged
            else:
                assert logged[column] == pytest.approx(float(row[column]), rel=1e-12), column
        # Synchronous updates: every one of the interval's 200 updates has staleness 0.
        assert logged["staleness_hist/bins"] == [-0.5, 0.5] and logged["staleness_hist/values"] == [200]


def test_console_script_prints_the_config(tmp_path):
    script = Path(sys.executable).parent / "svrl-train"
    result = subprocess.run([str(script), "algo=single", "env=acrobot", "seed=7", "--cfg", "job"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "id: Acrobot-v1" in result.stdout and "seed: 7" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_multirun_writes_one_directory_per_job_named_by_its_overrides(tmp_path):
    result = run_cli("-m", "seed=0,1", "total_env_steps=500", "log_interval=250", *FAST,
                     f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        run_dir = tmp_path / "sweep" / f"log_interval=250,seed={seed},total_env_steps=500"  # sorted by key
        assert read_meta(run_dir)["status"] == "completed"
        assert read_meta(run_dir)["seed"] == seed


def wait_for_rows(run_dir: Path, rows: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (run_dir / "metrics.csv").exists() and len(metric_rows(run_dir)) >= rows:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{run_dir} did not reach {rows} metrics rows")


def assert_contiguous(run_dir: Path, total: int) -> None:
    """No duplicated and no dropped rows across an interruption."""
    steps = [int(row["env_steps"]) for row in metric_rows(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == total
    updates = [int(row["update"]) for row in read_csv(run_dir / "updates.csv")]
    assert updates == list(range(1, len(updates) + 1)) and len(updates) == total // 5
    episode_steps = [int(row["env_steps"]) for row in read_csv(run_dir / "episodes.csv")]
    assert episode_steps == sorted(episode_steps)


def test_signal_checkpoints_marks_interrupted_and_resume_continues(tmp_path):
    """SIGINT, as Ctrl-C sends it (SIGTERM takes the same handler: tests/test_a2c.py sends it)."""
    signum = signal.SIGINT
    run_dir = tmp_path / "run"
    args = ["total_env_steps=1000000", "log_interval=500", "checkpoint_interval=100000", *FAST,
            f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(cli(*args), cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(run_dir, 3, process)
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, _ = process.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert process.returncode == 130
    meta = read_meta(run_dir)
    assert meta["status"] == "interrupted" and stdout.startswith("interrupted:")
    stopped_at = meta["final"]["env_steps"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["env_steps"] == checkpoint["record"]["env_steps"] == stopped_at
    # Everything flushed, and no off-grid metrics row: the resume carries the interval in progress on.
    assert int(read_csv(run_dir / "updates.csv")[-1]["env_steps"]) == stopped_at
    assert int(metric_rows(run_dir)[-1]["env_steps"]) == stopped_at // 500 * 500
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-2]["event"] == "stop_requested" and events[-2]["signal"] == signum.name

    total = (stopped_at // 500 + 4) * 500
    resumed = run_cli(*args, "resume=true", f"total_env_steps={total}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and meta["resumed_at_env_steps"] == [stopped_at]
    assert_contiguous(run_dir, total)


def test_resume_after_sigkill_drops_rows_logged_after_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = ["total_env_steps=1000000", "log_interval=500", "checkpoint_interval=1000", *FAST,
            f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(cli(*args), cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_rows(run_dir, 5, process)
    process.kill()
    process.wait(timeout=10)
    assert read_meta(run_dir)["status"] == "running"  # a SIGKILL leaves no chance to write more
    checkpointed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["env_steps"]
    total = (checkpointed // 500 + 6) * 500
    resumed = run_cli(*args, "resume=true", f"total_env_steps={total}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert read_meta(run_dir)["resumed_at_env_steps"] == [checkpointed]
    assert_contiguous(run_dir, total)


def test_a_crash_marks_the_run_failed_and_keeps_what_was_logged(run_dir):
    with pytest.raises(RuntimeError, match="simulator diverged"):
        train_run(run_dir, f"env.id={EXPLODING_ENV}", "log_interval=100", "total_env_steps=5000")
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"] == "RuntimeError: simulator diverged"
    rows = metric_rows(run_dir)
    assert [int(row["env_steps"]) for row in rows][:2] == [100, 200] and int(rows[-1]["env_steps"]) <= 300
    assert all(int(row["env_steps"]) % 100 == 0 for row in rows)  # a failure adds no off-grid row
    updates = read_csv(run_dir / "updates.csv")
    assert int(rows[-1]["updates"]) <= len(updates) and int(updates[-1]["env_steps"]) < int(rows[-1]["env_steps"]) + 100


def test_same_seed_gives_identical_runs(tmp_path):
    records = [train_run(tmp_path / name, "seed=5", "total_env_steps=2000", "log_interval=500")
               for name in ("a", "b")]
    assert records[0].summary()["return_mean"] == records[1].summary()["return_mean"]
    first, second = (torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)["model"]
                     for name in ("a", "b"))
    assert all(torch.equal(first[key], second[key]) for key in first)
    drop_wall = ("wall_time", "sps")
    strip = [[{k: v for k, v in row.items() if k not in drop_wall} for row in metric_rows(tmp_path / name)]
             for name in ("a", "b")]
    assert strip[0] == strip[1]


@pytest.mark.slow
def test_single_worker_learns_cartpole(tmp_path):
    """Seed 1, 100k env steps: the weakest of the measured seeds, so the thresholds bind where they matter (a
    one-process run is deterministic: this seed gives the same run every time on a machine).

    Measured on the reference 2-core machine (seeds 0, 1, 2): the best 20-episode mean return reached
    500, 464 and 500, and the mean of the last 100 episodes was 428, 174 and 500 (a random policy
    scores about 22). The thresholds leave room for the single-env A2C's known oscillation.

    Cost: one busy process for about 30 s (test_single_worker_learns_cartpole in ``make test``'s durations
    table); a second seed would run beside the suite's other worker on two cores.
    """
    processes = {seed: subprocess.Popen(
        cli("algo=single", "env=cartpole", f"seed={seed}", "total_env_steps=100000", *FAST,
            f"hydra.run.dir={tmp_path}/s{seed}"),
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (1,)}
    for seed, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        best = max(float(row["return_mean"]) for row in metric_rows(tmp_path / f"s{seed}")
                   if row["return_mean"])
        last_100 = [float(row["return"]) for row in read_csv(tmp_path / f"s{seed}" / "episodes.csv")[-100:]]
        assert best >= 300, f"seed {seed}: best 20-episode mean {best}"
        assert np.mean(last_100) >= 100, f"seed {seed}: last 100 episodes {np.mean(last_100)}"
        assert not math.isnan(best)
        # A healthy run, whose critic becomes nearly exact: the blow-up watch stays quiet (its floor).
        assert "warning" not in stderr and read_meta(tmp_path / f"s{seed}")["blowup_warnings"] == {}
