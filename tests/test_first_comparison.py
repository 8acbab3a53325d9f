"""A user's first comparison is one command: a study takes their env (``env.id=module:Id``) and worker count
(``algo.num_workers``), runs that env only, gives the count to the schedules that take workers while the one-process
schedules keep their one process, and refuses an env given by id that would keep another env's budget or threshold.
Through the real command lines, with the toy env of tests/toy_envs.py."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.plan import compose_jobs

ROOT = Path(__file__).resolve().parents[1]
MAZE = "env.id=tests.toy_envs:Maze-v0"
ONE_PROCESS = {"single", "a2c/vector", "ppo/vector"}
MULTI_WORKER = {"a2c/workers", "a3c/hogwild", "a3c/parameter_server", "impala/actor_learner", "ppo/workers",
                "appo/actor_learner"}
# plan's line per job: index, action, schedule, env id, workers, envs, env steps, run directory
PLAN_LINE = re.compile(r"^\s*\d+\s+run\s+(?P<schedule>\S+)\s+(?P<env>\S+)\s+workers=(?P<workers>\d+)\s+envs=\d+\s+"
                       r"steps=(?P<steps>[\d,]+)\s+(?P<run>\S+)$")


def command(module: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def schedule(job) -> str:
    return job.algo.name if job.algo.name == "single" else f"{job.algo.name}/{job.algo.mode}"


def test_the_plan_of_a_first_comparison_runs_the_users_env_with_their_workers(tmp_path):
    result = command("experiments.plan", "+experiment=sync_vs_async", MAZE, "env.solved_return=0.9",
                     "total_env_steps=300000", "algo.num_workers=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = [match.groupdict() for line in result.stdout.splitlines() if (match := PLAN_LINE.match(line))]
    assert len(jobs) == 27 and "27 jobs (27 to run, 0 already completed)" in result.stdout  # 9 schedules x 3 seeds
    assert {job["env"] for job in jobs} == {"tests.toy_envs:Maze-v0"}  # the suite's envs are not run
    assert {job["steps"] for job in jobs} == {"300,000"}
    workers = {(job["schedule"], int(job["workers"])) for job in jobs}
    assert workers == {(name, 1) for name in ONE_PROCESS} | {(name, 4) for name in MULTI_WORKER}
    runs = [job["run"] for job in jobs]
    assert len(set(runs)) == 27
    assert all("env.name=Maze-v0" in run and "algo.num_workers" not in run for run in runs)
    assert sum("+schedule=[a2c_workers,workers_4]" in run for run in runs) == 3
    assert sum("+schedule=single," in run for run in runs) == 3
    assert list(tmp_path.iterdir()) == [], "planning must create nothing"


@pytest.mark.slow
def test_a_first_comparison_runs_from_one_command(tmp_path):
    sweep = tmp_path / "sweep"
    result = command("experiments.train", "-m", "+experiment=sync_vs_async", MAZE, "env.solved_return=0.9",
                     "total_env_steps=600", "algo.num_workers=3", "+schedule=single,a2c_workers", "seed=0",
                     "logger.wandb.mode=disabled", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metas = [json.loads(path.read_text()) for path in sweep.glob("*/meta.json")]
    assert {(meta["algo"], meta["mode"], meta["num_workers"]) for meta in metas} == {("single", "serial", 1),
                                                                                        ("a2c", "workers", 3)}
    assert all(meta["status"] == "completed" for meta in metas)
    assert {(meta["env_id"], meta["env_name"], meta["total_env_steps"]) for meta in metas} == {
        ("tests.toy_envs:Maze-v0", "Maze-v0", 600)}
    assert "2 completed, 0 resumed, 0 skipped, 0 failed" in result.stdout


def test_an_env_given_by_id_that_keeps_another_envs_budget_and_threshold_is_refused(tmp_path):
    result = command("experiments.train", "-m", "+experiment=sync_vs_async", MAZE, "algo.num_workers=4", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: invalid config") and "env.id='tests.toy_envs:Maze-v0'" in line
    assert "keeps env=cartpole's total_env_steps=500000 and env.solved_return=475.0" in line
    assert "set total_env_steps and env.solved_return for this env" in line
    assert list(tmp_path.iterdir()) == [], "a refused study must create nothing"

    # The demo keeps its own budget (not cartpole's): only the threshold is missing.
    result = command("experiments.plan", "+experiment=demo", MAZE, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "keeps env=cartpole's env.solved_return=475.0" in line and "total_env_steps" not in line


def test_a_single_run_on_an_env_given_by_id_is_warned_in_one_line(tmp_path):
    result = command("experiments.plan", MAZE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: env.id='tests.toy_envs:Maze-v0': keeps env=cartpole's env.name=cartpole and "
                           "total_env_steps=500000 and env.solved_return=475.0")


def test_a_sweep_of_worker_counts_runs_each_one_process_schedule_once():
    _, jobs = compose_jobs(["+experiment=demo", "algo.num_workers=2,4"])
    cells = [(schedule(job), job.algo.num_workers) for job in jobs]
    assert sorted(set(cells)) == sorted({(name, 1) for name in ONE_PROCESS}
                                        | {(name, count) for name in MULTI_WORKER for count in (2, 4)})
    assert len(cells) == len(set(cells)) * 3  # each cell with every seed, once


def test_worker_scaling_runs_the_worker_counts_the_command_line_gives():
    _, jobs = compose_jobs(["+experiment=worker_scaling", "algo.num_workers=4"])
    assert {job.algo.num_workers for job in jobs} == {4} and len(jobs) == 5 * 3
