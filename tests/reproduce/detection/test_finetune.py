"""fc fine-tuning on pool5 windows: window labels, balanced batches, the paper's schedule, snapshot selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sppnet.core import build_model
from sppnet.core.models import SPPNet
from sppnet.reproduce.detection.finetune import (
    BalancedSampler,
    FinetuneConfig,
    evaluate_windows,
    finetune_fc,
    label_windows,
    with_ground_truth,
)
from sppnet.reproduce.solver import SolverConfig, lr_at

GT = np.array([[0, 0, 9, 9], [20, 20, 29, 29]], dtype=np.float64)  # two 10x10 boxes (area 100)
GT_LABELS = np.array([3, 5])
# Each proposal with its IoU against the box it overlaps (widths x2 - x1 + 1) and the label that IoU gives.
PROPOSALS = [
    ([0, 0, 9, 9], 1.0, 3),  # a copy of the first gt box
    ([0, 0, 9, 4], 50 / 100, 3),  # IoU exactly 0.5: foreground
    ([0, 0, 9, 3], 40 / 100, 0),  # background
    ([0, 0, 9, 0], 10 / 100, 0),  # IoU exactly 0.1: background
    ([0, 0, 8, 0], 9 / 100, -1),  # just below 0.1: unused
    ([100, 100, 110, 110], 0.0, -1),  # touches nothing: unused
    ([20, 20, 29, 24], 50 / 100, 5),  # half of the second gt box
    ([0, 0, 29, 29], 100 / 900, 0),  # contains both gt boxes: background
]
CLASSES = 3
DIM = 1600  # zf5_cpu's SPP vector: 32 channels x 50 bins


def test_label_windows_thresholds_on_hand_made_boxes():
    proposals = np.array([box for box, _, _ in PROPOSALS], dtype=np.float64)
    labels = label_windows(proposals, GT, GT_LABELS)
    # The gt boxes come first (R-CNN's roidb order) and are foreground windows of their own class.
    assert labels.tolist() == [3, 5] + [label for _, _, label in PROPOSALS]
    np.testing.assert_array_equal(with_ground_truth(proposals, GT), np.concatenate([GT, proposals]))


def test_label_windows_takes_the_best_overlapping_gt_and_custom_thresholds():
    gt = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], dtype=np.float64)
    # [4, 0, 13, 9] overlaps the first box in 6 x 10 = 60 px (IoU 60 / 140), the second in 9 x 10 (IoU 90 / 110).
    labels = label_windows(np.array([[4, 0, 13, 9]], dtype=np.float64), gt, [1, 2])
    assert labels.tolist() == [1, 2, 2]
    # With fg at 0.9 the same window (IoU 0.818) is background of [0.3, 0.9).
    strict = label_windows(np.array([[4, 0, 13, 9]], dtype=np.float64), gt, [1, 2], fg_iou=0.9, bg_lo=0.3, bg_hi=0.9)
    assert strict.tolist() == [1, 2, 0]


def test_label_windows_without_ground_truth_leaves_every_window_unused():
    labels = label_windows(np.array([[0, 0, 9, 9], [3, 3, 8, 8]], dtype=np.float64), np.zeros((0, 4)), [])
    assert labels.tolist() == [-1, -1]
    with pytest.raises(ValueError, match=r"1\.\.C"):
        label_windows(np.zeros((0, 4)), GT, [0, 1])


def test_balanced_sampler_puts_32_foreground_windows_in_each_batch_of_128():
    labels = np.array([1, 2, 3] * 4 + [0] * 300 + [-1] * 50)  # 12 foreground, 300 background, 50 unused
    sampler = BalancedSampler(labels, batch_size=128, fg_fraction=0.25, seed=0)
    batches = [next(sampler) for _ in range(6)]
    for batch in batches:
        assert batch.shape == (128,)
        assert (labels[batch] > 0).sum() == 32
        assert (labels[batch] == 0).sum() == 96
    # Reshuffled passes: the 6 x 32 = 192 foreground draws are 16 full passes over the 12 windows.
    foreground = np.concatenate([b[labels[b] > 0] for b in batches])
    np.testing.assert_array_equal(np.bincount(foreground, minlength=12)[:12], [16] * 12)
    # The first 3 x 96 background draws come from one pass: no window twice.
    background = np.concatenate([b[labels[b] == 0] for b in batches[:3]])
    assert len(set(background.tolist())) == 288


def test_balanced_sampler_is_seeded_and_refuses_missing_foreground():
    labels = np.array([1] * 20 + [0] * 200)
    first = [next(BalancedSampler(labels, seed=4)) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(next(BalancedSampler(labels, seed=4)), next(BalancedSampler(labels, seed=5)))
    with pytest.raises(ValueError, match="foreground"):
        BalancedSampler(np.array([0] * 200 + [-1] * 5))


def test_paper_defaults_and_the_schedule_sized_to_the_data():
    config = FinetuneConfig()
    assert (config.batch_size, config.fg_fraction, config.foreground_per_batch) == (128, 0.25, 32)
    assert (config.solver.base_lr, config.solver.momentum, config.solver.weight_decay) == (1e-4, 0.9, 5e-4)
    # 250k mini-batches at 1e-4, then 50k at 1e-5 (paper section 4.1).
    assert config.iterations == 300_000
    assert lr_at(config.solver, 249_999) == 1e-4
    assert lr_at(config.solver, 250_000) == pytest.approx(1e-5)
    sized = FinetuneConfig.for_data(num_foreground=320, epochs=10)
    # 10 passes over 320 foreground windows at 32 a batch; the last sixth at lr / 10; ten evaluations.
    assert sized.iterations == 100
    assert sized.solver.milestones == (84,)
    assert sized.eval_interval == 10


def windows(n: int, seed: int, label_of_pattern: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Separable pool5-like windows: ReLU noise plus a block of 100 active dims that names the label (0 = bg)."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, CLASSES + 1, n)
    x = np.maximum(rng.normal(size=(n, DIM)), 0).astype(np.float32)
    for p in range(CLASSES + 1):
        x[pattern == p, p * 100 : (p + 1) * 100] += 3.0
    labels = pattern if label_of_pattern is None else label_of_pattern[pattern]
    return x, labels


def small_config(**overrides: Any) -> FinetuneConfig:
    settings: dict[str, Any] = {
        "iterations": 40,
        "eval_interval": 10,
        "solver": SolverConfig(base_lr=1e-3, milestones=(30,)),
        "seed": 1,
    }
    settings.update(overrides)
    return FinetuneConfig(**settings)


def pretrained() -> SPPNet:
    """zf5_cpu with a fixed fc6/fc7 (the conv trunk is not used: the windows are pool5 vectors)."""
    torch.manual_seed(0)
    return build_model("zf5_cpu", num_classes=10)


@pytest.fixture(scope="module")
def separable() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train, y_train = windows(600, 0)
    x_val, y_val = windows(300, 1)
    return x_train, y_train, x_val, y_val


def test_finetuning_a_separable_set_reaches_high_val_accuracy_and_keeps_the_best_snapshot(separable):
    x_train, y_train, x_val, y_val = separable
    model, history = finetune_fc(pretrained(), x_train, y_train, x_val, y_val, CLASSES, small_config())
    fc8 = model.classifier.fc8
    assert (fc8.out_features, fc8.in_features) == (CLASSES + 1, 512)
    assert model.config.num_classes == CLASSES + 1
    assert [r.iteration for r in history.records] == [0, 10, 20, 30, 40]
    assert [r.lr for r in history.records[1:]] == [1e-3, 1e-3, 1e-3, pytest.approx(1e-4)]
    assert history.best.val_accuracy >= 0.95
    assert history.best.val_accuracy == max(r.val_accuracy for r in history.records)
    # The model handed back is the kept snapshot: its val metrics are the best record's.
    loss, accuracy = evaluate_windows(model.classifier, x_val, y_val)
    assert accuracy == history.best.val_accuracy
    assert loss == pytest.approx(history.best.val_loss, rel=1e-5)


def test_the_snapshot_kept_is_the_best_on_val_not_the_last(separable):
    x_train, y_train, _, _ = separable
    # Val windows whose labels rotate the classes: training makes val worse, so an early snapshot must win.
    x_val, y_val = windows(200, 2, label_of_pattern=np.array([0, 2, 3, 1]))
    fg = y_val > 0
    model, history = finetune_fc(
        pretrained(),
        x_train,
        y_train,
        x_val[fg],
        y_val[fg],
        CLASSES,
        small_config(iterations=20),
    )
    last = history.records[-1]
    assert history.best_iteration < last.iteration
    assert (history.best.val_accuracy, -history.best.val_loss) > (last.val_accuracy, -last.val_loss)
    loss, accuracy = evaluate_windows(model.classifier, x_val[fg], y_val[fg])
    assert accuracy == history.best.val_accuracy
    assert loss == pytest.approx(history.best.val_loss, rel=1e-5)


def test_finetuning_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(separable):
    x_train, y_train, x_val, y_val = separable
    config = small_config(iterations=10, eval_interval=5)
    states = []
    for _ in range(2):
        model = pretrained()
        global_rng = torch.get_rng_state()
        model, _ = finetune_fc(model, x_train, y_train, x_val, y_val, CLASSES, config)
        # fc8's init and dropout draw from a forked generator seeded by config.seed.
        assert torch.equal(torch.get_rng_state(), global_rng)
        states.append(model.classifier.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(value, states[1][name], rtol=0, atol=0)
    other, _ = finetune_fc(pretrained(), x_train, y_train, x_val, y_val, CLASSES, small_config(iterations=10, seed=2))
    assert not torch.equal(other.classifier.fc8.weight, states[0]["fc8.weight"])


def test_finetune_checks_feature_width_and_labels(separable):
    x_train, y_train, x_val, y_val = separable
    model = pretrained()
    with pytest.raises(ValueError, match="fc6"):
        finetune_fc(model, x_train[:, :100], y_train, x_val, y_val, CLASSES, small_config())
    with pytest.raises(ValueError, match=r"-1\.\.2"):
        finetune_fc(model, x_train, y_train, x_val, y_val, 2, small_config())
