"""Fine-tuning the fc layers on precomputed pool5 window features (PAPER.md section 7 step 6).

SPP-net freezes the conv layers for detection, so each window's SPP vector is computed once and fc6/fc7/fc8 train
on those vectors alone: a 21-way (classes + background) softmax on batches of 128 windows, 25% of them foreground.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

from sppnet.core.errors import InvalidInput
from sppnet.core.models import SPPNet
from sppnet.reproduce.detection.boxes import as_boxes, box_iou
from sppnet.reproduce.solver import SolverConfig, build_solver, lr_at, set_epoch_lr

UNUSED = -1
BACKGROUND = 0


def with_ground_truth(proposals: ArrayLike, gt_boxes: ArrayLike) -> np.ndarray:
    """The training windows of an image: its ground truth boxes first, then its proposals (R-CNN's roidb order)."""
    return np.concatenate([as_boxes(gt_boxes, "gt_boxes"), as_boxes(proposals, "proposals")])


def label_windows(
    proposals: ArrayLike,
    gt_boxes: ArrayLike,
    gt_labels: ArrayLike,
    fg_iou: float = 0.5,
    bg_lo: float = 0.1,
    bg_hi: float = 0.5,
) -> np.ndarray:
    """int64 labels of `with_ground_truth(proposals, gt_boxes)`: the class of the best-overlapping ground truth
    where its IoU >= fg_iou, 0 (background) where the best IoU is in [bg_lo, bg_hi), -1 (unused) elsewhere.

    Ground truth boxes come first and are foreground windows of their own class, as in R-CNN.
    """
    if not 0 <= bg_lo <= bg_hi <= fg_iou <= 1:
        raise InvalidInput(f"label_windows needs 0 <= bg_lo <= bg_hi <= fg_iou <= 1; got {bg_lo}, {bg_hi}, {fg_iou}")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    if gt_labels.shape[0] != gt_boxes.shape[0]:
        raise InvalidInput(f"label_windows: {gt_boxes.shape[0]} gt boxes but {gt_labels.shape[0]} gt labels")
    if (gt_labels < 1).any():
        raise InvalidInput(f"label_windows: gt labels are classes 1..C (0 is background); got {gt_labels.tolist()}")
    windows = with_ground_truth(proposals, gt_boxes)
    labels = np.full(windows.shape[0], UNUSED, dtype=np.int64)
    if gt_boxes.shape[0] == 0:
        return labels
    iou = box_iou(windows, gt_boxes)
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(windows.shape[0]), best]
    labels[(best_iou >= bg_lo) & (best_iou < bg_hi)] = BACKGROUND
    foreground = best_iou >= fg_iou
    labels[foreground] = gt_labels[best[foreground]]
    labels[: gt_boxes.shape[0]] = gt_labels
    return labels


def _paper_solver() -> SolverConfig:
    # Paper section 4.1 (detection): 250k mini-batches at lr 1e-4, then 50k at 1e-5; momentum 0.9, decay 5e-4.
    # `milestones` count iterations here, not epochs.
    return SolverConfig(base_lr=1e-4, momentum=0.9, weight_decay=5e-4, gamma=0.1, milestones=(250_000,))


@dataclass(frozen=True)
class FinetuneConfig:
    """fc fine-tuning; defaults are the paper's (300k iterations); `for_data` scales the schedule to a data set.

    The solver's `milestones` are iterations. The val split is evaluated every `eval_interval` iterations, at
    iteration 0 (Caffe's test_initialization) and at the end; the best snapshot by `select_by` is kept.
    """

    iterations: int = 300_000
    batch_size: int = 128
    fg_fraction: float = 0.25
    solver: SolverConfig = field(default_factory=_paper_solver)
    init_std: float = 0.01
    eval_interval: int = 10_000
    eval_batch_size: int = 1024
    select_by: Literal["accuracy", "loss"] = "accuracy"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.eval_interval < 1 or self.eval_batch_size < 1:
            raise InvalidInput(
                "FinetuneConfig: iterations, batch_size, eval_interval and eval_batch_size must be >= 1; got "
                f"{self.iterations}, {self.batch_size}, {self.eval_interval}, {self.eval_batch_size}"
            )
        if not 0 < self.fg_fraction <= 1:
            raise InvalidInput(f"FinetuneConfig.fg_fraction must be in (0, 1]; got {self.fg_fraction}")
        if self.select_by not in ("accuracy", "loss"):
            raise InvalidInput(f"FinetuneConfig.select_by must be 'accuracy' or 'loss'; got {self.select_by!r}")

    @property
    def foreground_per_batch(self) -> int:
        return round(self.batch_size * self.fg_fraction)

    @classmethod
    def for_data(cls, num_foreground: int, epochs: float, **overrides: Any) -> FinetuneConfig:
        """The paper's schedule sized to `epochs` passes over `num_foreground` windows: lr / 10 for the last
        sixth (the paper's 50k of 300k), ten evaluations. `overrides` replace any other field (not `solver`'s lr
        milestones, which are set here)."""
        config = cls(**overrides)
        iterations = max(1, math.ceil(epochs * num_foreground / max(1, config.foreground_per_batch)))
        step = math.ceil(iterations * 5 / 6)
        solver = replace(config.solver, milestones=(step,) if step < iterations else ())
        interval = overrides.get("eval_interval", max(1, iterations // 10))
        return replace(config, iterations=iterations, solver=solver, eval_interval=interval)


class _Cycle:
    """An endless stream of `indices`, reshuffled on every pass."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        self.indices, self.rng = indices, rng
        self.pending = np.zeros(0, dtype=np.int64)

    def take(self, n: int) -> np.ndarray:
        while self.pending.shape[0] < n:
            self.pending = np.concatenate([self.pending, self.rng.permutation(self.indices)])
        taken, self.pending = self.pending[:n], self.pending[n:]
        return taken


class BalancedSampler:
    """Batches of window indices with a fixed foreground share (R-CNN's window data layer: 32 of 128).

    Foreground (label > 0) and background (label 0) windows are each drawn as reshuffled passes, so every window
    of a kind is seen once before any is seen twice; unused windows (label -1) are never drawn.
    """

    def __init__(self, labels: ArrayLike, batch_size: int = 128, fg_fraction: float = 0.25, seed: int = 0) -> None:
        labels = np.asarray(labels).reshape(-1)
        self.num_foreground = round(batch_size * fg_fraction)
        self.num_background = batch_size - self.num_foreground
        foreground, background = np.flatnonzero(labels > 0), np.flatnonzero(labels == BACKGROUND)
        if (self.num_foreground and not foreground.size) or (self.num_background and not background.size):
            raise InvalidInput(
                f"BalancedSampler needs foreground and background windows for {self.num_foreground} + "
                f"{self.num_background} per batch; got {foreground.size} foreground and {background.size} "
                "background: check the window labels (label_windows) and the IoU thresholds"
            )
        rng = np.random.default_rng(seed)
        self._foreground, self._background = _Cycle(foreground, rng), _Cycle(background, rng)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return np.concatenate([self._foreground.take(self.num_foreground), self._background.take(self.num_background)])


@dataclass(frozen=True)
class FinetuneRecord:
    """One evaluation: the train loss averaged since the previous record and the val split's window metrics."""

    iteration: int
    lr: float
    train_loss: float
    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class FinetuneHistory:
    """Every evaluation, and the iteration of the snapshot kept (the best on the val split)."""

    records: tuple[FinetuneRecord, ...]
    best_iteration: int

    @property
    def best(self) -> FinetuneRecord:
        return next(r for r in self.records if r.iteration == self.best_iteration)


def _check_split(name: str, pool5: np.ndarray, labels: np.ndarray, dim: int, num_classes: int) -> None:
    if pool5.ndim != 2 or pool5.shape[1] != dim:
        raise InvalidInput(f"finetune_fc: {name} pool5 must be (K, {dim}) to match fc6; got shape {pool5.shape}")
    if labels.shape != (pool5.shape[0],):
        raise InvalidInput(f"finetune_fc: {name} has {pool5.shape[0]} windows but labels of shape {labels.shape}")
    if labels.size and (labels.min() < UNUSED or labels.max() > num_classes):
        found = f"{labels.min()}..{labels.max()}"
        raise InvalidInput(f"finetune_fc: {name} labels must be in -1..{num_classes}; got {found}")


@torch.no_grad()
def evaluate_windows(
    classifier: nn.Module, pool5: np.ndarray, labels: np.ndarray, batch_size: int = 1024
) -> tuple[float, float]:
    """(mean softmax loss, accuracy) of `classifier` (in eval mode) over the windows with label >= 0."""
    used = np.flatnonzero(np.asarray(labels) >= 0)
    if not used.size:
        raise InvalidInput("evaluate_windows: no window has a label >= 0")
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    loss, correct = 0.0, 0
    for start in range(0, used.size, batch_size):
        chunk = used[start : start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(pool5[chunk], dtype=np.float32)).to(device)
        y = torch.from_numpy(np.asarray(labels)[chunk].astype(np.int64)).to(device)
        scores = classifier(x)
        loss += float(F.cross_entropy(scores, y, reduction="sum"))
        correct += int((scores.argmax(dim=1) == y).sum())
    classifier.train(was_training)
    return loss / used.size, correct / used.size


def _record(
    classifier: nn.Module,
    iteration: int,
    losses: list[float],
    pool5_val: np.ndarray,
    labels_val: np.ndarray,
    config: FinetuneConfig,
) -> FinetuneRecord:
    """The record at `iteration`: val metrics now, the train loss averaged over `losses`, the lr last used."""
    val_loss, val_accuracy = evaluate_windows(classifier, pool5_val, labels_val, config.eval_batch_size)
    train_loss = float(np.mean(losses)) if losses else math.nan
    return FinetuneRecord(iteration, lr_at(config.solver, max(iteration - 1, 0)), train_loss, val_loss, val_accuracy)


def _better(record: FinetuneRecord, best: FinetuneRecord, select_by: str) -> bool:
    if select_by == "loss":
        return record.val_loss < best.val_loss
    return (record.val_accuracy, -record.val_loss) > (best.val_accuracy, -best.val_loss)


def finetune_fc(
    model: SPPNet,
    pool5_train: np.ndarray,
    labels_train: ArrayLike,
    pool5_val: np.ndarray,
    labels_val: ArrayLike,
    num_classes: int,
    config: FinetuneConfig | None = None,
) -> tuple[SPPNet, FinetuneHistory]:
    """Replace fc8 by a (num_classes + 1)-way layer and train fc6/fc7/fc8 on pool5 windows with Caffe SGD.

    Labels are -1 (unused), 0 (background) or 1..num_classes. The snapshot kept is the best on the val split, a
    split of the training data: never the test set (the release picked snapshots on VOC07 test). `model` is
    changed in place and returned; the same seed gives the same weights.
    """
    config = config or FinetuneConfig()
    if num_classes < 1:
        raise InvalidInput(f"finetune_fc: num_classes must be >= 1; got {num_classes}")
    classifier = model.classifier
    labels_train = np.asarray(labels_train, dtype=np.int64).reshape(-1)
    labels_val = np.asarray(labels_val, dtype=np.int64).reshape(-1)
    dim = classifier.fc6.in_features
    _check_split("train", pool5_train, labels_train, dim, num_classes)
    _check_split("val", pool5_val, labels_val, dim, num_classes)
    device = next(classifier.parameters()).device
    sampler = BalancedSampler(labels_train, config.batch_size, config.fg_fraction, config.seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model.reset_classifier(num_classes + 1, config.init_std)
        optimizer = build_solver(classifier, config.solver)
        best = _record(classifier, 0, [], pool5_val, labels_val, config)
        records, best_state = [best], copy.deepcopy(classifier.state_dict())
        losses: list[float] = []
        classifier.train()
        for iteration in range(1, config.iterations + 1):
            set_epoch_lr(optimizer, config.solver, iteration - 1)
            batch = next(sampler)
            x = torch.from_numpy(np.ascontiguousarray(pool5_train[batch], dtype=np.float32)).to(device)
            y = torch.from_numpy(labels_train[batch]).to(device)
            loss = F.cross_entropy(classifier(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if iteration % config.eval_interval == 0 or iteration == config.iterations:
                records.append(_record(classifier, iteration, losses, pool5_val, labels_val, config))
                losses = []
                if _better(records[-1], best, config.select_by):
                    best, best_state = records[-1], copy.deepcopy(classifier.state_dict())
    classifier.load_state_dict(best_state)
    classifier.eval()
    return model, FinetuneHistory(tuple(records), best.iteration)
