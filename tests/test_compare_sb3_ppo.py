"""The PPO comparison composes each published run's settings (conf/tuned/ppo_ENV.yaml) at its published budget."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from experiments.tools.compare_sb3 import PUBLISHED, compose_run, parse_arguments
from experiments.train import CONFIG_DIR


@pytest.mark.parametrize("env", sorted(PUBLISHED["ppo"]))
def test_ppo_runs_take_the_tuned_settings_at_the_published_budget(env):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        tuned = compose(config_name="config", overrides=["algo=ppo", f"env={env}"])
    assert tuned.total_env_steps == PUBLISHED["ppo"][env].steps  # the tuned file's budget is the published one
    cfg = compose_run("ppo", env, seed=0, steps=PUBLISHED["ppo"][env].steps, episodes=10)
    assert cfg.algo == tuned.algo and cfg.algo.optimizer == "adam" and cfg.eval.deterministic


def test_lunarlander_takes_the_zoo_batch_split():
    algo = compose_run("ppo", "lunarlander", seed=0, steps=1000, episodes=1).algo
    assert algo.num_envs * algo.n_steps // algo.minibatches == 64  # the zoo's batch_size
    assert (algo.num_envs, algo.n_steps, algo.epochs, algo.gamma, algo.gae_lambda) == (16, 1024, 4, 0.999, 0.98)


def test_ppo_defaults_to_its_envs_and_refuses_an_env_without_a_published_score(tmp_path):
    args = parse_arguments(["--algo", "ppo"])
    assert sorted(args.env) == sorted(PUBLISHED["ppo"]) and args.out.name == "compare_sb3_ppo"
    with pytest.raises(SystemExit) as exited:
        parse_arguments(["--algo", "ppo", "--env", "halfcheetah", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2 and not (tmp_path / "out").exists()
