"""CaffeSGD against Caffe's update written out in float64 Python (sgd_solver.cpp), the lr schedule and param groups."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sppnet.core import build_model
from sppnet.reproduce.solver import (
    CaffeSGD,
    SolverConfig,
    build_solver,
    caffe_param_groups,
    lr_at,
    set_epoch_lr,
)

WEIGHT = [[0.5, -0.25, 1.0], [0.75, 0.125, -0.3]]
BIAS = [0.2, -0.4]
# Gradients fed by hand for four steps: (weight gradient, bias gradient).
GRADS = [
    ([[0.3, -0.1, 0.2], [0.05, 0.4, -0.6]], [0.1, -0.2]),
    ([[-0.2, 0.15, 0.1], [0.3, -0.25, 0.05]], [-0.3, 0.25]),
    ([[0.1, 0.1, -0.4], [-0.15, 0.2, 0.35]], [0.2, 0.05]),
    ([[0.05, -0.3, 0.25], [0.1, 0.05, -0.1]], [-0.1, 0.4]),
]
# lr 0.1 for steps 0 and 1, 0.1 * 0.1 from step 2 on (Caffe's base_lr * gamma^k); a weight decay that matters.
LRS = [0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1]
CONFIG = SolverConfig(base_lr=0.1, momentum=0.9, weight_decay=0.05, gamma=0.1, milestones=(2,))


def caffe_reference(
    values: list[float], grads: list[list[float]], lrs: list[float], momentum: float, decay: float
) -> list[list[float]]:
    """Caffe's Regularize + ComputeUpdateValue + Update per element; the values after each step."""
    w, v, after = list(values), [0.0] * len(values), []
    for g, lr in zip(grads, lrs, strict=True):
        for i in range(len(w)):
            v[i] = momentum * v[i] + lr * (g[i] + decay * w[i])
            w[i] = w[i] - v[i]
        after.append(list(w))
    return after


def flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


def tiny_linear() -> nn.Linear:
    layer = nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(WEIGHT, dtype=torch.float64))
        layer.bias.copy_(torch.tensor(BIAS, dtype=torch.float64))
    return layer


def feed(layer: nn.Linear, step: int) -> None:
    weight_grad, bias_grad = GRADS[step]
    layer.weight.grad = torch.tensor(weight_grad, dtype=torch.float64)
    layer.bias.grad = torch.tensor(bias_grad, dtype=torch.float64)


def expected_after_each_step() -> list[tuple[list[float], list[float]]]:
    weights = caffe_reference(flat(WEIGHT), [flat(g) for g, _ in GRADS], LRS, momentum=0.9, decay=0.05)
    # Caffe's bias defaults in this project: lr_mult 2, decay_mult 0.
    biases = caffe_reference(BIAS, [b for _, b in GRADS], [2 * lr for lr in LRS], momentum=0.9, decay=0.0)
    return list(zip(weights, biases, strict=True))


def test_caffe_sgd_matches_caffe_update_through_an_lr_drop() -> None:
    layer = tiny_linear()
    optimizer = build_solver(layer, CONFIG)
    for step, (weight, bias) in enumerate(expected_after_each_step()):
        assert set_epoch_lr(optimizer, CONFIG, step) == LRS[step]
        feed(layer, step)
        optimizer.step()
        assert layer.weight.flatten().tolist() == pytest.approx(weight, abs=1e-12, rel=0), step
        assert layer.bias.tolist() == pytest.approx(bias, abs=1e-12, rel=0), step


def test_torch_sgd_agrees_until_the_lr_drop_then_differs() -> None:
    """The reference above can tell the two updates apart: torch.optim.SGD scales its whole history at a drop."""
    layer = tiny_linear()
    groups = [
        {"params": [layer.weight], "weight_decay": 0.05, "mult": 1.0},
        {"params": [layer.bias], "weight_decay": 0.0, "mult": 2.0},
    ]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    for step, (weight, bias) in enumerate(expected_after_each_step()):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(CONFIG, step) * group["mult"]
        feed(layer, step)
        optimizer.step()
        got = layer.weight.flatten().tolist() + layer.bias.tolist()
        gap = max(abs(a - b) for a, b in zip(got, weight + bias, strict=True))
        if step < 2:
            assert gap < 1e-12, step
        else:
            assert gap > 1e-3, step


def test_state_dict_round_trip_resumes_the_same_updates() -> None:
    layer = tiny_linear()
    optimizer = build_solver(layer, CONFIG)
    for step in range(2):
        set_epoch_lr(optimizer, CONFIG, step)
        feed(layer, step)
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    assert [g["lr_mult"] for g in saved["param_groups"]] == [1.0, 2.0]
    assert [g["decay_mult"] for g in saved["param_groups"]] == [1.0, 0.0]

    resumed_layer = copy.deepcopy(layer)
    resumed = build_solver(resumed_layer, CONFIG)
    resumed.load_state_dict(saved)
    for step in range(2, 4):
        for model, opt in ((layer, optimizer), (resumed_layer, resumed)):
            set_epoch_lr(opt, CONFIG, step)
            feed(model, step)
            opt.step()
    assert torch.equal(layer.weight, resumed_layer.weight)
    assert torch.equal(layer.bias, resumed_layer.bias)


def test_parameters_without_gradients_are_left_alone() -> None:
    layer = tiny_linear()
    optimizer = CaffeSGD(layer.parameters(), lr=0.1)
    layer.weight.grad = torch.ones_like(layer.weight)
    optimizer.step()
    assert layer.bias.tolist() == BIAS
    assert layer.bias not in optimizer.state


def test_defaults_are_the_papers() -> None:
    config = SolverConfig()
    assert (config.base_lr, config.momentum, config.weight_decay, config.gamma) == (0.01, 0.9, 5e-4, 0.1)
    assert (config.weight_lr_mult, config.weight_decay_mult) == (1.0, 1.0)
    assert (config.bias_lr_mult, config.bias_decay_mult) == (2.0, 0.0)
    assert config.milestones == ()


def test_lr_at_divides_by_ten_at_each_milestone() -> None:
    config = SolverConfig(base_lr=0.01, milestones=(30, 50))
    expected = {0: 0.01, 29: 0.01, 30: 0.001, 49: 0.001, 50: 0.0001, 69: 0.0001}
    for epoch, lr in expected.items():
        assert lr_at(config, epoch) == pytest.approx(lr, rel=1e-15), epoch
    assert lr_at(SolverConfig(), 1000) == 0.01
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        lr_at(config, -1)


@pytest.mark.parametrize("milestones", [(50, 30), (30, 30), (-1,)])
def test_bad_milestones_are_refused(milestones: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="milestones"):
        SolverConfig(milestones=milestones)


def test_set_epoch_lr_keeps_the_multipliers() -> None:
    config = SolverConfig(milestones=(1,))
    optimizer = build_solver(build_model("zf5_cpu", num_classes=10), config)
    assert set_epoch_lr(optimizer, config, 1) == pytest.approx(0.001)
    assert [g["lr"] for g in optimizer.param_groups] == [lr_at(config, 1)] * 2
    assert [g["lr_mult"] for g in optimizer.param_groups] == [1.0, 2.0]


def test_caffe_param_groups_put_every_bias_and_only_biases_in_the_bias_group() -> None:
    model = build_model("zf5_cpu")
    groups = {group["name"]: group for group in caffe_param_groups(model, SolverConfig())}
    named = dict(model.named_parameters())
    biases = {name for name in named if name.endswith(".bias")}
    assert len(biases) == 8  # conv1..conv5, fc6..fc8
    in_bias_group = {name for name, p in named.items() if any(p is q for q in groups["biases"]["params"])}
    in_weight_group = {name for name, p in named.items() if any(p is q for q in groups["weights"]["params"])}
    assert in_bias_group == biases
    assert in_weight_group == set(named) - biases
    assert (groups["biases"]["lr_mult"], groups["biases"]["decay_mult"]) == (2.0, 0.0)
    assert (groups["weights"]["lr_mult"], groups["weights"]["decay_mult"]) == (1.0, 1.0)
