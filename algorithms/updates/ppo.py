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

from collections.abc import Callable, Iterator

import torch

from algorithms.config import AlgoConfig
from algorithms.core.losses import ppo_loss
from algorithms.core.nets import ActorCritic
from algorithms.core.rollout import Rollout
from algorithms.updates.actor_critic import backpropagate, targets
from algorithms.updates.rule import UpdateRule

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
               tuple[torch.Tensor, dict[str, torch.Tensor]]]


Evaluation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # log-probabilities, entropies, values


def clipped_passes(model: ActorCritic, obs: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
                   indices: torch.Tensor, algo: AlgoConfig, loss_of: Loss,
                   evaluated: Evaluation | None = None) -> Iterator[dict[str, float]]:
    """PPO's passes, whatever the loss: ``algo.epochs`` passes over the samples ``indices`` of a batch, each
    ``algo.minibatches`` steps on shuffled equal shares of them, advantages normalized per minibatch under
    ``algo.normalize_advantage``; a batch's passes stop once a pass ends with an approximate KL above
    ``algo.target_kl``. ``loss_of(share, log_probs, entropy, values, advantages)`` gives a minibatch's loss and its
    parts (``approx_kl`` among them); each step's gradient is left in ``model.flat_grads`` and its parts yielded.
    ``evaluated``: the whole batch's evaluation with autograd, for a caller whose every pass is one step on the whole
    batch, which then takes its samples in order and reuses the evaluation in the first pass."""
    for epoch in range(algo.epochs):
        approx_kl = 0.0
        shares = [indices] if evaluated is not None else indices[torch.randperm(len(indices))].tensor_split(
            algo.minibatches)
        for share in shares:
            minibatch_advantages = advantages[share]
            if algo.normalize_advantage:
                minibatch_advantages = ((minibatch_advantages - minibatch_advantages.mean())
                                        / (minibatch_advantages.std() + 1e-8))
            log_probs, entropy, values = (evaluated if evaluated is not None and epoch == 0
                                          else model.evaluate(obs[share], actions[share]))
            loss, parts = loss_of(share, log_probs, entropy, values, minibatch_advantages)
            stats = backpropagate(model, loss, parts, algo)
            approx_kl = stats["approx_kl"]
            yield stats
        if algo.target_kl is not None and approx_kl > algo.target_kl:
            return


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

        def loss_of(share: torch.Tensor, log_probs: torch.Tensor, entropy: torch.Tensor, values: torch.Tensor,
                    minibatch_advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return ppo_loss(log_probs, old_log_probs[share], entropy, values, old_values[share], returns[share],
                            minibatch_advantages, algo.clip_range, algo.clip_value, algo.value_coef,
                            algo.entropy_coef)

        yield from clipped_passes(model, obs, actions, advantages, torch.arange(len(returns)), algo, loss_of)
