"""The actor-critic network shared by every schedule.

Separate actor and critic MLPs over the flattened observation, as in Stable-Baselines3's A2C
``MlpPolicy`` (whose hyperparameters the env configs use), with orthogonal initialisation (gain
sqrt(2) in the torso, 0.01 on the policy head, 1 on the value head). Discrete actions use a
categorical head over logits; continuous actions a diagonal Gaussian whose log standard deviation is
a state-independent parameter. All parameters live in one flat buffer and their gradients in another;
acting runs in numpy over views of the same memory, learning in torch with autograd (see
docs/design.md for why).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def linear_stack(in_size: int, hidden_sizes: list[int]) -> nn.ModuleList:
    layers = nn.ModuleList()
    for size in hidden_sizes:
        layers.append(nn.Linear(in_size, size))
        in_size = size
    return layers


class ActorCritic(nn.Module):
    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Discrete | spaces.Box,
        hidden_sizes: list[int],
        activation: str = "tanh",
        log_std_init: float = 0.0,
        ortho_init: bool = True,
    ):
        super().__init__()
        obs_size = int(np.prod(observation_space.shape))
        self.discrete = isinstance(action_space, spaces.Discrete)
        action_size = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.activation = ACTIVATIONS[activation]
        self.numpy_activation = NUMPY_ACTIVATIONS[activation]
        self._views: tuple | None = None
        self.actor = linear_stack(obs_size, list(hidden_sizes))
        self.critic = linear_stack(obs_size, list(hidden_sizes))
        self.policy_head = nn.Linear(hidden_sizes[-1], action_size)
        self.value_head = nn.Linear(hidden_sizes[-1], 1)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((action_size,), float(log_std_init)))
        if ortho_init:
            for torso in (self.actor, self.critic):
                for layer in torso:
                    nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
                    nn.init.zeros_(layer.bias)
            for head, gain in ((self.policy_head, 0.01), (self.value_head, 1.0)):
                nn.init.orthogonal_(head.weight, gain=gain)
                nn.init.zeros_(head.bias)
        self.flat_params, self.flat_grads = self._flatten(shared=False)

    def _flatten(self, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Move every parameter into one buffer (and every gradient into another) as views."""
        params = list(self.parameters())  # the layers' own parameters: flat_params is a plain tensor
        total = sum(p.numel() for p in params)
        flat = torch.empty(total)
        if shared:
            flat.share_memory_()
        grads = torch.zeros(total)
        offset = 0
        for param in params:
            size = param.numel()
            flat[offset:offset + size].copy_(param.data.reshape(-1))
            param.data = flat[offset:offset + size].view_as(param)
            # Backward accumulates into an existing .grad in place, so gradients land in `grads`.
            param.grad = grads[offset:offset + size].view_as(param)
            offset += size
        # A plain leaf tensor, not an nn.Parameter, so that it is not registered as a 13th parameter
        # (it would appear twice in state_dict); optimizers accept any leaf tensor with a .grad.
        flat.grad = grads
        return flat, grads

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient in place. torch's default sets each ``.grad`` to None, which would detach
        the layers from ``flat_grads``: the next backward would fill new tensors that no step ever sees."""
        self.flat_grads.zero_()

    def share_memory(self) -> ActorCritic:
        """Place the parameters in shared memory (gradients stay private to each process)."""
        self.flat_params, self.flat_grads = self._flatten(shared=True)
        return self

    def _features(self, torso: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        # Functional calls over the layers' parameters: acting runs at batch sizes where calling
        # each nn.Module costs more than its arithmetic (measured 56 vs 150 us per forward pass).
        for layer in torso:
            x = self.activation(F.linear(x, layer.weight, layer.bias))
        return x

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy output (logits, or Gaussian means) and state values, for a batch of observations."""
        obs = obs.flatten(1)
        policy_out = F.linear(self._features(self.actor, obs), self.policy_head.weight, self.policy_head.bias)
        return policy_out, self.value(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        features = self._features(self.critic, obs.flatten(1))
        return F.linear(features, self.value_head.weight, self.value_head.bias).squeeze(-1)

    def _numpy_views(self) -> tuple:
        """(actor layers, critic layers, policy head, value head, log_std) as numpy views."""
        anchor = self.policy_head.weight.data_ptr()
        if self._views is None or self._views[0] != anchor:
            def view(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
                return layer.weight.detach().numpy().T, layer.bias.detach().numpy()

            log_std = None if self.discrete else self.log_std.detach().numpy()
            self._views = (anchor, [view(layer) for layer in self.actor], [view(layer) for layer in self.critic],
                           view(self.policy_head), view(self.value_head), log_std)
        return self._views[1:]

    def _numpy_torso(self, layers: list, x: np.ndarray) -> np.ndarray:
        for weight, bias in layers:
            x = self.numpy_activation(x @ weight + bias)
        return x

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample actions for a batch of observations; return them with the state values (numpy)."""
        actor, critic, (policy_w, policy_b), (value_w, value_b), log_std = self._numpy_views()
        obs = obs.reshape(len(obs), -1)
        policy_out = self._numpy_torso(actor, obs) @ policy_w + policy_b
        values = (self._numpy_torso(critic, obs) @ value_w + value_b)[:, 0]
        if self.discrete:
            # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample, without normalising.
            uniform = rng.random(policy_out.shape)
            actions = np.argmax(policy_out - np.log(-np.log(uniform + 1e-20)), axis=1)
        else:
            actions = (policy_out + np.exp(log_std) * rng.standard_normal(policy_out.shape)).astype(np.float32)
        return actions, values

    def predict_values(self, obs: np.ndarray) -> np.ndarray:
        """State values for a batch of observations (numpy, no autograd)."""
        _, critic, _, (value_w, value_b), _ = self._numpy_views()
        return (self._numpy_torso(critic, obs.reshape(len(obs), -1)) @ value_w + value_b)[:, 0]

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities and entropies of the given actions, and state values (with autograd)."""
        policy_out, values = self(obs)
        if self.discrete:
            log_probs_all = torch.log_softmax(policy_out, dim=-1)
            log_probs = log_probs_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs_all.exp() * log_probs_all).sum(-1)
        else:
            log_std = self.log_std.expand_as(policy_out)
            z = (actions - policy_out) / log_std.exp()
            log_probs = (-0.5 * z.pow(2) - log_std - LOG_SQRT_2PI).sum(-1)
            entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1)
        return log_probs, entropy, values
