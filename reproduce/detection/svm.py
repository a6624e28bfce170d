"""One linear SVM per class on fc7 window features, with one pass of hard-negative mining (PAPER.md section 7
step 7, as R-CNN's rcnn_train.m).

liblinear's L2-regularised L1-hinge SVM (solver 3, through scikit-learn's LinearSVC) with C 1e-3, positive weight 2
and bias multiplier 10 on features scaled to mean L2 norm 20. Positives are the ground truth boxes of the class,
negatives the windows with IoU < 0.3 with every ground truth box of the class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.svm import LinearSVC

from sppnet.core.errors import InvalidInput
from sppnet.reproduce.detection.boxes import as_boxes, box_iou
from sppnet.reproduce.detection.finetune import with_ground_truth

FEATURE_NORM = 20.0


def normalise_features(features: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, float]:
    """(features * k, k) with k = 20 / (mean L2 norm of the rows) unless `scale` is given (reuse the training k)."""
    if scale is None:
        mean_norm = float(np.linalg.norm(np.asarray(features, dtype=np.float64), axis=1).mean()) if len(features) else 0
        if mean_norm <= 0:
            raise InvalidInput("normalise_features needs at least one window with a non-zero feature vector")
        scale = FEATURE_NORM / mean_norm
    dtype = features.dtype if np.issubdtype(features.dtype, np.floating) else np.float64
    return features * np.asarray(scale, dtype=dtype), float(scale)


@dataclass(frozen=True)
class ImageWindows:
    """One training image's windows for the SVMs: fc7 features, the class of each ground truth window (0 for a
    proposal) and each window's IoU with the image's ground truth of each class (0 where the class is absent)."""

    features: np.ndarray
    gt_classes: np.ndarray
    overlaps: np.ndarray

    def __post_init__(self) -> None:
        k = self.features.shape[0]
        if self.features.ndim != 2 or self.gt_classes.shape != (k,) or self.overlaps.ndim != 2:
            raise InvalidInput(
                f"ImageWindows needs features (K, D), gt_classes (K,) and overlaps (K, C); got shapes "
                f"{self.features.shape}, {self.gt_classes.shape}, {self.overlaps.shape}"
            )
        if self.overlaps.shape[0] != k:
            raise InvalidInput(f"ImageWindows: {k} feature rows but {self.overlaps.shape[0]} overlap rows")

    @classmethod
    def from_boxes(
        cls,
        features: np.ndarray,
        proposals: ArrayLike,
        gt_boxes: ArrayLike,
        gt_labels: ArrayLike,
        num_classes: int,
    ) -> ImageWindows:
        """From the features of `with_ground_truth(proposals, gt_boxes)` (ground truth first) and the boxes."""
        gt_boxes = as_boxes(gt_boxes, "gt_boxes")
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        if gt_labels.shape[0] != gt_boxes.shape[0] or (gt_labels < 1).any() or (gt_labels > num_classes).any():
            raise InvalidInput(
                f"ImageWindows.from_boxes: need one label in 1..{num_classes} per gt box; got {gt_labels.tolist()} "
                f"for {gt_boxes.shape[0]} boxes"
            )
        windows = with_ground_truth(proposals, gt_boxes)
        if features.shape[0] != windows.shape[0]:
            raise InvalidInput(
                f"ImageWindows.from_boxes: {features.shape[0]} feature rows for {windows.shape[0]} windows "
                f"({gt_boxes.shape[0]} gt + proposals); compute features on with_ground_truth(proposals, gt_boxes)"
            )
        iou = box_iou(windows, gt_boxes)
        overlaps = np.zeros((windows.shape[0], num_classes), dtype=np.float64)
        for c in np.unique(gt_labels):
            overlaps[:, c - 1] = iou[:, gt_labels == c].max(axis=1)
        gt_classes = np.concatenate([gt_labels, np.zeros(windows.shape[0] - gt_labels.shape[0], dtype=np.int64)])
        return cls(features, gt_classes, overlaps)


@dataclass(frozen=True)
class SVMConfig:
    """The paper's SVM settings; the first round trains on a random subset of `initial_negatives` negatives."""

    C: float = 1e-3
    positive_weight: float = 2.0
    bias_multiplier: float = 10.0
    negative_iou: float = 0.3
    hard_margin: float = -1.0
    initial_negatives: int = 5000
    feature_norm: float = FEATURE_NORM
    tol: float = 1e-4
    max_iter: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.C <= 0 or self.positive_weight <= 0 or self.bias_multiplier <= 0 or self.feature_norm <= 0:
            raise InvalidInput("SVMConfig: C, positive_weight, bias_multiplier and feature_norm must be > 0")
        if self.initial_negatives < 1:
            raise InvalidInput(f"SVMConfig.initial_negatives must be >= 1; got {self.initial_negatives}")


@dataclass(frozen=True)
class ClassStats:
    """Mining bookkeeping of one class; windows are (image index, window index) rows."""

    positives: int
    negatives_seen: int
    initial: np.ndarray
    added: np.ndarray

    @property
    def cache_size(self) -> int:
        return len(self.initial) + len(self.added)


@dataclass(frozen=True)
class SVMBank:
    """The per-class SVMs: `score` scales raw fc7 features by the training `scale` and returns (K, C) scores.

    A class with no positive in training is untrained (`trained` False) and scores -inf: skip it at test time.
    """

    weights: np.ndarray
    bias: np.ndarray
    scale: float
    trained: np.ndarray
    stats: tuple[ClassStats, ...]

    def score(self, features: np.ndarray) -> np.ndarray:
        scaled, _ = normalise_features(np.asarray(features), self.scale)
        return scaled.astype(np.float64) @ self.weights + self.bias


def _fit(positives: np.ndarray, negatives: np.ndarray, config: SVMConfig) -> tuple[np.ndarray, float]:
    """(w, b) of liblinear's L1-hinge SVM on scaled features (R-CNN: -s 3 -w1 2 -c 1e-3 -B 10)."""
    if not len(negatives):
        raise InvalidInput("train_svms: a class has positives but no negatives (IoU < negative_iou) to train against")
    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), -np.ones(len(negatives))])
    svm = LinearSVC(
        C=config.C,
        loss="hinge",
        dual=True,
        class_weight={1: config.positive_weight, -1: 1.0},
        intercept_scaling=config.bias_multiplier,
        tol=config.tol,
        max_iter=config.max_iter,
        random_state=config.seed,
    )
    svm.fit(x, y)
    return svm.coef_[0].astype(np.float64), float(svm.intercept_[0])


class _Subset:
    """A uniform random subset of at most `size` items, built image by image: keep the smallest random keys."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.keys = np.zeros(0)
        self.ids = np.zeros((0, 2), dtype=np.int64)
        self.features: np.ndarray | None = None

    def offer(self, keys: np.ndarray, ids: np.ndarray, features: np.ndarray) -> None:
        keys = np.concatenate([self.keys, keys])
        ids = np.concatenate([self.ids, ids])
        features = features if self.features is None else np.concatenate([self.features, features])
        if len(keys) > self.size:
            keep = np.sort(np.argpartition(keys, self.size - 1)[: self.size])
            keys, ids, features = keys[keep], ids[keep], features[keep]
        self.keys, self.ids, self.features = keys, ids, features


def _negatives(image: ImageWindows, c: int, config: SVMConfig) -> np.ndarray:
    return np.flatnonzero(image.overlaps[:, c - 1] < config.negative_iou)


def train_svms(
    images: Sequence[ImageWindows], num_classes: int, config: SVMConfig | None = None, scale: float | None = None
) -> SVMBank:
    """Train one SVM per class with one pass of hard-negative mining; reads `images` twice (it may load lazily).

    Round 1 trains on the positives and a random subset of the negatives; every negative is then scored, those
    scoring above `hard_margin` (-1: inside the margin) and not cached yet join the cache, and the SVM is retrained
    on positives + cache. `scale` defaults to the k giving the training windows a mean L2 norm of 20.
    """
    config = config or SVMConfig()
    if num_classes < 1:
        raise InvalidInput(f"train_svms: num_classes must be >= 1; got {num_classes}")
    classes = range(1, num_classes + 1)
    positives, subsets, mean_norm = _collect(images, num_classes, config)
    k = np.float32(config.feature_norm / mean_norm if scale is None else scale)
    trained = np.array([len(positives[c]) > 0 for c in classes])
    weights = np.zeros((positives[1].shape[1], num_classes))
    bias = np.full(num_classes, -np.inf)
    cache = {c: [subsets[c].features * k] for c in classes if trained[c - 1]}
    for c in cache:
        weights[:, c - 1], bias[c - 1] = _fit(positives[c] * k, cache[c][0], config)

    initial = {c: subsets[c].ids if c in cache else np.zeros((0, 2), dtype=np.int64) for c in classes}
    cached = {c: set(map(tuple, initial[c].tolist())) for c in classes}
    seen = dict.fromkeys(classes, 0)
    added: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    for i, image in enumerate(images):
        features = np.asarray(image.features, dtype=np.float32) * k
        scores = features.astype(np.float64) @ weights + bias
        for c in classes:
            negatives = _negatives(image, c, config)
            seen[c] += len(negatives)
            hard = [int(w) for w in negatives[scores[negatives, c - 1] > config.hard_margin]]
            hard = [w for w in hard if (i, w) not in cached[c]] if c in cache else []
            if hard:
                added[c].append(np.stack([np.full(len(hard), i), hard], axis=1))
                cache[c].append(features[hard])
    for c in cache:
        if len(cache[c]) > 1:
            weights[:, c - 1], bias[c - 1] = _fit(positives[c] * k, np.concatenate(cache[c]), config)

    stats = tuple(
        ClassStats(
            positives=len(positives[c]),
            negatives_seen=seen[c],
            initial=initial[c],
            added=np.concatenate(added[c]) if added[c] else np.zeros((0, 2), dtype=np.int64),
        )
        for c in classes
    )
    return SVMBank(weights, bias, float(k), trained, stats)


def _collect(
    images: Sequence[ImageWindows], num_classes: int, config: SVMConfig
) -> tuple[dict[int, np.ndarray], dict[int, _Subset], float]:
    """First read: each class's positives and random negative subset (unscaled), and the windows' mean L2 norm."""
    classes = range(1, num_classes + 1)
    positives: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    subsets = {c: _Subset(config.initial_negatives) for c in classes}
    norm_sum, norm_count = 0.0, 0
    for i, image in enumerate(images):
        if image.overlaps.shape[1] != num_classes:
            raise InvalidInput(
                f"train_svms: image {i} has overlaps for {image.overlaps.shape[1]} classes, not {num_classes}"
            )
        features = np.asarray(image.features, dtype=np.float32)
        norm_sum += float(np.linalg.norm(features.astype(np.float64), axis=1).sum())
        norm_count += len(features)
        for c in classes:
            positives[c].append(features[image.gt_classes == c])
            negatives = _negatives(image, c, config)
            keys = np.random.default_rng([config.seed, c, i]).random(len(negatives))
            subsets[c].offer(keys, np.stack([np.full(len(negatives), i), negatives], axis=1), features[negatives])
    if norm_count == 0 or norm_sum <= 0:
        raise InvalidInput("train_svms needs at least one window with a non-zero feature vector")
    return {c: np.concatenate(positives[c]) for c in classes}, subsets, norm_sum / norm_count
