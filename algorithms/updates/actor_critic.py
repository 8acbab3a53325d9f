"""The n-step actor-critic update rule (A2C, A3C; Mnih et al. 2016), with GAE when ``gae_lambda < 1``: one step
per rollout, on the policy that collected it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from algorithms.config import AlgoConfig
from algorithms.core.losses import actor_critic_loss, gae_advantages, n_step_returns
from algorithms.core.nets import ActorCritic
from algorithms.core.rollout import Rollout
from algorithms.updates.rule import UpdateRule


def targets(rollout: Rollout, algo: AlgoConfig) -> tuple[np.ndarray, np.ndarray]:
    """The rollout's returns and advantages, ``[T, N]``: n-step (``gae_lambda=1``) or GAE(lambda), from the values
    the rollout was collected with."""
    rewards, values = rollout.rewards.numpy(), rollout.values.numpy()
    bootstrap = dict(terminated=rollout.terminated.numpy(), truncated=rollout.truncated.numpy(),
                     truncation_values=rollout.truncation_values.numpy(), next_value=rollout.next_value.numpy())
    if algo.gae_lambda == 1.0:
        returns = n_step_returns(rewards, gamma=algo.gamma, **bootstrap)
        return returns, returns - values
    advantages = gae_advantages(rewards, values, gamma=algo.gamma, gae_lambda=algo.gae_lambda, **bootstrap)
    return advantages + values, advantages


def compute_gradients(model: ActorCritic, rollout: Rollout, algo: AlgoConfig) -> dict[str, float]:
    """Fill ``model``'s ``.grad`` with the gradient of the actor-critic loss on ``rollout``.

    Returns the loss parts and the pre-clipping gradient norm. Gradients are clipped to
    ``algo.max_grad_norm`` in place; ``.grad`` is overwritten, never accumulated.
    """
    returns_np, advantages_np = targets(rollout, algo)
    device = model.device
    returns = torch.from_numpy(returns_np).to(device)
    advantages = torch.from_numpy(advantages_np).flatten().to(device)
    if algo.normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    # Observations cross to an accelerator as they are stored: uint8 frames a quarter of their float size.
    log_probs, entropy, values = model.evaluate(rollout.obs.flatten(0, 1).to(device),
                                                rollout.actions.flatten(0, 1).to(device))
    loss, parts = actor_critic_loss(log_probs, entropy, values, returns.flatten(), advantages,
                                    algo.value_coef, algo.entropy_coef)
    return backpropagate(model, loss, parts, algo)


def backpropagate(model: ActorCritic, loss: torch.Tensor, parts: dict[str, torch.Tensor],
                  algo: AlgoConfig) -> dict[str, float]:
    """Overwrite ``model``'s ``.grad`` with the gradient of ``loss``, clipped to ``algo.max_grad_norm`` in place;
    return the loss parts and the pre-clipping gradient norm."""
    model.flat_grads.zero_()
    loss.backward()
    grad_norm = float(model.flat_grads.norm())
    if algo.max_grad_norm is not None and grad_norm > algo.max_grad_norm:
        # The same scaling as torch.nn.utils.clip_grad_norm_, on the one flat gradient.
        model.flat_grads.mul_(algo.max_grad_norm / (grad_norm + 1e-6))
    stats = {name: float(value.detach()) for name, value in parts.items()}
    stats["grad_norm"] = grad_norm
    return stats


class NStepActorCritic(UpdateRule):
    """One step per rollout with :func:`compute_gradients`."""

    def gradients(self, model: ActorCritic, batch: Rollout) -> Iterator[dict[str, float]]:
        yield compute_gradients(model, batch, self.algo)
