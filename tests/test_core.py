"""The shared actor-critic core: network heads, numpy acting, flat parameters, optimizer, envs, rollout."""

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal

from algorithms.core.envs import ObservationNormalizer, RewardScaler, RunningMeanStd, make_vector_env
from algorithms.core.model import build_model
from algorithms.core.nets import ActorCritic
from algorithms.core.optimizers import make_optimizer
from algorithms.core.rollout import build_collector
from algorithms.updates.actor_critic import compute_gradients
from tests.conftest import compose_config

CARTPOLE = gym.make("CartPole-v1")
PENDULUM = gym.make("Pendulum-v1")


def model_for(env: gym.Env, **kwargs) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(env.observation_space, env.action_space, [64, 64], **kwargs)


def test_categorical_head_matches_torch_distribution():
    model = model_for(CARTPOLE, ortho_init=False)
    obs, actions = torch.randn(16, 4), torch.randint(0, 2, (16,))
    log_probs, entropy, _ = model.evaluate(obs, actions)
    distribution = Categorical(logits=model(obs)[0])
    torch.testing.assert_close(log_probs, distribution.log_prob(actions))
    torch.testing.assert_close(entropy, distribution.entropy())


def test_gaussian_head_matches_torch_distribution():
    model = model_for(PENDULUM, log_std_init=-0.7)
    obs, actions = torch.randn(16, 3), torch.randn(16, 1)
    log_probs, entropy, _ = model.evaluate(obs, actions)
    distribution = Normal(model(obs)[0], model.log_std.exp())
    torch.testing.assert_close(log_probs, distribution.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, distribution.entropy().sum(-1))


def test_numpy_acting_agrees_with_the_torch_forward_pass():
    model = model_for(CARTPOLE, ortho_init=False)
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    _, values = model.act(obs, np.random.default_rng(0))
    np.testing.assert_allclose(values, model(torch.from_numpy(obs))[1].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(model.predict_values(obs), values, atol=1e-6)


def test_categorical_sampling_follows_the_policy_probabilities():
    model = model_for(CARTPOLE, ortho_init=False)
    obs = np.ones((1, 4), dtype=np.float32)
    probs = torch.softmax(model(torch.from_numpy(obs))[0], -1)[0].detach().numpy()
    rng = np.random.default_rng(1)
    draws = np.concatenate([model.act(np.repeat(obs, 1000, axis=0), rng)[0] for _ in range(20)])
    frequency = np.bincount(draws, minlength=2) / len(draws)
    np.testing.assert_allclose(frequency, probs, atol=0.01)  # 20k draws: std error ~0.0035


def test_gaussian_actions_have_the_head_mean_and_std():
    model = model_for(PENDULUM, log_std_init=-1.0)
    obs = np.zeros((20000, 3), dtype=np.float32)
    actions, _ = model.act(obs, np.random.default_rng(2))
    mean = model(torch.from_numpy(obs[:1]))[0].item()
    assert actions.mean() == pytest.approx(mean, abs=0.01)
    assert actions.std() == pytest.approx(np.exp(-1.0), rel=0.02)


def test_parameters_and_gradients_live_in_flat_buffers():
    model = model_for(CARTPOLE)
    log_probs, entropy, values = model.evaluate(torch.randn(5, 4), torch.randint(0, 2, (5,)))
    (log_probs.sum() + entropy.sum() + values.sum()).backward()
    per_layer = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(per_layer, model.flat_grads)
    assert model.flat_grads.abs().sum() > 0
    assert len(model.state_dict()) == len(list(model.parameters())) == 12
    model.flat_params.data.add_(0.5)  # in-place updates reach layers and the numpy views
    obs = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(model.predict_values(obs), model(torch.from_numpy(obs))[1].detach().numpy(),
                               atol=1e-4)


def test_share_memory_keeps_values_and_views():
    model = model_for(CARTPOLE)
    before = model.flat_params.clone()
    model.share_memory()
    assert model.flat_params.is_shared() and torch.equal(model.flat_params, before)
    assert model.actor[0].weight.data_ptr() == model.flat_params.data_ptr()
    assert not model.flat_grads.is_shared()
    obs = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(model.predict_values(obs), model(torch.from_numpy(obs))[1].detach().numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_flat_optimizer_step_equals_torch_per_layer_step(name):
    algo = SimpleNamespace(optimizer=name, lr=1e-2, rmsprop_alpha=0.99, optimizer_eps=1e-5)
    model, reference = model_for(CARTPOLE), model_for(CARTPOLE)
    optimizer = make_optimizer(model, algo)
    torch_optimizer = (torch.optim.RMSprop(reference.parameters(), lr=1e-2, alpha=0.99, eps=1e-5) if name == "rmsprop"
                       else torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-5))
    assert optimizer.state[model.flat_params], "state must exist before the first step (to be shareable)"
    for step in range(3):
        torch.manual_seed(step)
        model.flat_grads.copy_(torch.randn_like(model.flat_grads))
        for param, grad in zip(reference.parameters(), model.parameters(), strict=True):
            param.grad = grad.grad.clone()
        optimizer.step()
        torch_optimizer.step()
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param, expected)


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_zero_grad_keeps_every_layer_s_gradient_in_the_flat_buffer(name):
    algo = SimpleNamespace(optimizer=name, lr=1e-2, rmsprop_alpha=0.99, optimizer_eps=1e-5)
    model = model_for(CARTPOLE)
    optimizer = make_optimizer(model, algo)
    flat_grads = model.flat_grads
    for zero_grad in (model.zero_grad, optimizer.zero_grad):  # torch's default would set every .grad to None
        flat_grads.fill_(1.0)
        zero_grad()
        assert model.flat_params.grad is flat_grads and not flat_grads.any()
        assert all(param.grad is not None and param.grad.data_ptr() >= flat_grads.data_ptr()
                   for param in model.parameters())
    obs, actions = torch.randn(8, 4), torch.randint(0, 2, (8,))
    log_probs, _, values = model.evaluate(obs, actions)
    (values.sum() - log_probs.sum()).backward()  # lands in the flat buffer, which the step reads
    before = model.flat_params.clone()
    assert flat_grads.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(model.flat_params, before)


def gradients_of_one_rollout(num_envs: int, *overrides: str) -> tuple[ActorCritic, dict[str, float]]:
    """Build the core from a composed config, collect one rollout and compute its gradients."""
    cfg = compose_config("algo=single", *overrides)
    envs = make_vector_env(cfg.env, num_envs)
    model = build_model(cfg, envs)
    collector = build_collector(cfg, envs, worker=0)
    collector.reset(0)
    collector.collect(model)
    stats = compute_gradients(model, collector.rollout, cfg.algo)
    envs.close()
    return model, stats


def test_gradient_clipping_bounds_the_norm_and_reports_the_raw_norm():
    model, stats = gradients_of_one_rollout(1, "algo.max_grad_norm=0.01")
    assert stats["grad_norm"] > 0.01
    assert float(model.flat_grads.norm()) == pytest.approx(0.01, rel=1e-3)


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (5, 17, 40)]
    stats = RunningMeanStd((3,))
    for batch in batches:
        stats.update(batch)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, everything.var(0), rtol=1e-3)


def test_normalizers_clip_and_scale():
    normalizer = ObservationNormalizer((2,), clip=1.0)
    out = normalizer(np.array([[0.0, 0.0], [100.0, -100.0]]))
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.0
    scaler = RewardScaler(num_envs=2, gamma=0.99, clip=10.0)
    scaled = scaler(np.array([1.0, 1.0]), np.array([False, True]))
    assert scaler.discounted_return[1] == 0.0 and scaler.discounted_return[0] == 1.0
    assert np.all(np.abs(scaled) <= 10.0)


def test_envs_are_seeded_per_worker():
    cfg = compose_config("algo=single")
    first = [build_collector(cfg, make_vector_env(cfg.env, 1), worker=w) for w in (0, 0, 1)]
    observations = []
    for collector, seed in zip(first, (cfg.seed, cfg.seed, cfg.seed + 1), strict=True):
        collector.reset(seed)
        observations.append(collector.current_obs.copy())
    np.testing.assert_array_equal(observations[0], observations[1])
    assert not np.array_equal(observations[0], observations[2])


def test_collector_bootstraps_truncated_episodes_from_their_final_observation():
    cfg = compose_config("algo=single", "env.max_episode_steps=7", "algo.n_steps=10")
    envs = make_vector_env(cfg.env, 1)
    model = build_model(cfg, envs)
    collector = build_collector(cfg, envs, worker=0)
    collector.reset(0)
    episodes = collector.collect(model)
    rollout = collector.rollout
    truncated_at = np.flatnonzero(rollout.truncated.numpy()[:, 0])
    assert list(truncated_at) == [6] and rollout.terminated[6, 0] == 0  # an upright pole lasts 7 steps
    assert rollout.truncation_values[6, 0] != 0 and rollout.truncation_values.numpy()[:6].sum() == 0
    assert episodes[0].length == 7 and episodes[0].ret == 7.0 and episodes[0].steps_into_rollout == 7
    # The observation after the truncation starts a new episode: it is stored at step 7.
    assert not np.allclose(rollout.obs[7, 0].numpy(), rollout.obs[6, 0].numpy())


@pytest.mark.parametrize("env", ["cartpole", "acrobot", "lunarlander", "pendulum"])
def test_every_env_of_the_suite_collects_and_computes_gradients(env):
    _, stats = gradients_of_one_rollout(2, f"env={env}")
    assert np.isfinite(list(stats.values())).all()
