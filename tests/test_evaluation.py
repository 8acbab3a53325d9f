"""Evaluation episodes: apart from training (the same training record with or without them), deterministic
actions, frozen normalizers, Atari's whole games, when they are due. Every schedule's evaluations, with worker 0's
observation statistics, are checked by tests/test_mujoco.py's runs (and tests/test_ray.py's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.wrappers import TransformReward

from algorithms.core.atari import EpisodicLife
from algorithms.core.evaluation import Evaluator, next_evaluation_at, take_snapshot
from algorithms.core.model import build_spaces_model
from algorithms.core.rollout import Collector
from tests.conftest import compose_config, read_csv, train_run
from tests.test_resume import assert_identical, final_state, records

EVAL_ON = ["eval.episodes=3", "eval.interval=1000"]


def evals(run_dir):
    return read_csv(run_dir / "evals.csv")


@pytest.mark.parametrize("overrides", [
    ["algo=single", "env=cartpole", "total_env_steps=3000"],
    # normalized observations and rewards, continuous actions: evaluation must leave the statistics alone
    ["algo=a2c", "algo.num_envs=4", "env=pendulum", "total_env_steps=3200"],
    # PPO shuffles its minibatches with torch's generator, which evaluation must leave alone too
    ["algo=ppo", "env=cartpole", "algo.n_steps=32", "total_env_steps=2944"],
], ids=["single-cartpole", "a2c_vector-pendulum", "ppo_vector-cartpole"])
def test_evaluation_leaves_the_training_record_unchanged(tmp_path, overrides):
    plain = train_run(tmp_path / "plain", *overrides)
    evaluated = train_run(tmp_path / "evaluated", *overrides, *EVAL_ON)
    assert plain.status == evaluated.status == "completed"
    assert_identical(records(tmp_path / "plain"), records(tmp_path / "evaluated"))
    plain_state, evaluated_state = final_state(tmp_path / "plain"), final_state(tmp_path / "evaluated")
    for part in ("model", "optimizer", "rng"):
        assert_identical(plain_state[part], evaluated_state[part])
    for plain_collector, evaluated_collector in zip(plain_state["collectors"], evaluated_state["collectors"],
                                                    strict=True):
        # The pickled envs hold their action spaces' generators, seeded from the OS in each run and never used.
        assert_identical({**plain_collector, "envs": plain_collector["envs"]["current_obs"]},
                         {**evaluated_collector, "envs": evaluated_collector["envs"]["current_obs"]})
    assert read_csv(tmp_path / "plain" / "evals.csv") == []
    rows = evals(tmp_path / "evaluated")
    total = int(overrides[-1].split("=")[1])
    steps = [int(row["env_steps"]) for row in rows]  # at the first update past each 1000 env steps, and the end
    assert len(steps) == -(-total // 1000) and steps[-1] == total
    assert [step // 1000 for step in steps[:-1]] == list(range(1, len(steps)))
    for row in rows:
        returns = [float(value) for value in row["returns"].split()]
        assert int(row["episodes"]) == len(returns) == len(row["lengths"].split()) == 3
        assert float(row["return_mean"]) == pytest.approx(np.mean(returns), abs=1e-3)
        assert row["deterministic"] == "True" and float(row["eval_seconds"]) > 0
    assert evaluated.summary()["eval"]["env_steps"] == total


def test_deterministic_actions_are_the_most_probable_or_the_mean():
    discrete = build_spaces_model(compose_config("env=cartpole"))
    continuous = build_spaces_model(compose_config("env=pendulum"))
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with torch.no_grad():
        logits, _ = discrete(torch.from_numpy(obs))
    for seed in (1, 2):
        actions, _ = discrete.act(obs, np.random.default_rng(seed), deterministic=True)
        assert np.array_equal(actions, logits.argmax(1).numpy())
    obs = obs[:, :3]
    with torch.no_grad():
        means, _ = continuous(torch.from_numpy(obs))
    actions, _ = continuous.act(obs, np.random.default_rng(1), deterministic=True)
    np.testing.assert_allclose(actions, means.numpy(), rtol=1e-5, atol=1e-6)
    sampled, _ = continuous.act(obs, np.random.default_rng(1))
    assert not np.allclose(sampled, actions)


def test_evaluation_normalizes_with_the_snapshot_s_frozen_statistics_and_repeats_itself():
    cfg = compose_config("env=pendulum", "eval.episodes=2", "eval.num_envs=2")
    evaluator = Evaluator(cfg)
    try:
        model, normalizer = evaluator.model, evaluator.obs_normalizer
        trained = Collector(evaluator.envs, 8, 0, type(normalizer)((3,), 10.0))
        trained.reset(5)
        trained.collect(model)  # statistics from 16 observations
        snapshot = take_snapshot(model.flat_params, 16, 0, trained.obs_normalizer)
        first, second = evaluator.evaluate(snapshot), evaluator.evaluate(snapshot)
        assert first.returns == second.returns and first.lengths == second.lengths == [200, 200]
        assert normalizer.stats.count == trained.obs_normalizer.stats.count  # frozen: 200 steps added nothing
        np.testing.assert_array_equal(normalizer.stats.mean, trained.obs_normalizer.stats.mean)
        shifted = snapshot._replace(obs_normalizer={**snapshot.obs_normalizer,
                                                    "mean": snapshot.obs_normalizer["mean"] + 5.0})
        assert evaluator.evaluate(shifted).returns != first.returns  # the statistics are what it normalizes with
    finally:
        evaluator.close()


def test_atari_evaluation_plays_whole_games_for_the_unclipped_score():
    cfg = compose_config("env=atari_breakout", "eval.episodes=1")
    evaluator = Evaluator(cfg)
    try:
        wrappers, env = [], evaluator.envs.envs[0]
        while hasattr(env, "env"):
            wrappers.append(type(env))
            env = env.env
        assert EpisodicLife not in wrappers and TransformReward not in wrappers
        assert cfg.env.atari.episodic_life and cfg.env.atari.clip_rewards  # training's stack is untouched
        game, rng = evaluator.envs.envs[0], np.random.default_rng(0)
        game.reset(seed=0)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = game.step(int(rng.integers(4)))
            steps, done = steps + 1, terminated or truncated
        assert terminated and game.unwrapped.ale.lives() == 0  # the first end is the game's, not a lost life's
        assert steps > 100  # five lives of a random policy
    finally:
        evaluator.close()


def test_evaluations_are_due_at_each_interval_and_at_the_end():
    cfg = compose_config("eval.episodes=3", "eval.interval=1000", "total_env_steps=2500")
    assert [next_evaluation_at(steps, cfg.eval, 2500) for steps in (0, 999, 1000, 2005, 2500)] == [
        1000, 1000, 2000, 2500, np.inf]
    final_only = compose_config("eval.episodes=3", "total_env_steps=2500").eval
    assert next_evaluation_at(0, final_only, 2500) == 2500
    assert next_evaluation_at(0, compose_config("eval.episodes=0").eval, 2500) == np.inf
