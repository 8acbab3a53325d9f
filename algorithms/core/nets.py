"""The actor-critic network shared by every schedule.

The torso follows the observations. Flat (1-D) observations get separate actor and critic MLPs, as in
Stable-Baselines3's A2C ``MlpPolicy`` (whose hyperparameters the classic-control env configs use). Image
observations (channels first) get a CNN: the Nature-DQN torso (Mnih et al. 2015, as SB3's ``NatureCNN``)
for Atari's 84x84 frame stacks, the MinAtar paper's (Young & Tian 2019) for its 10x10 grids; by default
one CNN feeds both heads, as in the A3C paper and SB3's ``CnnPolicy`` (``share_torso`` forces either).
uint8 observations are scaled to [0, 1] inside the model, so rollouts store and ship them as bytes.
Initialisation is orthogonal (gain sqrt(2) in the torso, 0.01 on the policy head, 1 on the value head).
Discrete actions use a categorical head over logits; continuous actions a diagonal Gaussian whose log
standard deviation is a state-independent parameter.

All parameters live in one flat buffer and their gradients in another. An MLP over float observations
acts in numpy over views of the same memory; a CNN (or an MLP over uint8 observations) acts in torch
without autograd; both sample with the caller's numpy generator. Learning runs in torch with autograd
(see docs/design.md for why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# Per CNN torso: its convolutions as (out channels, kernel, stride), each followed by a ReLU, then the width
# of the ReLU linear layer over their flattened output.
CNN_TORSOS = {
    "nature": ([(32, 8, 4), (64, 4, 2), (64, 3, 1)], 512),
    "minatar": ([(16, 3, 1)], 128),
}
NATURE_MIN_SIDE = 36  # the smallest frame the Nature torso's convolutions leave a pixel of


class MLPTorso(nn.ModuleList):
    """Linear layers, each followed by the activation."""

    def __init__(self, in_size: int, hidden_sizes: list[int], activation: str):
        sizes = [in_size, *hidden_sizes]
        super().__init__(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Functional calls over the layers' parameters: at small batches calling each nn.Module costs
        # more than its arithmetic (measured 56 vs 150 us per forward pass).
        for layer in cast("Iterable[nn.Linear]", self):  # nn.ModuleList does not say what it holds
            x = self.activation(F.linear(x, layer.weight, layer.bias))
        return x


def cnn_kind(cnn: str, obs_shape: tuple[int, ...]) -> str:
    """``model.cnn`` resolved for channels-first frames: ``auto`` takes the Nature torso where it fits."""
    side = min(obs_shape[1:])
    if cnn == "auto":
        return "nature" if side >= NATURE_MIN_SIDE else "minatar"
    if cnn == "nature" and side < NATURE_MIN_SIDE:
        raise ValueError(f"the nature CNN needs frames of at least {NATURE_MIN_SIDE} pixels a side, not {obs_shape}")
    return cnn


class CNNTorso(nn.Module):
    """Convolutions, each followed by a ReLU, then a ReLU linear layer over their flattened output."""

    def __init__(self, obs_shape: tuple[int, ...], convolutions: list[tuple[int, int, int]], width: int):
        super().__init__()
        channels, side = obs_shape[0], np.array(obs_shape[1:])
        self.convolutions = nn.ModuleList()
        for out_channels, kernel, stride in convolutions:
            self.convolutions.append(nn.Conv2d(channels, out_channels, kernel, stride))
            channels, side = out_channels, (side - kernel) // stride + 1
        self.linear = nn.Linear(channels * int(np.prod(side)), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Functional calls, as in MLPTorso: acting runs a batch of a few frames, where calling each module
        # costs about as much as MinAtar's convolution itself.
        for conv in cast("Iterable[nn.Conv2d]", self.convolutions):  # nn.ModuleList does not say what it holds
            x = torch.relu(F.conv2d(x, conv.weight, conv.bias, conv.stride))
        return torch.relu(F.linear(x.flatten(1), self.linear.weight, self.linear.bias))


def cnn_torso(kind: str, obs_shape: tuple[int, ...]) -> CNNTorso:
    """The ``kind`` CNN torso (see :data:`CNN_TORSOS`) over channels-first frames of ``obs_shape``."""
    convolutions, width = CNN_TORSOS[kind]
    return CNNTorso(obs_shape, convolutions, width)


def orthogonal_init(module: nn.Module, gain: float) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            nn.init.orthogonal_(layer.weight, gain=gain)
            assert layer.bias is not None  # every layer here is built with one
            nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """Policy and value heads over an MLP (flat observations) or a CNN (channels-first frames) torso.

    ``hidden_sizes`` and ``activation`` shape the MLP; ``cnn`` (auto, nature, minatar) picks the CNN.
    ``share_torso``: one torso under both heads; None shares a CNN and not the MLP, which cannot be shared
    (its numpy acting runs the actor's and the critic's torsos).
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Discrete | spaces.Box,
        hidden_sizes: list[int],
        activation: str = "tanh",
        log_std_init: float = 0.0,
        ortho_init: bool = True,
        cnn: str = "auto",
        share_torso: bool | None = None,
    ):
        super().__init__()
        shape = self.observation_shape = observation_space.shape
        self.image = len(shape) == 3
        self.shares_torso = self.image if share_torso is None else share_torso
        if self.shares_torso and not self.image:
            raise ValueError(f"the MLP torso of {shape} observations cannot be shared; only a CNN torso can")
        uint8 = observation_space.dtype == np.uint8
        self.obs_scale = 1.0 / float(observation_space.high.max()) if uint8 else 1.0
        self.numpy_acting = not (self.image or uint8)
        self.discrete = isinstance(action_space, spaces.Discrete)
        if isinstance(action_space, spaces.Discrete):
            action_size = int(action_space.n)
        else:
            action_size = int(np.prod(action_space.shape))
        self.numpy_activation = NUMPY_ACTIVATIONS[activation]
        self._views: tuple | None = None
        torsos, features = self._build_torsos(shape, hidden_sizes, activation, cnn)
        if self.shares_torso:
            (self.torso,) = torsos
        else:
            self.actor, self.critic = torsos
        self.policy_head = nn.Linear(features, action_size)
        self.value_head = nn.Linear(features, 1)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((action_size,), float(log_std_init)))
        if ortho_init:
            for torso in torsos:
                orthogonal_init(torso, math.sqrt(2))
            orthogonal_init(self.policy_head, 0.01)
            orthogonal_init(self.value_head, 1.0)
        self.flat_params, self.flat_grads = self._flatten(shared=False)

    def _build_torsos(self, shape: tuple[int, ...], hidden_sizes: list[int], activation: str,
                      cnn: str) -> tuple[list[nn.Module], int]:
        """The torsos (one when shared, else the actor's and the critic's) and their output width."""
        if not self.image:
            return [MLPTorso(int(np.prod(shape)), list(hidden_sizes), activation) for _ in range(2)], hidden_sizes[-1]
        kind = cnn_kind(cnn, shape)
        return [cnn_torso(kind, shape) for _ in range(1 if self.shares_torso else 2)], CNN_TORSOS[kind][1]

    def _flatten(self, shared: bool, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Move every parameter into one buffer (and every gradient into another) as views, on ``device``
        (where they are now by default)."""
        params = list(self.parameters())  # the layers' own parameters: flat_params is a plain tensor
        total = sum(p.numel() for p in params)
        device = params[0].device if device is None else device
        flat = torch.empty(total, device=device)
        if shared:
            flat.share_memory_()
        grads = torch.zeros(total, device=device)
        offset = 0
        for param in params:
            size = param.numel()
            flat[offset:offset + size].copy_(param.data.reshape(-1))
            param.data = flat[offset:offset + size].view_as(param)
            # Backward accumulates into an existing .grad in place, so gradients land in `grads`.
            param.grad = grads[offset:offset + size].view_as(param)
            offset += size
        # A plain leaf tensor, not an nn.Parameter, so that it is not registered as one more parameter
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

    def place(self, device: torch.device) -> ActorCritic:
        """Move the parameters and gradients to ``device``, still one buffer each. Off the CPU, acting runs in
        torch there too (the numpy path reads CPU memory)."""
        self.flat_params, self.flat_grads = self._flatten(shared=False, device=device)
        self.numpy_acting = self.numpy_acting and device.type == "cpu"
        return self

    @property
    def device(self) -> torch.device:
        return self.flat_params.device

    def _inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """What the torso takes: uint8 observations scaled to [0, 1], flat ones flattened."""
        if obs.dtype == torch.uint8:
            obs = obs.float() * self.obs_scale
        return obs if self.image else obs.flatten(1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy output (logits, or Gaussian means) and state values, for a batch of observations."""
        x = self._inputs(obs)
        if self.shares_torso:
            policy_features = value_features = self.torso(x)
        else:
            policy_features, value_features = self.actor(x), self.critic(x)
        return self.policy_head(policy_features), self.value_head(value_features).squeeze(-1)

    def _numpy_views(self) -> tuple:
        """(actor layers, critic layers, policy head, value head, log_std) as numpy views."""
        anchor = self.policy_head.weight.data_ptr()
        if self._views is None or self._views[0] != anchor:
            def view(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
                return layer.weight.detach().numpy().T, layer.bias.detach().numpy()

            log_std = None if self.discrete else self.log_std.detach().numpy()
            # Acting in numpy: the torsos are MLPTorsos (nn.ModuleList does not say what it holds).
            actor, critic = cast("Iterable[nn.Linear]", self.actor), cast("Iterable[nn.Linear]", self.critic)
            self._views = (anchor, [view(layer) for layer in actor], [view(layer) for layer in critic],
                           view(self.policy_head), view(self.value_head), log_std)
        return self._views[1:]

    def _numpy_torso(self, layers: list, x: np.ndarray) -> np.ndarray:
        for weight, bias in layers:
            x = self.numpy_activation(x @ weight + bias)
        return x

    def act(self, obs: np.ndarray, rng: np.random.Generator,
            deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Sample actions for a batch of observations (or, ``deterministic``, take the most probable action or
        the Gaussian mean); return them with the state values (numpy)."""
        if not self.numpy_acting:
            return self._act_in_torch(obs, rng, deterministic)
        actor, critic, (policy_w, policy_b), (value_w, value_b), log_std = self._numpy_views()
        obs = obs.reshape(len(obs), -1)
        policy_out = self._numpy_torso(actor, obs) @ policy_w + policy_b
        values = (self._numpy_torso(critic, obs) @ value_w + value_b)[:, 0]
        return self._sample(policy_out, log_std, rng, deterministic), values

    @torch.no_grad()
    def _act_in_torch(self, obs: np.ndarray, rng: np.random.Generator,
                      deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        policy_out, values = self(torch.from_numpy(obs).to(self.device))
        log_std = None if self.discrete else self.log_std.cpu().numpy()
        return self._sample(policy_out.cpu().numpy(), log_std, rng, deterministic), values.cpu().numpy()

    def _sample(self, policy_out: np.ndarray, log_std: np.ndarray | None, rng: np.random.Generator,
                deterministic: bool) -> np.ndarray:
        if deterministic:
            return np.argmax(policy_out, axis=1) if self.discrete else policy_out.astype(np.float32)
        if self.discrete:
            # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample, without normalising.
            uniform = rng.random(policy_out.shape)
            return np.argmax(policy_out - np.log(-np.log(uniform + 1e-20)), axis=1)
        assert log_std is not None  # continuous actions have one
        return (policy_out + np.exp(log_std) * rng.standard_normal(policy_out.shape)).astype(np.float32)

    def predict_values(self, obs: np.ndarray) -> np.ndarray:
        """State values for a batch of observations (numpy, no autograd)."""
        if not self.numpy_acting:
            with torch.no_grad():
                return self(torch.from_numpy(obs).to(self.device))[1].cpu().numpy()
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
