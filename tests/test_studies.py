"""Every named study expands into the jobs it documents, and every job composes and validates."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.plan import compose_jobs
from tests.conftest import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(path.stem for path in Path(CONF_DIR, "experiment").glob("*.yaml"))
ALL_SCHEDULES = {"single", "a2c/vector", "a2c/workers", "a3c/hogwild", "a3c/parameter_server", "impala/actor_learner",
                 "ppo/vector", "ppo/workers", "appo/actor_learner"}


def schedule(job) -> str:
    return job.algo.name if job.algo.name == "single" else f"{job.algo.name}/{job.algo.mode}"


def test_the_documented_studies_exist():
    assert set(STUDIES) >= {"sync_vs_async", "worker_scaling", "staleness", "correction", "demo"}


@pytest.mark.parametrize("study", STUDIES)
def test_every_job_of_a_study_composes_and_validates_into_its_own_directory(study):
    base, jobs = compose_jobs([f"+experiment={study}"])
    assert len(jobs) > 1
    assert base.hydra.sweep.dir == f"runs/studies/{study}"
    names = [job.hydra.job.override_dirname for job in jobs]
    assert len(set(names)) == len(names), "two jobs would share a run directory"
    assert all(job.quiet for job in jobs)
    assert {job.logger.wandb.group for job in jobs} == {study}


def test_sync_vs_async_runs_every_schedule_on_every_env_of_the_suite_at_one_budget():
    _, jobs = compose_jobs(["+experiment=sync_vs_async"])
    cells = {(schedule(job), job.env.id, job.seed) for job in jobs}
    envs = {"CartPole-v1", "Acrobot-v1", "Pendulum-v1"}
    assert cells == {(name, env, seed) for name in ALL_SCHEDULES for env in envs for seed in (0, 1, 2)}
    for env in envs:
        assert len({job.total_env_steps for job in jobs if job.env.id == env}) == 1


def test_a_study_runs_on_another_suite_and_the_command_line_wins():
    _, jobs = compose_jobs(["+experiment=sync_vs_async", "suite=box2d", "seed=7", "total_env_steps=1000"])
    assert {(job.env.id, job.seed, job.total_env_steps) for job in jobs} == {("LunarLander-v3", 7, 1000)}
    assert {schedule(job) for job in jobs} == ALL_SCHEDULES


def test_worker_scaling_sweeps_worker_counts_of_the_multi_process_schedules():
    _, jobs = compose_jobs(["+experiment=worker_scaling"])
    cells = {(schedule(job), job.algo.num_workers) for job in jobs}
    schedules = ("a2c/workers", "a3c/hogwild", "a3c/parameter_server", "impala/actor_learner", "appo/actor_learner")
    assert cells == {(name, workers) for name in schedules for workers in (1, 2, 4, 8, 16)}
    assert len(jobs) == len(cells) * 3


def test_staleness_injects_every_delay_with_both_step_size_rules():
    _, jobs = compose_jobs(["+experiment=staleness"])
    assert {schedule(job) for job in jobs} == {"a3c/parameter_server"}
    cells = {(job.algo.staleness.delay, job.algo.staleness.lr_scaling) for job in jobs}
    assert cells == {(delay, rule) for delay in (0, 1, 2, 4, 8, 16, 32) for rule in ("none", "inverse")}
    assert len(jobs) == len(cells) * 3


def test_demo_is_a_small_sync_vs_async_on_cartpole():
    _, jobs = compose_jobs(["+experiment=demo"])
    assert {schedule(job) for job in jobs} == ALL_SCHEDULES
    assert {(job.env.id, job.total_env_steps) for job in jobs} == {("CartPole-v1", 50_000)}
    assert {job.seed for job in jobs} == {0, 1, 2}


def plan(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.plan", *arguments], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_plan_prints_each_jobs_config_and_what_a_rerun_would_do(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = sweep_dir / "+experiment=demo,+schedule=single,seed=0"
    done.mkdir(parents=True)
    (done / "meta.json").write_text('{"status": "completed"}')
    result = plan("+experiment=demo", "--cfg", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("# job: ") == 27
    assert result.stdout.count("total_env_steps: 50000") == 27
    assert "27 jobs (26 to run, 1 already completed), 1,300,000 env steps to run" in result.stdout
    assert not any(path.name != "sweep" for path in tmp_path.iterdir()), "planning must create nothing"


def test_an_invalid_job_is_named_before_anything_runs(tmp_path):
    result = plan("+experiment=staleness", "algo.staleness.delay=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "algo.staleness.delay=-1" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_stragglers_study_simulates_sync_against_async_as_stragglers_grow():
    _, jobs = compose_jobs(["+experiment=stragglers"])
    assert {job.backend for job in jobs} == {"simulated"} and {job.algo.num_workers for job in jobs} == {16}
    cells = {(schedule(job), job.sim.straggler_fraction, job.seed) for job in jobs}
    assert cells == {(name, fraction, seed) for name in ("a2c/workers", "a3c/parameter_server", "impala/actor_learner")
                     for fraction in (0.0, 0.05, 0.1, 0.2, 0.4) for seed in (0, 1, 2)}
    assert {job.sim.straggler_slowdown for job in jobs} == {4.0}


def test_worker_scaling_runs_on_simulated_workers_up_to_256():
    _, jobs = compose_jobs(["+experiment=worker_scaling", "backend=simulated", "algo.num_workers=1,16,64,256"])
    assert {job.backend for job in jobs} == {"simulated"} and {job.algo.num_workers for job in jobs} == {1, 16, 64, 256}


def test_correction_injects_every_lag_with_and_without_v_trace_into_one_lockstep_actor():
    _, jobs = compose_jobs(["+experiment=correction"])
    assert {schedule(job) for job in jobs} == {"impala/actor_learner"}
    cells = {(job.algo.staleness.delay, job.algo.correction) for job in jobs}
    assert cells == {(delay, correction) for delay in (0, 4, 16, 64) for correction in ("vtrace", "none")}
    assert len(jobs) == len(cells) * 3
    assert {(job.algo.num_workers, job.algo.batch_size, job.algo.wait_for_update) for job in jobs} == {(1, 1, True)}
