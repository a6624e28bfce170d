"""Caffe's SGD solver (PAPER.md section 4): lr inside the momentum buffer, per-layer lr/decay multipliers, steps.

Caffe (sgd_solver.cpp) adds `decay_mult * weight_decay * w` to the gradient, then keeps
`v = momentum * v + lr * lr_mult * g` and sets `w = w - v`. torch.optim.SGD keeps `v = momentum * v + g` and
sets `w = w - lr * v`: the two agree while lr is constant, but when lr drops torch scales the whole history at
once while Caffe lets the old, larger steps decay through the momentum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sppnet.core.errors import InvalidInput


@dataclass(frozen=True)
class SolverConfig:
    """The paper's solver: lr 0.01, momentum 0.9, weight decay 5e-4; Caffe's bias lr x2, no bias decay.

    `milestones` are the epochs (0-based) from which lr is multiplied by `gamma` once more. The paper divides
    by 10 "twice at plateaus", found by watching validation error, so no fixed epochs are given and the
    default is none (a constant lr); pass two epochs to reproduce the two drops.
    """

    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()
    weight_lr_mult: float = 1.0
    weight_decay_mult: float = 1.0
    bias_lr_mult: float = 2.0
    bias_decay_mult: float = 0.0

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise InvalidInput(f"SolverConfig.base_lr must be > 0; got {self.base_lr}")
        if not 0 <= self.momentum < 1:
            raise InvalidInput(f"SolverConfig.momentum must be in [0, 1); got {self.momentum}")
        if self.weight_decay < 0:
            raise InvalidInput(f"SolverConfig.weight_decay must be >= 0; got {self.weight_decay}")
        milestones = tuple(self.milestones)
        if any(m < 0 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise InvalidInput(
                f"SolverConfig.milestones must be distinct epochs >= 0 in increasing order; got {self.milestones}"
            )
        object.__setattr__(self, "milestones", milestones)


class CaffeSGD(torch.optim.Optimizer):
    """SGD with Caffe's update: v = momentum * v + lr * lr_mult * (g + weight_decay * decay_mult * w); w -= v.

    Each param group may carry `lr_mult` and `decay_mult` (default 1), as a Caffe layer's `param {}` does.
    Parameters whose `.grad` is None are skipped (torch's convention; Caffe would still decay their history).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise InvalidInput(
                f"CaffeSGD needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0; "
                f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}"
            )
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "lr_mult": 1.0, "decay_mult": 1.0}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Caffe update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            local_lr = group["lr"] * group["lr_mult"]
            local_decay = group["weight_decay"] * group["decay_mult"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise InvalidInput("CaffeSGD does not support sparse gradients")
                diff = param.grad.add(param, alpha=local_decay) if local_decay else param.grad
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                history = state["momentum_buffer"]
                history.mul_(group["momentum"]).add_(diff, alpha=local_lr)
                param.sub_(history)
        return loss


def is_bias(name: str) -> bool:
    """Whether a parameter name (as from `named_parameters`) is a bias."""
    return name == "bias" or name.endswith(".bias")


def caffe_param_groups(model: nn.Module, config: SolverConfig) -> list[dict[str, Any]]:
    """Weights and biases of `model` as two param groups with Caffe's lr and decay multipliers (empty ones left out)."""
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (biases if is_bias(name) else weights).append(param)
    groups = [
        {
            "name": "weights",
            "params": weights,
            "lr_mult": config.weight_lr_mult,
            "decay_mult": config.weight_decay_mult,
        },
        {"name": "biases", "params": biases, "lr_mult": config.bias_lr_mult, "decay_mult": config.bias_decay_mult},
    ]
    return [group for group in groups if group["params"]]


def build_solver(model: nn.Module, config: SolverConfig) -> CaffeSGD:
    """A CaffeSGD over `model` with Caffe's bias/weight groups, at the lr of epoch 0."""
    return CaffeSGD(
        caffe_param_groups(model, config),
        lr=lr_at(config, 0),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def lr_at(config: SolverConfig, epoch: int) -> float:
    """Caffe's "multistep" policy by epoch: base_lr * gamma ** (number of milestones <= epoch)."""
    if epoch < 0:
        raise InvalidInput(f"epoch must be >= 0; got {epoch}")
    return config.base_lr * config.gamma ** sum(m <= epoch for m in config.milestones)


def set_epoch_lr(optimizer: torch.optim.Optimizer, config: SolverConfig, epoch: int) -> float:
    """Set every param group's base lr to `lr_at(config, epoch)` (multipliers stay in the groups); returns it."""
    lr = lr_at(config, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
