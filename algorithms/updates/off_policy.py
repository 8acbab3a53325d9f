"""IMPALA's off-policy actor-critic update rule (Espeholt et al. 2018): one step per batch of unrolls acted by older
policies, corrected with V-trace or another ``algo.correction``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from algorithms.config import AlgoConfig
from algorithms.core.losses import actor_critic_loss, vtrace
from algorithms.core.nets import ActorCritic
from algorithms.core.rollout import Unrolls
from algorithms.updates.actor_critic import backpropagate
from algorithms.updates.rule import UpdateRule


def off_policy_gradients(model: ActorCritic, unrolls: Unrolls, algo: AlgoConfig) -> tuple[dict[str, float], float]:
    """Fill ``model``'s ``.grad`` with the actor-critic loss on ``unrolls`` acted by older policies, corrected as
    ``algo.correction`` says (IMPALA's learner; Espeholt et al. 2018):

    - ``vtrace``: V-trace targets and advantages (:func:`~algorithms.core.losses.vtrace`, ``rho_bar``, ``c_bar`` and
      ``gae_lambda`` as its lambda);
    - ``none``: the same targets with every importance ratio taken as 1 (the paper's "no correction");
    - ``truncated_is``: those uncorrected targets, each advantage weighted by its truncated importance ratio
      ``min(rho_bar, pi/mu)`` (the paper's "1-step importance sampling").

    Values are the learner's own, with its current parameters (the bootstrap too); only a truncation's
    ``V(s_final)`` is the actor's. Returns the loss statistics and the mean truncated importance ratio.
    """
    device, rewards = model.device, unrolls.rewards.numpy()
    log_probs, entropy, values = model.evaluate(unrolls.obs.flatten(0, 1).to(device),
                                                unrolls.actions.flatten(0, 1).to(device))
    with torch.no_grad():
        bootstrap_values = model(unrolls.bootstrap_obs.to(device))[1].cpu().numpy()
    log_rhos = log_probs.detach().view(rewards.shape).cpu().numpy() - unrolls.behaviour_log_probs.numpy()
    truncated_ratios = np.minimum(algo.rho_bar, np.exp(log_rhos))
    targets, advantages = vtrace(
        rewards, values.detach().view(rewards.shape).cpu().numpy(),
        log_rhos if algo.correction == "vtrace" else np.zeros_like(log_rhos),
        unrolls.terminated.numpy(), unrolls.truncated.numpy(), unrolls.truncation_values.numpy(), bootstrap_values,
        gamma=algo.gamma, rho_bar=algo.rho_bar, c_bar=algo.c_bar, trace_lambda=algo.gae_lambda)
    if algo.correction == "truncated_is":
        advantages = advantages * truncated_ratios
    advantages_t = torch.from_numpy(advantages).flatten().to(device)
    if algo.normalize_advantage:
        advantages_t = (advantages_t - advantages_t.mean()) / (advantages_t.std() + 1e-8)
    loss, parts = actor_critic_loss(log_probs, entropy, values, torch.from_numpy(targets).flatten().to(device),
                                    advantages_t, algo.value_coef, algo.entropy_coef)
    return backpropagate(model, loss, parts, algo), float(truncated_ratios.mean())


class OffPolicyActorCritic(UpdateRule):
    """One step per batch with :func:`off_policy_gradients`; its statistics add the mean truncated importance ratio."""

    def gradients(self, model: ActorCritic, batch: Unrolls) -> Iterator[dict[str, float]]:
        stats, importance_ratio = off_policy_gradients(model, batch, self.algo)
        yield {**stats, "importance_ratio": importance_ratio}
