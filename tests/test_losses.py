"""Returns, advantages and the loss against hand-computed references."""

import numpy as np
import pytest
import torch

from algorithms.core.losses import actor_critic_loss, gae_advantages, n_step_returns, vtrace

GAMMA = 0.9
# Two envs, three steps. Env 0 ends no episode. Env 1 terminates at step 0 and is truncated by a
# time limit at step 1, where V(s_final) = 5.
REWARDS = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]], dtype=np.float32)
TERMINATED = np.array([[0, 1], [0, 0], [0, 0]], dtype=np.float32)
TRUNCATED = np.array([[0, 0], [0, 1], [0, 0]], dtype=np.float32)
TRUNCATION_VALUES = np.array([[0, 0], [0, 5.0], [0, 0]], dtype=np.float32)
NEXT_VALUE = np.array([10.0, 4.0], dtype=np.float32)
VALUES = np.array([[2.0, 0.5], [3.0, 1.5], [4.0, 2.5]], dtype=np.float32)
BOOTSTRAP = dict(terminated=TERMINATED, truncated=TRUNCATED, truncation_values=TRUNCATION_VALUES,
                 next_value=NEXT_VALUE)


def test_n_step_returns_bootstrap_through_truncation_not_termination():
    returns = n_step_returns(REWARDS, gamma=GAMMA, **BOOTSTRAP)
    # Env 0: R2 = 3 + .9*10 = 12, R1 = 2 + .9*12 = 12.8, R0 = 1 + .9*12.8 = 12.52.
    # Env 1: R2 = 1 + .9*4 = 4.6; R1 = 1 + .9*5 = 5.5 (truncated: V(s_final), not R2);
    #        R0 = 1 (terminated: nothing follows).
    expected = np.array([[12.52, 1.0], [12.8, 5.5], [12.0, 4.6]], dtype=np.float32)
    np.testing.assert_allclose(returns, expected, rtol=1e-6)


def test_termination_wins_when_both_flags_are_set():
    returns = n_step_returns(REWARDS[:1, :1], terminated=np.ones((1, 1), np.float32),
                             truncated=np.ones((1, 1), np.float32),
                             truncation_values=np.full((1, 1), 7.0, np.float32),
                             next_value=np.array([9.0], np.float32), gamma=GAMMA)
    np.testing.assert_allclose(returns, [[1.0]])


def test_gae_matches_hand_computed_values():
    advantages = gae_advantages(REWARDS, VALUES, gamma=GAMMA, gae_lambda=0.5, **BOOTSTRAP)
    # Env 0: deltas 1.7, 2.6, 8; A2 = 8, A1 = 2.6 + .45*8 = 6.2, A0 = 1.7 + .45*6.2 = 4.49.
    # Env 1: deltas 0.5 (terminated), 1 + .9*5 - 1.5 = 4.0 (truncated), 1 + .9*4 - 2.5 = 2.1;
    #        the chain is cut at both episode ends, so A = deltas.
    expected = np.array([[4.49, 0.5], [6.2, 4.0], [8.0, 2.1]], dtype=np.float32)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5)


def test_gae_with_lambda_one_equals_n_step_advantages():
    advantages = gae_advantages(REWARDS, VALUES, gamma=GAMMA, gae_lambda=1.0, **BOOTSTRAP)
    returns = n_step_returns(REWARDS, gamma=GAMMA, **BOOTSTRAP)
    np.testing.assert_allclose(advantages + VALUES, returns, rtol=1e-5)


def test_gae_with_lambda_zero_is_one_step_td_error():
    advantages = gae_advantages(REWARDS, VALUES, gamma=GAMMA, gae_lambda=0.0, **BOOTSTRAP)
    np.testing.assert_allclose(advantages[:, 0], [1.7, 2.6, 8.0], rtol=1e-5)


def test_vtrace_matches_hand_computed_values_off_policy():
    # Env 0 ends no episode; pi/mu = 2, 0.5, 1, so rho = c = 1, 0.5, 1 (rho_bar = c_bar = 1).
    # TD errors 1.7, 2.6, 8; deltas 1.7, 1.3, 8; v - V: 8, 1.3 + .9*.5*8 = 4.9, 1.7 + .9*4.9 = 6.11.
    # Advantages: 1*(1 + .9*7.9 - 2) = 6.11, .5*(2 + .9*12 - 3) = 4.9, 1*(3 + .9*10 - 4) = 8.
    # Env 1 is on-policy (every ratio 1): its episode ends cut the traces, as n-step returns do.
    log_rhos = np.log(np.array([[2.0, 1.0], [0.5, 1.0], [1.0, 1.0]], dtype=np.float32))
    targets, advantages = vtrace(REWARDS, VALUES, log_rhos, gamma=GAMMA, **BOOTSTRAP)
    returns = n_step_returns(REWARDS, gamma=GAMMA, **BOOTSTRAP)
    np.testing.assert_allclose(targets[:, 0], [8.11, 7.9, 12.0], rtol=1e-5)
    np.testing.assert_allclose(advantages[:, 0], [6.11, 4.9, 8.0], rtol=1e-5)
    np.testing.assert_allclose(targets[:, 1], returns[:, 1], rtol=1e-5)
    np.testing.assert_allclose(advantages[:, 1], returns[:, 1] - VALUES[:, 1], rtol=1e-5)


def vtrace_by_its_definition(rewards, values, log_rhos, next_value, gamma, rho_bar, c_bar):
    """Espeholt et al.'s sum for rollouts that end no episode:
    v_s = V(x_s) + sum_t gamma^(t-s) (prod_{s<=i<t} c_i) rho_t (r_t + gamma V(x_t+1) - V(x_t))."""
    ratios, steps = np.exp(log_rhos), len(rewards)
    rhos, cs = np.minimum(rho_bar, ratios), np.minimum(c_bar, ratios)
    following_values = np.concatenate([values[1:], next_value[None]])
    deltas = rhos * (rewards + gamma * following_values - values)
    targets = values.astype(np.float64).copy()
    for s in range(steps):
        for t in range(s, steps):
            targets[s] += gamma ** (t - s) * np.prod(cs[s:t], axis=0) * deltas[t]
    return targets


@pytest.mark.parametrize(("rho_bar", "c_bar"), [(1.0, 1.0), (0.8, 0.5), (2.0, 1.5)])
def test_vtrace_equals_its_definition_for_any_ratios(rho_bar, c_bar):
    rng = np.random.default_rng(0)
    shape = (6, 3)
    rewards, values = rng.normal(size=shape), rng.normal(size=shape)
    log_rhos, next_value = rng.normal(scale=0.7, size=shape), rng.normal(size=3)
    no_end = np.zeros(shape)
    targets, _ = vtrace(rewards, values, log_rhos, no_end, no_end, no_end, next_value, gamma=GAMMA, rho_bar=rho_bar,
                        c_bar=c_bar)
    expected = vtrace_by_its_definition(rewards, values, log_rhos, next_value, GAMMA, rho_bar, c_bar)
    np.testing.assert_allclose(targets, expected, rtol=1e-10)


@pytest.mark.parametrize("trace_lambda", [1.0, 0.8, 0.0])
def test_on_policy_vtrace_is_gae_and_with_lambda_one_the_n_step_returns(trace_lambda):
    on_policy = np.zeros_like(REWARDS)
    targets, advantages = vtrace(REWARDS, VALUES, on_policy, gamma=GAMMA, trace_lambda=trace_lambda, **BOOTSTRAP)
    gae = gae_advantages(REWARDS, VALUES, gamma=GAMMA, gae_lambda=trace_lambda, **BOOTSTRAP)
    np.testing.assert_allclose(targets, gae + VALUES, rtol=1e-5)
    if trace_lambda == 1.0:
        returns = n_step_returns(REWARDS, gamma=GAMMA, **BOOTSTRAP)
        np.testing.assert_allclose(targets, returns, rtol=1e-5)
        np.testing.assert_allclose(advantages, returns - VALUES, rtol=1e-5)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="next_value"):
        n_step_returns(REWARDS, TERMINATED, TRUNCATED, TRUNCATION_VALUES, np.zeros(3, np.float32), GAMMA)


def test_loss_value_and_gradients_match_the_formula():
    log_probs = torch.tensor([-0.5, -1.0, -2.0], requires_grad=True)
    entropy = torch.tensor([0.6, 0.5, 0.4], requires_grad=True)
    values = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    returns = torch.tensor([2.0, 2.0, 1.0])
    advantages = torch.tensor([1.0, -1.0, 0.5])
    value_coef, entropy_coef = 0.5, 0.01
    loss, parts = actor_critic_loss(log_probs, entropy, values, returns, advantages, value_coef, entropy_coef)
    policy = -(1.0 * -0.5 + -1.0 * -1.0 + 0.5 * -2.0) / 3  # = 0.1667
    value = ((2 - 1) ** 2 + 0 + (1 - 3) ** 2) / 3  # = 5/3
    ent = (0.6 + 0.5 + 0.4) / 3
    assert parts["policy_loss"].item() == pytest.approx(policy)
    assert parts["value_loss"].item() == pytest.approx(value)
    assert parts["entropy"].item() == pytest.approx(ent)
    assert loss.item() == pytest.approx(policy + value_coef * value - entropy_coef * ent)
    loss.backward()
    # dL/dlogp = -A/n; dL/dV = value_coef * 2 (V - R) / n; dL/dH = -entropy_coef / n.
    torch.testing.assert_close(log_probs.grad, -advantages / 3)
    torch.testing.assert_close(values.grad, value_coef * 2 * (values.detach() - returns) / 3)
    torch.testing.assert_close(entropy.grad, torch.full((3,), -entropy_coef / 3))


def test_loss_treats_advantages_and_returns_as_constants():
    advantages = torch.tensor([1.0, 2.0], requires_grad=True)
    returns = torch.tensor([1.0, 2.0], requires_grad=True)
    log_probs = torch.tensor([-1.0, -1.0], requires_grad=True)
    values = torch.tensor([0.0, 0.0], requires_grad=True)
    loss, _ = actor_critic_loss(log_probs, torch.zeros(2), values, returns, advantages, 0.5, 0.0)
    loss.backward()
    assert advantages.grad is None and returns.grad is None
