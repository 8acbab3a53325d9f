"""Return, advantage and loss computations: pure, documented functions.

Returns and advantages are targets (no gradient flows through them), computed in numpy over the
rollout's ``[T, N]`` arrays: ``T`` is the rollout length (``n_steps``) and ``N`` the number of envs.
Step ``t`` of env ``n`` ends an episode when ``terminated[t, n]`` (a true end: the future is worth 0)
or ``truncated[t, n]`` (a time limit: the future is worth ``V(s_final)``, passed in
``truncation_values[t, n]``). ``next_value[n]`` is ``V`` of the observation after the last step,
used when the last step ended nothing. The loss is a torch function with autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch


def _check_shapes(**arrays: np.ndarray) -> int:
    shape = arrays["rewards"].shape
    if len(shape) != 2:
        raise ValueError(f"rewards must be [T, N], got {tuple(shape)}")
    for name, array in arrays.items():
        expected = shape[1:] if name == "next_value" else shape
        if array.shape != expected:
            raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(array.shape)}")
    return shape[0]


def _episode_masks(
    terminated: np.ndarray, truncated: np.ndarray, truncation_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``continuing[t]`` is 1 where step t ended nothing; ``cut_value[t]`` is V(s_final) after truncation.

    What follows step t is then ``following * continuing[t] + cut_value[t]``: 0 after termination
    (termination wins when both flags are set), V(s_final) after truncation, else ``following``.
    """
    continuing = 1.0 - np.maximum(terminated, truncated)
    cut_value = truncation_values * truncated * (1.0 - terminated)
    return continuing, cut_value


def n_step_returns(
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    truncation_values: np.ndarray,
    next_value: np.ndarray,
    gamma: float,
) -> np.ndarray:
    """Bootstrapped n-step returns, as in A3C (Mnih et al., 2016, Algorithm S3).

    R_t = r_t + gamma * B_t, where B_t is 0 if step t terminated the episode, V(s_final) if step t
    truncated it, and otherwise R_{t+1}, with R_T = next_value.
    """
    num_steps = _check_shapes(rewards=rewards, terminated=terminated, truncated=truncated,
                              truncation_values=truncation_values, next_value=next_value)
    continuing, cut_value = _episode_masks(terminated, truncated, truncation_values)
    returns = np.empty_like(rewards)
    following = next_value
    for t in reversed(range(num_steps)):
        following = rewards[t] + gamma * (following * continuing[t] + cut_value[t])
        returns[t] = following
    return returns


def gae_advantages(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    truncation_values: np.ndarray,
    next_value: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> np.ndarray:
    """Generalised advantage estimates (Schulman et al., 2016).

    delta_t = r_t + gamma * V'_t - V(s_t), where V'_t is 0 after termination, V(s_final) after
    truncation, else V(s_{t+1}) (values[t+1], or next_value at t = T-1);
    A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}, with done_t = terminated_t or truncated_t.
    With lambda = 1, A_t + V(s_t) equals :func:`n_step_returns`.
    """
    num_steps = _check_shapes(rewards=rewards, values=values, terminated=terminated, truncated=truncated,
                              truncation_values=truncation_values, next_value=next_value)
    continuing, cut_value = _episode_masks(terminated, truncated, truncation_values)
    next_state_values = np.concatenate([values[1:], next_value[None]])
    deltas = rewards + gamma * (next_state_values * continuing + cut_value) - values
    advantages = np.empty_like(rewards)
    following_advantage = np.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        following_advantage = deltas[t] + gamma * gae_lambda * continuing[t] * following_advantage
        advantages[t] = following_advantage
    return advantages


def vtrace(
    rewards: np.ndarray,
    values: np.ndarray,
    log_rhos: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    truncation_values: np.ndarray,
    next_value: np.ndarray,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    trace_lambda: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """V-trace targets and policy-gradient advantages for a rollout acted by a behaviour policy mu and learned by
    pi (Espeholt et al., 2018, IMPALA, section 4), with ``log_rhos = log pi(a_t|x_t) - log mu(a_t|x_t)``.

    rho_t = min(rho_bar, pi/mu), c_t = trace_lambda * min(c_bar, pi/mu) (the paper's remark 2 for lambda), and
    delta_t = rho_t * (r_t + gamma * V'_t - V(x_t)), where V'_t is 0 after termination, V(s_final) after
    truncation, else V(x_{t+1}) (values[t+1], or next_value at t = T-1). The targets
    v_t = V(x_t) + delta_t + gamma * c_t * (1 - done_t) * (v_{t+1} - V(x_{t+1})) cut the traces at every episode
    end, and the advantages are rho_t * (r_t + gamma * v'_t - V(x_t)), with v'_t the target after step t: 0 after
    termination, V(s_final) after truncation, else v_{t+1} (next_value at t = T-1).

    On-policy (every log_rho 0) with rho_bar, c_bar >= 1 the targets are GAE(trace_lambda)'s returns
    (:func:`gae_advantages` plus the values), and with trace_lambda = 1 :func:`n_step_returns`; the advantages are
    then the n-step returns minus the values. Returns (targets, advantages), both [T, N].
    """
    num_steps = _check_shapes(rewards=rewards, values=values, log_rhos=log_rhos, terminated=terminated,
                              truncated=truncated, truncation_values=truncation_values, next_value=next_value)
    continuing, cut_value = _episode_masks(terminated, truncated, truncation_values)
    ratios = np.exp(log_rhos)
    rhos, cs = np.minimum(rho_bar, ratios), trace_lambda * np.minimum(c_bar, ratios)
    next_state_values = np.concatenate([values[1:], next_value[None]])
    deltas = rhos * (rewards + gamma * (next_state_values * continuing + cut_value) - values)
    corrections = np.empty_like(rewards)  # v_t - V(x_t)
    following = np.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        following = deltas[t] + gamma * cs[t] * continuing[t] * following
        corrections[t] = following
    targets = values + corrections
    next_targets = np.concatenate([targets[1:], next_value[None]])
    advantages = rhos * (rewards + gamma * (next_targets * continuing + cut_value) - values)
    return targets, advantages


def clipped_surrogate(
    log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate policy loss (Schulman et al., 2017, eq. 7) against a reference policy.

    With r = pi(a|s) / pi_ref(a|s): -mean(w * min(r * A, clip(r, 1 - eps, 1 + eps) * A)), w = 1 unless ``weights``
    are given. At pi = pi_ref its gradient is the policy gradient -mean(w * A * grad log pi). Returns the loss and,
    without gradient, the ratios r.
    """
    ratio = (log_probs - reference_log_probs.detach()).exp()
    advantages = advantages.detach()
    surrogate = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    if weights is not None:
        surrogate = weights.detach() * surrogate
    return surrogate.mean(), ratio.detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_range: float | None) -> torch.Tensor:
    """mean((V(s) - R)^2), or with a ``clip_range`` mean(max((V - R)^2, (V_clip - R)^2)) where V_clip is V moved at
    most ``clip_range`` from ``old_values`` (CleanRL's ``clip_vloss``, Stable-Baselines3's ``clip_range_vf``). No
    factor 0.5, as Stable-Baselines3: CleanRL's ``vf_coef`` is twice the ``value_coef`` that weights this loss."""
    errors = (values - returns.detach()).pow(2)
    if clip_range is not None:
        clipped = old_values.detach() + (values - old_values.detach()).clamp(-clip_range, clip_range)
        errors = torch.max(errors, (clipped - returns.detach()).pow(2))
    return errors.mean()


def approximate_kl(log_probs: torch.Tensor, reference_log_probs: torch.Tensor) -> torch.Tensor:
    """mean((r - 1) - log r) with r = pi / pi_ref: Schulman's unbiased, non-negative estimator of KL(pi_ref, pi), as
    CleanRL's ``approx_kl``. Without gradient."""
    with torch.no_grad():
        log_ratio = log_probs - reference_log_probs
        return (log_ratio.exp() - 1 - log_ratio).mean()


def ppo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    clip_value: bool,
    value_coef: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's loss over a minibatch of transitions: L = :func:`clipped_surrogate` against ``old_log_probs`` +
    value_coef * :func:`value_loss` (clipped with ``clip_range`` under ``clip_value``) - entropy_coef * mean(H).
    Also returns, without gradient, :func:`approximate_kl` and the fraction of ratios outside the clip range."""
    policy_loss, ratio = clipped_surrogate(log_probs, old_log_probs, advantages, clip_range)
    critic_loss = value_loss(values, old_values, returns, clip_range if clip_value else None)
    entropy_mean = entropy.mean()
    total = policy_loss + value_coef * critic_loss - entropy_coef * entropy_mean
    return total, {"policy_loss": policy_loss, "value_loss": critic_loss, "entropy": entropy_mean,
                   "approx_kl": approximate_kl(log_probs, old_log_probs.detach()),
                   "clip_fraction": clip_fraction(ratio, clip_range)}


def clip_fraction(ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """The fraction of ``ratio`` outside [1 - clip_range, 1 + clip_range]."""
    return ((ratio - 1).abs() > clip_range).float().mean()


# --------------------------------------------------------------------------- off-policy corrections
# Data acted by a behaviour policy mu, older than the learner's policy pi. The proximal policy pi_prox is the
# learner's own when it takes the batch (before its first step on it): on-policy it is mu. Each correction is a
# policy loss of (log pi, log pi_prox, log mu, advantages, clip_range, rho_bar), returning the loss and the ratios
# its clipping or weighting acts on; :data:`CORRECTIONS` also says whether its targets and advantages are V-trace's
# (:func:`vtrace` with log rho = log pi_prox - log mu) or the same recursion with every ratio 1 (uncorrected).
# With one step per batch (IMPALA) pi is pi_prox at the step, where every clipped surrogate's gradient is the policy
# gradient.


def truncated_importance_weights(log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor,
                                 rho_bar: float) -> torch.Tensor:
    """min(rho_bar, pi / mu), without gradient."""
    return (log_probs.detach() - behaviour_log_probs).exp().clamp(max=rho_bar)


def uncorrected_surrogate(log_probs: torch.Tensor, proximal_log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor,
                          advantages: torch.Tensor, clip_range: float,
                          rho_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``none``: PPO as if the data were the proximal policy's (its clipped surrogate against pi_prox), mu ignored;
    with uncorrected targets. IMPALA's "no correction" at one step per batch. Also ``vtrace``'s policy loss, whose
    V-trace advantages carry the correction (rho_t = min(rho_bar, pi_prox/mu) weights each)."""
    return clipped_surrogate(log_probs, proximal_log_probs, advantages, clip_range)


def truncated_importance_sampling(log_probs: torch.Tensor, proximal_log_probs: torch.Tensor,
                                  behaviour_log_probs: torch.Tensor, advantages: torch.Tensor, clip_range: float,
                                  rho_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``truncated_is``: the policy gradient with each term weighted by min(rho_bar, pi/mu) at the current pi,
    -mean(min(rho_bar, pi/mu) * A * log pi), unclipped; with uncorrected targets (IMPALA's Table 2 "1-step
    importance sampling"). On-policy, at pi = mu, the policy gradient."""
    weights = truncated_importance_weights(log_probs, behaviour_log_probs, rho_bar)
    loss = -(weights * advantages.detach() * log_probs).mean()
    return loss, (log_probs.detach() - behaviour_log_probs).exp()


def behaviour_clipped_surrogate(log_probs: torch.Tensor, proximal_log_probs: torch.Tensor,
                                behaviour_log_probs: torch.Tensor, advantages: torch.Tensor, clip_range: float,
                                rho_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``ppo_clip``: the clipped surrogate with the ratio taken against the behaviour policy, pi/mu, on V-trace's
    targets and advantages (Sample Factory's APPO). A sample acted long ago starts outside the clip range and moves
    the policy only towards it. On-policy (mu = pi_prox) it is PPO's loss."""
    return clipped_surrogate(log_probs, behaviour_log_probs, advantages, clip_range)


def decoupled_surrogate(log_probs: torch.Tensor, proximal_log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor,
                        advantages: torch.Tensor, clip_range: float,
                        rho_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoupled``: decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy optimization"; AReaL, Fu
    et al. 2025): the trust region is around the proximal policy, the off-policy correction a separate weight,
    -mean(min(rho_bar, pi_prox/mu) * min(r A, clip(r) A)) with r = pi/pi_prox; with uncorrected targets. On-policy
    (mu = pi_prox) it is PPO's loss."""
    weights = truncated_importance_weights(proximal_log_probs, behaviour_log_probs, rho_bar)
    return clipped_surrogate(log_probs, proximal_log_probs, advantages, clip_range, weights)


class Correction(NamedTuple):
    policy_loss: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    vtrace_targets: bool  # targets and advantages by V-trace; else by the same recursion with every ratio 1


CORRECTIONS: dict[str, Correction] = {
    "vtrace": Correction(uncorrected_surrogate, vtrace_targets=True),
    "none": Correction(uncorrected_surrogate, vtrace_targets=False),
    "truncated_is": Correction(truncated_importance_sampling, vtrace_targets=False),
    "ppo_clip": Correction(behaviour_clipped_surrogate, vtrace_targets=True),
    "decoupled": Correction(decoupled_surrogate, vtrace_targets=False),
}


def actor_critic_loss(
    log_probs: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    advantages: torch.Tensor,
    value_coef: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage actor-critic loss over a batch of transitions (any matching shapes).

    L = -mean(A * log pi(a|s)) + value_coef * mean((R - V(s))^2) - entropy_coef * mean(H(pi(.|s))),
    with the advantages A and returns R treated as constants. Returns L and its three parts.
    """
    if not (log_probs.shape == entropy.shape == values.shape == returns.shape == advantages.shape):
        raise ValueError("log_probs, entropy, values, returns and advantages must share one shape")
    policy_loss = -(advantages.detach() * log_probs).mean()
    value_loss = (returns.detach() - values).pow(2).mean()
    entropy_mean = entropy.mean()
    total = policy_loss + value_coef * value_loss - entropy_coef * entropy_mean
    return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy_mean}
