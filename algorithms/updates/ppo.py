"""Proximal policy optimisation (Schulman et al., 2017): ``algo.epochs`` passes over each batch, each pass
``algo.minibatches`` optimizer steps on shuffled equal shares of it, with the clipped surrogate loss
(:func:`~algorithms.core.losses.ppo_loss`), as CleanRL's ``ppo.py`` and Stable-Baselines3's PPO do.

Every minibatch step is one update of the rule: its row records the version the batch was collected with and the
version the step is applied to, so PPO's later epochs show their lag in the same columns as an asynchronous
schedule's staleness. Advantages (GAE(``gae_lambda``) on the values the batch was collected with) are normalized
per minibatch under ``algo.normalize_advantage``; the batch is shuffled with torch's generator, which checkpoints
save, so a resumed run shuffles as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from algorithms.core.losses import ppo_loss
from algorithms.core.nets import ActorCritic
from algorithms.core.rollout import Rollout
from algorithms.updates.actor_critic import backpropagate, targets
from algorithms.updates.rule import UpdateRule


class PPO(UpdateRule):
    """Several clipped steps per rollout; stops a rollout's passes early once a pass ends above ``algo.target_kl``."""

    def gradients(self, model: ActorCritic, batch: Rollout) -> Iterator[dict[str, float]]:
        algo, device = self.algo, model.device
        returns_np, advantages_np = targets(batch, algo)
        returns = torch.from_numpy(returns_np).flatten().to(device)
        advantages = torch.from_numpy(advantages_np).flatten().to(device)
        old_values = batch.values.flatten().to(device)
        obs, actions = batch.obs.flatten(0, 1).to(device), batch.actions.flatten(0, 1).to(device)
        with torch.no_grad():  # the policy that collected the batch: the model as it is before the first step
            old_log_probs = model.evaluate(obs, actions)[0]
        size = len(returns)
        for _ in range(algo.epochs):
            approx_kl = 0.0
            for indices in torch.randperm(size).split(size // algo.minibatches):
                minibatch_advantages = advantages[indices]
                if algo.normalize_advantage:
                    minibatch_advantages = ((minibatch_advantages - minibatch_advantages.mean())
                                            / (minibatch_advantages.std() + 1e-8))
                log_probs, entropy, values = model.evaluate(obs[indices], actions[indices])
                loss, parts = ppo_loss(log_probs, old_log_probs[indices], entropy, values, old_values[indices],
                                       returns[indices], minibatch_advantages, algo.clip_range, algo.clip_value,
                                       algo.value_coef, algo.entropy_coef)
                stats = backpropagate(model, loss, parts, algo)
                approx_kl = stats["approx_kl"]
                yield stats
            if algo.target_kl is not None and approx_kl > algo.target_kl:
                return
