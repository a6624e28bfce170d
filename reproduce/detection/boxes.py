"""Box arithmetic for detection: IoU, greedy NMS, clipping, validity and R-CNN regression targets.

Boxes are float64 (K, 4) arrays (x1, y1, x2, y2) of 0-based pixel indices with the right/bottom pixel INCLUDED
(VOC style, as in `sppnet.reproduce.windows`): a box's width is x2 - x1 + 1 and its height y2 - y1 + 1.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from sppnet.core.errors import InvalidInput


def as_boxes(boxes: ArrayLike, what: str = "boxes") -> np.ndarray:
    """`boxes` as a float64 (K, 4) array; an empty input gives (0, 4). Raises ValueError for any other shape."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise InvalidInput(f"{what} must have shape (K, 4) as (x1, y1, x2, y2); got shape {array.shape}")
    return array


def box_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """(N, M) intersection over union of boxes `a` (N, 4) and `b` (M, 4), widths counted as x2 - x1 + 1.

    IoU = |a ∩ b| / (|a| + |b| - |a ∩ b|) with |box| = (x2 - x1 + 1)(y2 - y1 + 1) and the intersection's sides
    min(x2) - max(x1) + 1 and min(y2) - max(y1) + 1, as in the VOC devkit; disjoint boxes have IoU 0.
    """
    a, b = as_boxes(a, "box_iou a"), as_boxes(b, "box_iou b")
    area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
    area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1.0
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1.0
    overlapping = (iw > 0) & (ih > 0)
    inter = np.where(overlapping, iw * ih, 0.0)
    # A positive intersection implies both boxes have positive sides, so the union is positive where it is used.
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlapping)


def nms(boxes: ArrayLike, scores: ArrayLike, threshold: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression: int64 indices of the kept boxes, highest score first.

    Repeatedly keep the best remaining box and drop every remaining box whose IoU with it exceeds `threshold`
    (R-CNN's nms.m: IoU <= threshold survives). Equal scores keep their input order (a stable sort).
    """
    boxes = as_boxes(boxes, "nms boxes")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != boxes.shape[0]:
        raise InvalidInput(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores; pass one score per box")
    if not np.isfinite(scores).all():
        raise InvalidInput("nms: scores must be finite; drop or replace NaN/inf scores before NMS")
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while order.size:
        best = int(order[0])
        kept.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best : best + 1], boxes[rest])[0] <= threshold]
    return np.asarray(kept, dtype=np.int64)


def clip_boxes(boxes: ArrayLike, height: int, width: int) -> np.ndarray:
    """A copy of `boxes` with x clipped to [0, width - 1] and y to [0, height - 1]."""
    if height < 1 or width < 1:
        raise InvalidInput(f"clip_boxes needs an image of at least 1x1 pixels; got height {height}, width {width}")
    clipped = as_boxes(boxes, "clip_boxes boxes").copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, width - 1.0)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, height - 1.0)
    return clipped


def valid_boxes(boxes: ArrayLike, min_size: float = 1) -> np.ndarray:
    """Boolean (K,) mask: finite, x2 >= x1, y2 >= y1, and width and height (x2 - x1 + 1, ...) >= `min_size`."""
    boxes = as_boxes(boxes, "valid_boxes boxes")
    width = boxes[:, 2] - boxes[:, 0] + 1.0
    height = boxes[:, 3] - boxes[:, 1] + 1.0
    return (
        np.isfinite(boxes).all(axis=1)
        & (boxes[:, 2] >= boxes[:, 0])
        & (boxes[:, 3] >= boxes[:, 1])
        & (width >= min_size)
        & (height >= min_size)
    )


def _centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(width, height, centre x, centre y) with width = x2 - x1 + 1 and centre x = x1 + width / 2."""
    width = boxes[:, 2] - boxes[:, 0] + 1.0
    height = boxes[:, 3] - boxes[:, 1] + 1.0
    return width, height, boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height


def bbox_targets(proposals: ArrayLike, gt: ArrayLike) -> np.ndarray:
    """(K, 4) R-CNN regression targets (dx, dy, log dw, log dh) from each proposal P to its ground truth G.

    dx = (Gx - Px) / Pw, dy = (Gy - Py) / Ph, dw = log(Gw / Pw), dh = log(Gh / Ph), with widths x2 - x1 + 1 and
    centres x1 + w / 2 (R-CNN appendix C; PAPER.md section 7 step 8). Both boxes need positive widths and heights.
    """
    proposals, gt = as_boxes(proposals, "bbox_targets proposals"), as_boxes(gt, "bbox_targets gt")
    if proposals.shape != gt.shape:
        raise InvalidInput(
            f"bbox_targets: {proposals.shape[0]} proposals but {gt.shape[0]} ground truth boxes; "
            "pass one ground truth box per proposal"
        )
    pw, ph, px, py = _centres(proposals)
    gw, gh, gx, gy = _centres(gt)
    if not (np.isfinite(proposals).all() and np.isfinite(gt).all() and (pw > 0).all() and (ph > 0).all()):
        raise InvalidInput("bbox_targets: proposals must be finite with x2 - x1 + 1 > 0 and y2 - y1 + 1 > 0")
    if not ((gw > 0).all() and (gh > 0).all()):
        raise InvalidInput("bbox_targets: ground truth boxes must have x2 - x1 + 1 > 0 and y2 - y1 + 1 > 0")
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)


def apply_deltas(proposals: ArrayLike, deltas: ArrayLike) -> np.ndarray:
    """(K, 4) boxes from proposals and (dx, dy, log dw, log dh): the exact inverse of `bbox_targets`.

    Gx = Px + dx Pw, Gw = Pw exp(dw), then x1 = Gx - Gw / 2 and x2 = Gx + Gw / 2 - 1 (likewise for y), so
    `apply_deltas(P, bbox_targets(P, G)) == G` up to rounding. Results are not clipped to the image.
    """
    proposals, deltas = as_boxes(proposals, "apply_deltas proposals"), as_boxes(deltas, "apply_deltas deltas")
    if proposals.shape != deltas.shape:
        raise InvalidInput(
            f"apply_deltas: {proposals.shape[0]} proposals but {deltas.shape[0]} deltas; pass one (dx, dy, dw, dh) "
            "per proposal"
        )
    pw, ph, px, py = _centres(proposals)
    gx = px + deltas[:, 0] * pw
    gy = py + deltas[:, 1] * ph
    gw = pw * np.exp(deltas[:, 2])
    gh = ph * np.exp(deltas[:, 3])
    return np.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw - 1.0, gy + 0.5 * gh - 1.0], axis=1)
