"""Faults of training itself, injected for real: divergence (a NaN reward, a huge learning rate) in every
schedule, and a SIGKILLed trainer of every multi-process schedule, resumed. Each must end with a true status,
a clear message and a record that agrees with its checkpoint. The reaper that a Ray driver starts kills what
the driver started when it is SIGKILLed, and nothing when it stops cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from algorithms.infra.checkpoint import read_checkpoint
from algorithms.infra.reaper import POLL_S
from algorithms.infra.supervision import NonFiniteUpdate
from experiments.config import ConfigError, validate
from tests.conftest import compose_config, read_csv, read_meta, train_run
from tests.processes import (
    ROOT,
    SharedMemoryWatch,
    alive,
    events,
    start_cli,
    wait_for_rows,
    wait_until_gone,
    worker_pids,
)

NAN_ENV = "env.id=tests.exploding_env:NaNRewardCartPole-v0"
FAST = ["total_env_steps=600", "checkpoint_interval=50", "log_interval=50"]
SCHEDULES = {
    "single": ["algo=single"],
    "a2c-vector": ["algo=a2c", "algo.num_envs=2"],
    "a2c-workers": ["algo=a2c", "algo.mode=workers", "algo.num_workers=2", "algo.num_envs=1"],
    "hogwild-1": ["algo=a3c", "algo.num_workers=1"],
    "hogwild-2": ["algo=a3c", "algo.num_workers=2"],
    "parameter-server-2": ["algo=a3c", "algo.mode=parameter_server", "algo.num_workers=2"],
    "impala-2": ["algo=impala", "algo.num_workers=2", "algo.batch_size=1"],
    "simulated-a2c-workers-2": ["algo=a2c", "algo.mode=workers", "algo.num_workers=2", "algo.num_envs=1",
                                "backend=simulated"],
    "simulated-parameter-server-2": ["algo=a3c", "algo.mode=parameter_server", "algo.num_workers=2",
                                     "backend=simulated"],
    "simulated-impala-2": ["algo=impala", "algo.num_workers=2", "algo.batch_size=1", "backend=simulated"],
    # two passes over each batch of two unrolls: as many versions as impala-2's one step per unroll
    "appo-2": ["algo=appo", "algo.num_workers=2", "algo.num_envs=1", "algo.n_steps=5", "algo.epochs=2",
               "algo.minibatches=1"],
    "simulated-appo-2": ["algo=appo", "algo.num_workers=2", "algo.num_envs=1", "algo.n_steps=5", "algo.epochs=2",
                         "algo.minibatches=1", "backend=simulated"],
    # two passes of one minibatch over each rollout of 5 steps: PPO's several steps per rollout, as few versions as
    # the others reach before the NaN
    "ppo-vector": ["algo=ppo", "algo.num_envs=2", "algo.n_steps=5", "algo.epochs=2", "algo.minibatches=1"],
    "ppo-workers-2": ["algo=ppo", "algo.mode=workers", "algo.num_workers=2", "algo.num_envs=1", "algo.n_steps=5",
                      "algo.epochs=2", "algo.minibatches=1"],
}
DIVERGED = r"non-finite (policy_loss|value_loss) in worker [01]'s update at policy version \d+, env step \d+"


def finite_checkpoint(run_dir) -> dict:
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert all(bool(torch.isfinite(tensor).all()) for tensor in saved["model"].values())
    return saved


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_nan_fails_the_run_at_once_naming_where_and_keeps_the_last_finite_checkpoint(run_dir, schedule):
    with pytest.raises(NonFiniteUpdate, match=DIVERGED + r" \(algo.on_nonfinite=fail\)"):
        train_run(run_dir, *SCHEDULES[schedule], NAN_ENV, *FAST)
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"].startswith("NonFiniteUpdate: non-finite")
    saved = finite_checkpoint(run_dir)
    assert 0 < saved["policy_version"] <= 40  # each env's 100th reward is NaN: at most 2 x 20 updates before
    rows = read_csv(run_dir / "updates.csv")
    assert rows and all(row["applied"] == "1" for row in rows)  # no non-finite update was applied
    assert worker_pids(os.getpid()) == []


@pytest.mark.parametrize("schedule", ["single", "a2c-vector", "hogwild-1", "hogwild-2", "parameter-server-2",
                                      "impala-2", "simulated-parameter-server-2", "simulated-impala-2"])
def test_skip_update_drops_each_non_finite_update_records_it_and_goes_on(run_dir, schedule):
    record = train_run(run_dir, *SCHEDULES[schedule], NAN_ENV, *FAST, "algo.on_nonfinite=skip_update")
    assert record.status == "completed"
    rows = read_csv(run_dir / "updates.csv")
    # Each env's reward is NaN on its 100th step: one update to skip per worker that got that far (20 updates
    # of 5 steps; a2c vector steps its 2 envs in one update).
    nonfinite_updates = sum(count >= 20 for count in Counter(row["worker"] for row in rows).values())
    skipped = [row for row in rows if row["applied"] == "0"]
    logged = [entry for entry in events(run_dir) if entry["event"] == "update_skipped"]
    assert len(skipped) == len(logged) == nonfinite_updates >= 1
    saved = finite_checkpoint(run_dir)
    assert saved["policy_version"] == record.policy_version == record.updates - nonfinite_updates


def test_skip_update_fails_after_too_many_non_finite_updates_in_a_row(run_dir):
    with pytest.raises(NonFiniteUpdate, match=r"4 non-finite updates in a row \(algo.max_nonfinite_skips=3\)"):
        train_run(run_dir, "algo=single", "algo.lr=1e30", "algo.on_nonfinite=skip_update",
                  "algo.max_nonfinite_skips=3", *FAST)
    applied = [row["applied"] for row in read_csv(run_dir / "updates.csv")]
    assert applied[-3:] == ["0", "0", "0"] and read_meta(run_dir)["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["a2c-workers", "hogwild-2", "parameter-server-2", "impala-2"])
def test_a_sigkilled_trainer_resumes_with_every_policy_version_recorded_once(tmp_path, schedule):
    run_dir = tmp_path / "run"
    args = [*SCHEDULES[schedule], "env=cartpole", "checkpoint_interval=1000", "log_interval=250", "quiet=true",
            "logger.wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
    process = start_cli(tmp_path, *args, "total_env_steps=100000000")
    with SharedMemoryWatch(process.pid) as shared_memory:
        wait_for_rows(run_dir, 5, process)  # past the first checkpoint, with rows after it
        workers = worker_pids(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        assert len(workers) == 2 and not wait_until_gone(workers), "workers outlived their trainer"
        total = (int(read_csv(run_dir / "metrics.csv")[-1]["env_steps"]) // 1000 + 1) * 1000
        resumed = start_cli(tmp_path, *args, "resume=true", f"total_env_steps={total}")
        shared_memory.watch(resumed.pid)
        _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert read_meta(run_dir)["status"] == "completed"
    updates = read_csv(run_dir / "updates.csv")
    assert [int(row["update"]) for row in updates] == list(range(1, len(updates) + 1))
    versions = Counter(int(row["version_at_apply"]) for row in updates if row["applied"] == "1")
    final = read_checkpoint(run_dir / "checkpoints" / "last.pt")["policy_version"]
    rows_per_version = 2 if schedule == "a2c-workers" else 1  # a synchronous update has a row per worker
    assert sorted(versions) == list(range(final)) and set(versions.values()) == {rows_per_version}
    steps = [int(row["env_steps"]) for row in read_csv(run_dir / "metrics.csv")]
    assert steps == sorted(set(steps))
    assert not shared_memory.leaked()  # nothing leaked, even by the killed trainer


@pytest.mark.parametrize(("overrides", "key"), [
    (["algo=single", "algo.on_nonfinite=ignore"], "algo.on_nonfinite"),
    (["algo=single", "algo.max_nonfinite_skips=0"], "algo.max_nonfinite_skips"),
    ([*SCHEDULES["a2c-workers"], "algo.on_nonfinite=skip_update"], "algo.on_nonfinite"),
])
def test_a_divergence_setting_that_cannot_work_is_refused_naming_it(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert error.value.key == key


@pytest.mark.parametrize("factor", ["10000", "null"])
def test_a_finite_blowup_is_reported_once_as_a_warning_and_an_event(run_dir, capsys, factor):
    # The reward of the env's 1500th step is 1e4: the value loss of that update jumps far above its median.
    record = train_run(run_dir, "algo=single", "env.id=tests.exploding_env:RewardSpikeCartPole-v0",
                       "total_env_steps=2000", "log_interval=1000", f"blowup_factor={factor}")
    assert record.status == "completed"
    warnings = [entry for entry in events(run_dir) if entry["event"] == "blowup_warning"]
    if factor == "null":
        assert warnings == []
        return
    assert [(entry["quantity"], entry["env_steps"]) for entry in warnings][:1] == [("value_loss", 1500)]
    assert warnings[0]["value"] > 10_000 * max(warnings[0]["median"], 100.0)
    printed = capsys.readouterr().err
    assert "warning: worker 0 at env step 1500: value_loss" in printed
    counts = read_meta(run_dir)["blowup_warnings"]
    assert sum(counts.values()) == len(warnings)
    assert printed.count("warning: worker") == len(counts)  # one line per quantity, however many events


GUARDED = """
import subprocess, sys, time
from algorithms.infra.reaper import Reaper
reaper = Reaper().__enter__()
child = subprocess.Popen(["sleep", "60"])
print(child.pid, flush=True)
if sys.argv[1] == "clean":
    reaper.__exit__(None, None, None)
time.sleep(60)
"""


@pytest.mark.parametrize("end", ["sigkill", "clean"])
def test_the_reaper_kills_what_a_sigkilled_process_started_and_only_then(end):
    guarded = subprocess.Popen([sys.executable, "-c", GUARDED, end], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(guarded.stdout.readline())
    time.sleep(2 * POLL_S)  # the reaper has noted the child
    guarded.kill()
    guarded.wait(timeout=10)
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert alive(child) == (end == "clean")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


STOPPED_WORKER = """
import sys, time
from pathlib import Path
from algorithms.infra.supervision import uninterruptible, worker_setup
worker_setup(1)
marker = Path(sys.argv[2])
if sys.argv[1] == "inside":
    with uninterruptible():
        print("in", flush=True)
        time.sleep(1.0)  # the SIGTERM lands here
        marker.write_text("the block finished")
else:
    print("in", flush=True)
    time.sleep(1.0)
    marker.write_text("ran past the SIGTERM")
"""


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_stopped_worker_finishes_an_uninterruptible_block_then_dies_of_sigterm(tmp_path, where):
    marker = tmp_path / "marker"
    worker = subprocess.Popen([sys.executable, "-c", STOPPED_WORKER, where, str(marker)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert worker.stdout.readline() == "in\n"
    worker.terminate()
    assert worker.wait(timeout=10) == -signal.SIGTERM
    assert marker.exists() == (where == "inside")
