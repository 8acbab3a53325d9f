"""The optimizers, over a model's one flat parameter tensor with state created up front.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import torch

from algorithms.config import AlgoConfig
from algorithms.core.nets import ActorCritic


class InPlaceZeroGrad:
    """``zero_grad`` that zeroes ``.grad`` in place. Our optimizers step one flat tensor whose ``.grad`` is the
    model's ``flat_grads``, which every layer's gradient views; torch's default (``.grad = None``) would cut
    that link, and later steps would silently skip the parameters."""

    param_groups: list[dict[str, Any]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.zero_()


class RMSprop(InPlaceZeroGrad, torch.optim.RMSprop):
    pass


class Adam(InPlaceZeroGrad, torch.optim.Adam):
    pass


class RMSpropTF(InPlaceZeroGrad, torch.optim.Optimizer):
    """RMSprop as TensorFlow computes it (Stable-Baselines3's ``RMSpropTFLike``, without momentum or centering):
    ``square_avg = alpha * square_avg + (1 - alpha) * grad**2``, then ``param -= lr * grad / sqrt(square_avg + eps)``.

    Unlike torch's RMSprop, ``eps`` is inside the square root and ``square_avg`` starts at ones (see
    :func:`make_optimizer`). From zeros, torch's first step is about ``lr / sqrt(1 - alpha)`` per parameter
    whatever the gradient's size (10 ``lr`` at ``alpha=0.99``); from ones it is about ``lr * grad``. Hyperparameters
    tuned with TensorFlow, such as rl-baselines3-zoo's A2C on Atari, assume the latter.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, alpha: float, eps: float):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step; a ``closure``, as torch's optimizers take it, recomputes the loss first, which is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                grad, square_avg = param.grad, state["square_avg"]
                state["step"].add_(1)
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                param.addcdiv_(grad, square_avg.add(group["eps"]).sqrt_(), value=-group["lr"])
        return loss


def make_optimizer(model: ActorCritic | torch.Tensor, algo: AlgoConfig) -> torch.optim.Optimizer:
    """RMSprop (the A3C paper's choice), TensorFlow-style RMSprop or Adam over the model's flat parameters,
    state created now.

    Creating the state up front rather than lazily lets an asynchronous schedule place it in shared
    memory before any worker starts, so all workers update one set of statistics (and one step count).
    ``model`` may also be a flat parameter tensor itself: a handle on global parameters.
    """
    params = [model if isinstance(model, torch.Tensor) else model.flat_params]
    optimizer: torch.optim.Optimizer
    if algo.optimizer == "rmsprop":
        optimizer = RMSprop(params, lr=algo.lr, alpha=algo.rmsprop_alpha, eps=algo.optimizer_eps, foreach=True)
        initial_buffers = {"square_avg": 0.0}
    elif algo.optimizer == "rmsprop_tf":
        optimizer = RMSpropTF(params, lr=algo.lr, alpha=algo.rmsprop_alpha, eps=algo.optimizer_eps)
        initial_buffers = {"square_avg": 1.0}
    else:
        optimizer = Adam(params, lr=algo.lr, eps=algo.optimizer_eps, foreach=True)
        initial_buffers = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            state["step"] = torch.zeros(())
            for name, value in initial_buffers.items():
                state[name] = torch.full_like(param, value)
    return optimizer


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
