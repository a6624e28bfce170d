"""Checkpoints: exact round trip and resume, refusal of damaged or mismatched files, and atomic saves."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sppnet.core import build_model
from sppnet.reproduce.checkpoint import STATE_FILE, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from sppnet.reproduce.solver import SolverConfig, build_solver, set_epoch_lr

CONFIG = SolverConfig(milestones=(4,))


def seed_all(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rng: np.random.Generator, steps: range):
    """SGD steps in which all three generators matter: numpy makes the data, Python flips, torch labels and dropout."""
    model.train()
    for step in steps:
        set_epoch_lr(optimizer, CONFIG, step)
        x = torch.from_numpy(rng.standard_normal((2, 3, 64, 64), dtype=np.float32))
        if random.random() < 0.5:
            x = x.flip(3)
        target = torch.randint(0, 10, (2,))
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Weights and momentum buffers by name, cloned."""
    tensors = {f"w/{k}": v.clone() for k, v in model.state_dict().items()}
    for name, p in model.named_parameters():
        tensors[f"v/{name}"] = optimizer.state[p]["momentum_buffer"].clone()
    return tensors


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def trained_checkpoint(directory: Path, seed: int = 0, steps: int = 1) -> tuple[torch.nn.Module, dict]:
    rng = seed_all(seed)
    model = build_model("zf5_cpu", num_classes=10)
    optimizer = build_solver(model, CONFIG)
    train_steps(model, optimizer, rng, range(steps))
    save_checkpoint(directory, model, optimizer, {"step": steps}, capture_rng(rng))
    return model, snapshot(model, optimizer)


def draws(rng: np.random.Generator) -> tuple[list[float], list[float], float]:
    return torch.rand(4).tolist(), rng.random(4).tolist(), random.random()


def test_round_trip_restores_weights_momentum_and_every_generator(tmp_path: Path) -> None:
    rng = seed_all(0)
    model = build_model("zf5_cpu", num_classes=10)
    optimizer = build_solver(model, CONFIG)
    train_steps(model, optimizer, rng, range(2))
    state = {"epoch": 1, "step": 2, "solver": {"base_lr": 0.01, "milestones": [4]}, "metrics": {"loss": [2.3, 2.2]}}
    save_checkpoint(tmp_path, model, optimizer, state, capture_rng(rng))
    saved, next_draws = snapshot(model, optimizer), draws(rng)

    other_rng = seed_all(99)
    other = build_model("zf5_cpu", num_classes=10)
    other_optimizer = build_solver(other, SolverConfig(base_lr=0.5))
    checkpoint = load_checkpoint(tmp_path, other, other_optimizer)
    restore_rng(checkpoint.rng, other_rng)

    assert_equal(snapshot(other, other_optimizer), saved)
    assert draws(other_rng) == next_draws
    assert checkpoint.state == state
    assert checkpoint.network == "zf5_cpu"
    assert [g["lr"] for g in other_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert [g["lr_mult"] for g in other_optimizer.param_groups] == [1.0, 2.0]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    rng = seed_all(0)
    model = build_model("zf5_cpu", num_classes=10)
    optimizer = build_solver(model, CONFIG)
    train_steps(model, optimizer, rng, range(6))
    uninterrupted = snapshot(model, optimizer)

    rng = seed_all(0)
    model = build_model("zf5_cpu", num_classes=10)
    optimizer = build_solver(model, CONFIG)
    train_steps(model, optimizer, rng, range(3))
    save_checkpoint(tmp_path, model, optimizer, {"step": 3}, capture_rng(rng))
    del model, optimizer, rng

    def resume(restore: bool) -> dict[str, torch.Tensor]:
        rng = seed_all(12345)
        model = build_model("zf5_cpu", num_classes=10)
        optimizer = build_solver(model, CONFIG)
        checkpoint = load_checkpoint(tmp_path, model, optimizer)
        if restore:
            restore_rng(checkpoint.rng, rng)
        train_steps(model, optimizer, rng, range(checkpoint.state["step"], 6))
        return snapshot(model, optimizer)

    assert_equal(resume(restore=True), uninterrupted)
    # The generators do matter here: without them the run goes elsewhere.
    assert not torch.equal(resume(restore=False)["w/classifier.fc8.weight"], uninterrupted["w/classifier.fc8.weight"])


def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"no checkpoint at .*{STATE_FILE}: pass a directory written by"):
        load_checkpoint(tmp_path / "nowhere", build_model("zf5_cpu", num_classes=10))


@pytest.mark.parametrize("stem", ["model", "solver"])
def test_truncated_tensor_file_is_refused_by_its_hash(tmp_path: Path, stem: str) -> None:
    trained_checkpoint(tmp_path)
    (path,) = tmp_path.glob(f"{stem}-*.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = build_model("zf5_cpu", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{path.name} is corrupt or truncated: its sha256 .* does not match"):
        load_checkpoint(tmp_path, model, build_solver(model, CONFIG))
    assert_equal(model.state_dict(), before)


def test_checkpoint_of_another_network_is_refused_naming_key_and_shapes(tmp_path: Path) -> None:
    trained_checkpoint(tmp_path)
    model = build_model("convnet5_cpu", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = (
        r"does not fit this model \(it was made for network 'zf5_cpu', this model is 'convnet5_cpu'\): "
        r"features.conv1.weight has shape \(12, 3, 7, 7\) in the checkpoint but \(12, 3, 11, 11\) in the model"
    )
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(tmp_path, model, build_solver(model, CONFIG))
    assert_equal(model.state_dict(), before)


def test_checkpoint_with_other_classes_is_refused_at_fc8(tmp_path: Path) -> None:
    trained_checkpoint(tmp_path)
    with pytest.raises(
        ValueError, match=r"classifier.fc8.weight has shape \(10, 512\) in the checkpoint but \(7, 512\)"
    ):
        load_checkpoint(tmp_path, build_model("zf5_cpu", num_classes=7))


def test_optimizer_with_other_param_groups_is_refused(tmp_path: Path) -> None:
    trained_checkpoint(tmp_path)
    model = build_model("zf5_cpu", num_classes=10)
    ungrouped = type(build_solver(model, CONFIG))(model.parameters())
    with pytest.raises(ValueError, match=r"optimizer parameter 1 is 'features.conv2.weight' in the checkpoint but"):
        load_checkpoint(tmp_path, model, ungrouped)


class Crash(OSError):
    """The failure injected into a save."""


@pytest.mark.parametrize(("call", "nth"), [("replace", 1), ("replace", 2), ("replace", 3), ("fsync", 1)])
def test_a_save_that_dies_leaves_the_previous_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, nth: int
) -> None:
    _, first = trained_checkpoint(tmp_path, seed=0)
    rng = seed_all(1)
    model = build_model("zf5_cpu", num_classes=10)
    optimizer = build_solver(model, CONFIG)
    train_steps(model, optimizer, rng, range(1))

    real, calls = getattr(os, call), []

    def failing(*args: object) -> None:
        calls.append(args)
        if len(calls) == nth:
            raise Crash(f"injected failure of os.{call}")
        real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(os, call, failing)
        with pytest.raises(Crash):
            save_checkpoint(tmp_path, model, optimizer, {"step": 1}, capture_rng(rng))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    fresh = build_model("zf5_cpu", num_classes=10)
    fresh_optimizer = build_solver(fresh, CONFIG)
    load_checkpoint(tmp_path, fresh, fresh_optimizer)
    assert_equal(snapshot(fresh, fresh_optimizer), first)

    # The next good save takes over and removes what the dead one left behind.
    save_checkpoint(tmp_path, model, optimizer, {"step": 1}, capture_rng(rng))
    assert len(list(tmp_path.iterdir())) == 3
    load_checkpoint(tmp_path, fresh, fresh_optimizer)
    assert_equal(snapshot(fresh, fresh_optimizer), snapshot(model, optimizer))


def test_state_that_is_not_json_is_refused_before_writing(tmp_path: Path) -> None:
    model = build_model("zf5_cpu", num_classes=10)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, model, None, {"config": SolverConfig()})
    assert list(tmp_path.iterdir()) == []
