"""The off-policy actor-critic rule of a central learner whose data were acted by older policies: IMPALA's (Espeholt
et al. 2018: one step per batch of unrolls) and APPO's (Sample Factory's asynchronous PPO, Petrenko et al. 2020:
``algo.epochs`` passes of ``algo.minibatches`` clipped steps over each batch), corrected as ``algo.correction`` says
(:data:`~algorithms.core.losses.CORRECTIONS`) and bounded by ``algo.max_policy_lag``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from algorithms.config import AlgoConfig
from algorithms.core.losses import CORRECTIONS, approximate_kl, clip_fraction, value_loss, vtrace
from algorithms.core.nets import ActorCritic
from algorithms.core.rollout import Unrolls
from algorithms.updates.ppo import clipped_passes
from algorithms.updates.rule import Refused, UpdateRule


def corrected_targets(unrolls: Unrolls, values: np.ndarray, bootstrap_values: np.ndarray, log_rhos: np.ndarray,
                      algo: AlgoConfig) -> tuple[np.ndarray, np.ndarray]:
    """The value targets and advantages of ``unrolls`` [T, N] under ``algo.correction``: V-trace's (``rho_bar``,
    ``c_bar``, ``gae_lambda`` as its lambda) with ``log_rhos = log pi_prox - log mu``, or the same recursion with
    every ratio 1. Values are the learner's; only a truncation's ``V(s_final)`` is the actor's."""
    if not CORRECTIONS[algo.correction].vtrace_targets:
        log_rhos = np.zeros_like(log_rhos)
    return vtrace(unrolls.rewards.numpy(), values, log_rhos, unrolls.terminated.numpy(), unrolls.truncated.numpy(),
                  unrolls.truncation_values.numpy(), bootstrap_values, gamma=algo.gamma, rho_bar=algo.rho_bar,
                  c_bar=algo.c_bar, trace_lambda=algo.gae_lambda)


class OffPolicyActorCritic(UpdateRule):
    """``epochs`` x ``minibatches`` steps on each batch of unrolls (IMPALA: one), on targets computed once per batch
    with the learner's parameters as it takes the batch (the proximal policy).

    Samples whose lag (the learner's version when it takes the batch minus the version that acted them) exceeds
    ``algo.max_policy_lag`` are left out of every pass, as Sample Factory's learner leaves them; a batch left with too
    few samples for its minibatches is recorded as dropped (:class:`~algorithms.updates.rule.Refused`). Each step's
    statistics add the mean truncated importance ratio min(rho_bar, pi_prox/mu) over the batch, the approximate KL
    from the proximal policy, the fraction of ratios the correction clipped, the mean lag of the step's samples (each
    from its own step's behaviour version) and the fraction of the batch left out.
    """

    def gradients(self, model: ActorCritic, batch: Unrolls) -> Iterator[dict[str, float]]:
        algo, device, shape = self.algo, model.device, batch.rewards.shape
        correction = CORRECTIONS[algo.correction]
        obs, actions = batch.obs.flatten(0, 1).to(device), batch.actions.flatten(0, 1).to(device)
        behaviour = batch.behaviour_log_probs.flatten().to(device)
        versions = batch.behaviour_versions.flatten()
        kept = self.within_lag(versions)
        whole_batch = algo.minibatches == 1 and len(kept) == len(behaviour)
        with torch.set_grad_enabled(whole_batch):  # a single whole-batch step reuses this pass; others need none
            evaluated = model.evaluate(obs, actions)
        proximal, old_values = evaluated[0].detach(), evaluated[2].detach()
        with torch.no_grad():
            bootstrap_values = model(batch.bootstrap_obs.to(device))[1].cpu().numpy()
        log_rhos = (proximal - behaviour).view(shape).cpu().numpy()
        targets_np, advantages_np = corrected_targets(batch, old_values.view(shape).cpu().numpy(), bootstrap_values,
                                                      log_rhos, algo)
        targets, advantages = (torch.from_numpy(array).flatten().to(device) for array in (targets_np, advantages_np))
        rule_stats = {"importance_ratio": float(np.minimum(algo.rho_bar, np.exp(log_rhos)).mean()),
                      "lag_dropped": 1.0 - len(kept) / len(behaviour)}
        if len(kept) < 2 * algo.minibatches:  # too few for minibatches whose advantages can be normalized
            yield Refused(policy_loss=0.0, value_loss=0.0, entropy=0.0, grad_norm=0.0, approx_kl=0.0,
                          clip_fraction=0.0, sample_lag=float((self.version - versions).float().mean()), **rule_stats)
            return

        def loss_of(share: torch.Tensor, log_probs: torch.Tensor, entropy: torch.Tensor, values: torch.Tensor,
                    minibatch_advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            policy_loss, ratio = correction.policy_loss(log_probs, proximal[share], behaviour[share],
                                                        minibatch_advantages, algo.clip_range, algo.rho_bar)
            critic_loss = value_loss(values, old_values[share], targets[share],
                                     algo.clip_range if algo.clip_value else None)
            entropy_mean = entropy.mean()
            loss = policy_loss + algo.value_coef * critic_loss - algo.entropy_coef * entropy_mean
            return loss, {"policy_loss": policy_loss, "value_loss": critic_loss, "entropy": entropy_mean,
                          "approx_kl": approximate_kl(log_probs, proximal[share]),
                          "clip_fraction": clip_fraction(ratio, algo.clip_range),
                          "sample_lag": (self.version - versions[share]).float().mean()}

        for stats in clipped_passes(model, obs, actions, advantages, kept, algo, loss_of,
                                    evaluated if whole_batch else None):
            yield {**stats, **rule_stats}

    def within_lag(self, behaviour_versions: torch.Tensor) -> torch.Tensor:
        """The indices of the samples acted at most ``algo.max_policy_lag`` versions before the learner's own."""
        if self.algo.max_policy_lag is None:
            return torch.arange(len(behaviour_versions))
        return torch.nonzero(self.version - behaviour_versions <= self.algo.max_policy_lag).flatten()
