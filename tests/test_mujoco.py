"""The MuJoCo suite: its study expands into every schedule on the four envs and validates, and every schedule
trains Hopper-v5 briefly with observation and reward normalization, the statistics per worker as docs/design.md
states them ("Normalizer statistics across workers").

Hopper, not HalfCheetah: a random Hopper falls within about 10 to 60 steps, so every short run ends episodes,
while HalfCheetah never terminates and its episodes last 1000 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms.core.envs import RunningMeanStd
from experiments.plan import compose_jobs
from tests.conftest import read_csv, read_meta, train_run
from tests.test_pixels import SCHEDULES

HOPPER_OBSERVATION_SHAPE = (11,)
HOPPER_MAX_EPISODE_STEPS = 1000  # the registered time limit
BUDGET = 400  # env steps per run: 20 or more random Hopper episodes, however the schedule splits them
# How many collectors' states each schedule's checkpoint keeps: the one-process schedules and each synchronous
# worker keep theirs; Hogwild's and the parameter server's worker processes keep their statistics to themselves.
CHECKPOINTED_COLLECTORS = {"single": 1, "a2c-vector": 1, "a2c-workers": 2, "a3c-hogwild": 0,
                           "a3c-parameter-server": 0, "impala": 0, "appo": 0, "ray-a2c-workers": 2,
                           "ray-a3c-parameter-server": 0, "ppo-vector": 1, "ppo-workers": 2}
INITIAL_COUNT = RunningMeanStd().count  # the statistics' prior count, before any observation


def test_the_mujoco_suite_runs_every_schedule_on_the_four_envs_at_the_zoo_s_budget(tmp_path, monkeypatch):
    # MuJoCo writes HalfCheetah's compiler warning to MUJOCO_LOG.TXT in the working directory: keep it out of the
    # checkout.
    monkeypatch.chdir(tmp_path)
    _, jobs = compose_jobs(["+experiment=sync_vs_async", "suite=mujoco", "seed=0"])
    cells = {(job.env.id, job.algo.name, job.algo.mode) for job in jobs}
    assert cells == {(env, *schedule) for env in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")
                     for schedule in (("single", "serial"), ("a2c", "vector"), ("a2c", "workers"),
                                      ("a3c", "hogwild"), ("a3c", "parameter_server"), ("impala", "actor_learner"),
                                      ("ppo", "vector"), ("ppo", "workers"), ("appo", "actor_learner"))}
    assert all(job.env.normalize_obs and job.env.normalize_reward for job in jobs)
    assert {job.total_env_steps for job in jobs} == {1_000_000}


@pytest.mark.parametrize("schedule", [pytest.param(name, marks=pytest.mark.slow) if name.startswith("ray") else name
                                      for name in SCHEDULES])
def test_every_schedule_trains_hopper_with_normalizers_kept_as_documented(tmp_path, schedule, request):
    if schedule.startswith("ray"):
        request.getfixturevalue("cluster")
    run_dir = tmp_path / "run"
    record = train_run(run_dir, *SCHEDULES[schedule], "env=hopper", f"total_env_steps={BUDGET}", "log_interval=100",
                       "eval.episodes=2", "eval.interval=200")
    cfg = record.cfg
    assert read_meta(run_dir)["status"] == "completed"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    env_steps = checkpoint["env_steps"]
    assert env_steps >= BUDGET

    # Every env step is in one rollout, and each worker's rollout of n_steps x num_envs steps has one update row per
    # step of its rule (PPO: epochs x minibatches; the others: one).
    updates = read_csv(run_dir / "updates.csv")
    assert len(updates) * cfg.algo.n_steps * cfg.algo.num_envs == env_steps * cfg.algo.epochs * cfg.algo.minibatches
    assert max(int(row["env_steps"]) for row in updates) == env_steps

    episodes = read_csv(run_dir / "episodes.csv")
    assert episodes, "random Hopper episodes end within the budget"
    lengths = [int(row["length"]) for row in episodes]
    assert all(1 <= length <= HOPPER_MAX_EPISODE_STEPS for length in lengths)
    assert sum(lengths) <= env_steps
    assert all(np.isfinite(float(row["return"])) for row in episodes)

    collectors = checkpoint["collectors"]
    assert len(collectors) == CHECKPOINTED_COLLECTORS[schedule]
    for collector in collectors:
        # Each collector saw its envs' first observations, then one per env step of its own share of the run
        # (synchronous workers step in lockstep); the final observation of a truncated episode updates nothing.
        steps_of_this_collector = env_steps // len(collectors)
        observations = collector["obs_normalizer"]
        assert observations["mean"].shape == HOPPER_OBSERVATION_SHAPE
        assert observations["count"] == pytest.approx(INITIAL_COUNT + cfg.algo.num_envs + steps_of_this_collector)
        assert not np.allclose(observations["var"], 1.0), "the variance moved off its prior"
        # The reward scaler's statistics are those of the discounted return, one sample per env step.
        assert collector["reward_scaler"]["count"] == pytest.approx(INITIAL_COUNT + steps_of_this_collector)
    if len(collectors) > 1:  # per worker, not shared: differently seeded workers saw different observations
        first, second = (collector["obs_normalizer"]["mean"] for collector in collectors)
        assert not np.allclose(first, second)
    check_evaluations(run_dir, record.policy_version)


def check_evaluations(run_dir, final_version: int) -> None:
    """Every schedule evaluated at 200 env steps (asynchronous ones a little later) and at the end, the final
    evaluation seeing the last update, each with worker 0's observation statistics (Hogwild's published in shared
    memory, a parameter server's carried by the pushes)."""
    rows = read_csv(run_dir / "evals.csv")
    assert len(rows) == 2 and 200 <= int(rows[0]["env_steps"]) < BUDGET <= int(rows[1]["env_steps"])
    assert int(rows[1]["policy_version"]) == final_version
    for row in rows:
        lengths = [int(length) for length in row["lengths"].split()]
        assert len(lengths) == int(row["episodes"]) == 2 and all(1 <= n <= HOPPER_MAX_EPISODE_STEPS for n in lengths)
