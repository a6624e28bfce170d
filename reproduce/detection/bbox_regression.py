"""Bounding-box regression on pool5 SPP features (PAPER.md section 7 step 8, as R-CNN's rcnn_train_bbox_regressor).

One ridge regressor per class (lambda 4000) from a proposal's pool5 vector, with a ones column appended, to the
R-CNN targets (dx, dy, log dw, log dh) towards its ground truth box, for proposals with IoU > 0.5. Targets are
standardised with their per-class mean and std before the fit and un-standardised before `apply_deltas`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from sppnet.core.errors import InvalidInput
from sppnet.reproduce.detection.boxes import apply_deltas, as_boxes, bbox_targets, box_iou

_IOU_CHUNK = 1024


@dataclass(frozen=True)
class BBoxRegressionConfig:
    """The paper's settings: ridge lambda 4000 on proposals with IoU > 0.5 to their ground truth."""

    ridge_lambda: float = 4000.0
    min_iou: float = 0.5

    def __post_init__(self) -> None:
        if self.ridge_lambda <= 0:
            raise InvalidInput(f"BBoxRegressionConfig.ridge_lambda must be > 0; got {self.ridge_lambda}")
        if not 0 <= self.min_iou < 1:
            raise InvalidInput(f"BBoxRegressionConfig.min_iou must be in [0, 1); got {self.min_iou}")


def match_ground_truth(
    proposals: ArrayLike, gt_boxes: ArrayLike, gt_labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matched gt box, its label, IoU) per proposal: the ground truth box it overlaps most (label 0 if none)."""
    proposals, gt_boxes = as_boxes(proposals, "proposals"), as_boxes(gt_boxes, "gt_boxes")
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    if gt_labels.shape[0] != gt_boxes.shape[0]:
        raise InvalidInput(f"match_ground_truth: {gt_boxes.shape[0]} gt boxes but {gt_labels.shape[0]} labels")
    if gt_boxes.shape[0] == 0:
        return proposals.copy(), np.zeros(proposals.shape[0], dtype=np.int64), np.zeros(proposals.shape[0])
    iou = box_iou(proposals, gt_boxes)
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(proposals.shape[0]), best]
    return gt_boxes[best], np.where(best_iou > 0, gt_labels[best], 0), best_iou


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i] for every row, through `box_iou` on chunks."""
    out = np.zeros(a.shape[0])
    for start in range(0, a.shape[0], _IOU_CHUNK):
        stop = start + _IOU_CHUNK
        out[start:stop] = np.diagonal(box_iou(a[start:stop], b[start:stop]))
    return out


def ridge(x: np.ndarray, y: np.ndarray, ridge_lambda: float) -> np.ndarray:
    """argmin_w ||x w - y||^2 + lambda ||w||^2 in closed form with numpy: (x^T x + lambda I) w = x^T y, or the
    equal dual form w = x^T (x x^T + lambda I)^-1 y when there are fewer rows than columns (12,800-d pool5)."""
    n, d = x.shape
    if n >= d:
        return np.linalg.solve(x.T @ x + ridge_lambda * np.eye(d), x.T @ y)
    return x.T @ np.linalg.solve(x @ x.T + ridge_lambda * np.eye(n), y)


def _with_ones(pool5: np.ndarray) -> np.ndarray:
    # R-CNN appends a constant 1 feature for the bias, regularised with the weights.
    x = np.asarray(pool5, dtype=np.float64)
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


class BBoxRegressor:
    """One ridge regressor per class 1..C; a class without training samples leaves its boxes unchanged."""

    def __init__(self, num_classes: int, config: BBoxRegressionConfig | None = None) -> None:
        if num_classes < 1:
            raise InvalidInput(f"BBoxRegressor: num_classes must be >= 1; got {num_classes}")
        self.num_classes = num_classes
        self.config = config or BBoxRegressionConfig()
        self.weights: dict[int, np.ndarray] = {}
        self.target_mean: dict[int, np.ndarray] = {}
        self.target_std: dict[int, np.ndarray] = {}
        self.num_samples = np.zeros(num_classes + 1, dtype=np.int64)

    def _check(self, pool5: np.ndarray, proposals: np.ndarray, labels: np.ndarray, what: str) -> None:
        if pool5.ndim != 2 or pool5.shape[0] != proposals.shape[0] or labels.shape != (proposals.shape[0],):
            raise InvalidInput(
                f"BBoxRegressor.{what}: need pool5 (K, D), proposals (K, 4) and labels (K,); got shapes "
                f"{pool5.shape}, {proposals.shape}, {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > self.num_classes):
            raise InvalidInput(f"BBoxRegressor.{what}: labels must be in 0..{self.num_classes} (0 = not regressed)")

    def fit(
        self, pool5: np.ndarray, proposals: ArrayLike, gt_boxes_matched: ArrayLike, labels: ArrayLike
    ) -> BBoxRegressor:
        """Fit class c on the rows labelled c whose proposal has IoU > min_iou with its matched gt box."""
        pool5, proposals = np.asarray(pool5), as_boxes(proposals, "proposals")
        gt = as_boxes(gt_boxes_matched, "gt_boxes_matched")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._check(pool5, proposals, labels, "fit")
        if gt.shape != proposals.shape:
            raise InvalidInput(f"BBoxRegressor.fit: {proposals.shape[0]} proposals but {gt.shape[0]} matched gt boxes")
        used = (labels > 0) & (paired_iou(proposals, gt) > self.config.min_iou)
        self.weights, self.target_mean, self.target_std = {}, {}, {}
        self.num_samples[:] = 0
        for c in range(1, self.num_classes + 1):
            rows = np.flatnonzero(used & (labels == c))
            self.num_samples[c] = rows.size
            if not rows.size:
                continue
            targets = bbox_targets(proposals[rows], gt[rows])
            mean, std = targets.mean(axis=0), targets.std(axis=0)
            std = np.where(std > 0, std, 1.0)
            self.weights[c] = ridge(_with_ones(pool5[rows]), (targets - mean) / std, self.config.ridge_lambda)
            self.target_mean[c], self.target_std[c] = mean, std
        return self

    def predict_deltas(self, pool5: np.ndarray, labels: ArrayLike) -> np.ndarray:
        """(K, 4) un-standardised (dx, dy, log dw, log dh) per row; zero for label 0 and unfitted classes."""
        pool5 = np.asarray(pool5)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        deltas = np.zeros((labels.shape[0], 4))
        for c, weights in self.weights.items():
            rows = np.flatnonzero(labels == c)
            if rows.size:
                deltas[rows] = (_with_ones(pool5[rows]) @ weights) * self.target_std[c] + self.target_mean[c]
        return deltas

    def predict(self, pool5: np.ndarray, proposals: ArrayLike, labels: ArrayLike) -> np.ndarray:
        """(K, 4) regressed boxes: each proposal moved by its class's regressor (unchanged where there is none)."""
        pool5, proposals = np.asarray(pool5), as_boxes(proposals, "proposals")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._check(pool5, proposals, labels, "predict")
        boxes = proposals.copy()
        moved = np.flatnonzero(np.isin(labels, list(self.weights)))
        boxes[moved] = apply_deltas(proposals[moved], self.predict_deltas(pool5[moved], labels[moved]))
        return boxes
