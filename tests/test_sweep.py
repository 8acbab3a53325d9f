"""Sweeps survive failure: a failing job never stops the others; re-running a sweep skips what completed,
resumes what was interrupted and reruns what failed; a summary says which is which."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_csv, read_meta, train_run

ROOT = Path(__file__).resolve().parents[1]
EXPLODING_ENV = "tests.exploding_env:ExplodingCartPole-v0"
FAST = ["quiet=true", "logger.wandb.mode=disabled"]


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", "-m", *overrides, *FAST, f"hydra.sweep.dir={sweep_dir}"]


def run_sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(sweep_dir, *overrides), cwd=sweep_dir.parent, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def summary(sweep_dir: Path) -> dict[str, str]:
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]
    return {job["job"]: job["outcome"] for job in jobs}


def test_failing_job_does_not_stop_the_sweep_and_a_rerun_skips_completed_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    overrides = ("total_env_steps=1000", "log_interval=250", f"env.id=CartPole-v1,{EXPLODING_ENV}", "seed=0,1")
    first = run_sweep(sweep_dir, *overrides)
    assert first.returncode == 1, first.stderr  # something failed
    outcomes = summary(sweep_dir)
    good = {job for job in outcomes if "CartPole-v1" in job}
    bad = set(outcomes) - good
    assert len(good) == len(bad) == 2
    assert {outcomes[job] for job in good} == {"completed"} and {outcomes[job] for job in bad} == {"failed"}
    for job in bad:  # the failed runs are recorded, with their error, in their own directories
        meta = read_meta(sweep_dir / job)
        assert meta["status"] == "failed" and meta["error"] == "RuntimeError: simulator diverged"
    markdown = (sweep_dir / "sweep_summary.md").read_text()
    assert "2 completed, 0 resumed, 0 skipped, 2 failed" in markdown and "simulator diverged" in markdown
    assert "2 completed, 0 resumed, 0 skipped, 2 failed" in first.stdout

    second = run_sweep(sweep_dir, *overrides)
    assert second.returncode == 1
    outcomes = summary(sweep_dir)
    assert {outcomes[job] for job in good} == {"skipped"} and {outcomes[job] for job in bad} == {"failed"}
    assert all(read_meta(sweep_dir / job)["status"] == "completed" for job in good)


def interrupt_first_job(sweep_dir: Path, first_job: Path, second_job: Path, *overrides: str) -> None:
    """Start the sweep, Ctrl-C it once its first job has logged a few rows; check that it stopped there."""
    process = subprocess.Popen(sweep_command(sweep_dir, *overrides), cwd=sweep_dir.parent,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (first_job / "metrics.csv").exists() or len((first_job / "metrics.csv").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130  # Ctrl-C stops the whole sweep, not just the current job
    assert read_meta(first_job)["status"] == "interrupted"
    assert not second_job.exists()


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    sweep_dir = tmp_path / "sweep"
    overrides = ("total_env_steps=10000", "log_interval=500", "checkpoint_interval=100000", "seed=0,1")
    first_job = sweep_dir / "checkpoint_interval=100000,log_interval=500,seed=0,total_env_steps=10000"
    interrupt_first_job(sweep_dir, first_job,
                        sweep_dir / "checkpoint_interval=100000,log_interval=500,seed=1,total_env_steps=10000",
                        *overrides)
    rerun = run_sweep(sweep_dir, *overrides)
    assert rerun.returncode == 0, rerun.stderr
    outcomes = summary(sweep_dir)
    assert outcomes == {first_job.name: "resumed",
                        "checkpoint_interval=100000,log_interval=500,seed=1,total_env_steps=10000": "completed"}
    meta = read_meta(first_job)
    assert meta["status"] == "completed" and len(meta["resumed_at_env_steps"]) == 1


@pytest.mark.slow
def test_an_interrupted_simulated_job_reruns_from_the_start_to_the_record_it_would_have_left(tmp_path):
    """A simulated run cannot resume (its gradients in flight are not checkpointed), but it is deterministic: the
    rerun sweep starts it afresh, and its record is an uninterrupted run's, virtual wall times included."""
    sweep_dir, setting = tmp_path / "sweep", ("algo=a3c", "backend=simulated", "algo.num_workers=4",
                                              "total_env_steps=20000", "log_interval=500")
    name = "algo.num_workers=4,algo=a3c,backend=simulated,log_interval=500,seed={},total_env_steps=20000"
    first_job = sweep_dir / name.format(0)
    interrupt_first_job(sweep_dir, first_job, sweep_dir / name.format(1), *setting, "seed=0,1")
    rerun = run_sweep(sweep_dir, *setting, "seed=0,1")
    assert rerun.returncode == 0, rerun.stderr
    assert summary(sweep_dir) == {first_job.name: "completed", name.format(1): "completed"}
    assert read_meta(first_job)["status"] == "completed" and read_meta(first_job)["resumed_at_env_steps"] == []
    train_run(tmp_path / "uninterrupted", *setting, "seed=0")
    for record in ("updates.csv", "episodes.csv", "metrics.csv"):
        assert read_csv(first_job / record) == read_csv(tmp_path / "uninterrupted" / record)


def test_parallel_launcher_is_limited_to_the_cpu_budget(tmp_path):
    from datetime import datetime

    sweep_dir = tmp_path / "sweep"
    result = run_sweep(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", "cpu_budget=1",
                       "total_env_steps=1000", "log_interval=500", "seed=0,1,2")
    assert result.returncode == 0, result.stderr
    assert "hydra.launcher.n_jobs=3 would keep up to 3 processes busy on a budget of 1 CPUs; running 1 job(s)" \
        in result.stderr
    assert set(summary(sweep_dir).values()) == {"completed"}
    spans = sorted((datetime.fromisoformat(meta["start_time"]), datetime.fromisoformat(meta["end_time"]))
                   for meta in (read_meta(run) for run in sweep_dir.glob("*seed=*")))
    assert len(spans) == 3
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False))  # one at a time


def test_parallel_jobs_start_worker_processes(tmp_path):
    # Jobs of the joblib launcher run in loky processes, from which a spawned worker must still start.
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "cpu_budget=4",
                       "+schedule=a3c_hogwild,impala", "total_env_steps=1000", "log_interval=500")
    assert result.returncode == 0, result.stderr
    assert set(summary(sweep_dir).values()) == {"completed"} and len(summary(sweep_dir)) == 2
    assert not any(path.name.count("cpu_budget") for path in sweep_dir.iterdir())  # not part of a run's name


def test_slurm_launcher_config_composes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.train", "hydra/launcher=slurm", "--cfg",
                             "hydra"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "SlurmLauncher" in result.stdout and "cpus_per_task: 4" in result.stdout
