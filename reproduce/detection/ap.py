"""VOC detection average precision, following the VOC 2007 devkit's VOCevaldet.m (PAPER.md section 7 step 9).

A detection is `(image_index, score, box)`: `image_index` indexes the ground truth list, `box` is 0-based
(x1, y1, x2, y2) with the right/bottom pixel included, as everywhere in `sppnet.reproduce.detection`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sppnet.core.errors import InvalidInput
from sppnet.reproduce.detection.boxes import box_iou
from sppnet.reproduce.detection.voc import DetImage

Detection = tuple[int, float, ArrayLike]

# The 11-point thresholds are k/10 computed exactly (the nearest doubles), so a recall of exactly 3/10 meets the
# 0.3 threshold; np.arange(0, 1.1, 0.1) (py-faster-rcnn) gives 0.30000000000000004 there and misses it.
_ELEVEN_POINTS = np.arange(11) / 10.0


@dataclass(frozen=True, eq=False)
class ClassResult:
    """One class's AP, and recall and precision after each detection in score order; `npos` non-difficult gts."""

    ap: float
    recall: np.ndarray
    precision: np.ndarray
    npos: int


def voc_ap(recall: ArrayLike, precision: ArrayLike, use_07_metric: bool = True) -> float:
    """Average precision from a recall/precision curve (detections in score order).

    11-point (VOC 2007): AP = 1/11 * sum over t in {0, 0.1, ..., 1} of max(precision where recall >= t), 0 when no
    recall reaches t. All-point (VOC 2010 on): the area under the monotone envelope p(r) = max(precision at recall
    >= r), summed over the points where recall changes, with the curve padded to recall 0 and 1 at precision 0.
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise InvalidInput(f"voc_ap: {recall.size} recall values but {precision.size} precision values; pass pairs")
    if use_07_metric:
        total = 0.0
        for threshold in _ELEVEN_POINTS:
            reached = recall >= threshold
            total += float(precision[reached].max()) if reached.any() else 0.0
        return total / 11.0
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def evaluate_class(
    detections: Sequence[Detection],
    gts: Sequence[DetImage],
    label: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> ClassResult:
    """AP of one class's detections against the ground truth of class `label`, as VOCevaldet.m computes it.

    Detections are taken by score, highest first (ties in input order). Each is assigned the ground truth box of
    `label` in its image with the largest IoU; with IoU >= `iou_threshold` it is ignored if that box is difficult,
    a true positive if the box is not yet matched, else a false positive (a duplicate); below the threshold it is
    a false positive. Recall = TP / npos, with npos the non-difficult boxes; an AP with npos = 0 is NaN.
    """
    recall, precision, npos = _curve(detections, gts, label, iou_threshold)
    ap = voc_ap(recall, precision, use_07_metric) if npos else math.nan
    return ClassResult(ap=ap, recall=recall, precision=precision, npos=npos)


def evaluate_detections(
    detections_per_class: Sequence[Sequence[Detection]],
    gts: Sequence[DetImage],
    classes: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Per-class AP and mAP, 11-point (VOC 2007, the paper's metric) and all-point, for detections of every class.

    `detections_per_class[i]` holds the detections of label i + 1 (`classes[i]`). Returns {"ap_11point":
    {class: AP}, "ap_all_point": {class: AP}, "npos": {class: n}, "mAP_11point": m, "mAP_all_point": m}; the mAPs
    average the classes with ground truth (a class with npos = 0 has AP NaN), and are NaN if no class has any.
    """
    if len(detections_per_class) != len(classes):
        raise InvalidInput(
            f"evaluate_detections: {len(detections_per_class)} detection lists for {len(classes)} classes; "
            "pass one list per class, list i holding label i + 1"
        )
    results: dict[str, Any] = {"ap_11point": {}, "ap_all_point": {}, "npos": {}}
    for label, (name, detections) in enumerate(zip(classes, detections_per_class, strict=True), start=1):
        recall, precision, npos = _curve(detections, gts, label, iou_threshold)
        results["npos"][name] = npos
        for key, use_07 in (("ap_11point", True), ("ap_all_point", False)):
            results[key][name] = voc_ap(recall, precision, use_07) if npos else math.nan
    for key in ("11point", "all_point"):
        scored = [ap for ap in results[f"ap_{key}"].values() if not math.isnan(ap)]
        results[f"mAP_{key}"] = float(np.mean(scored)) if scored else math.nan
    return results


def format_ap_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of `evaluate_detections` results: AP per class and the mAP, in percent."""
    names = list(results["ap_11point"])
    width = max([len("class"), len("mAP"), *(len(name) for name in names)])
    lines = [f"{'class':<{width}}  {'npos':>6}  {'AP 11-pt':>8}  {'AP all-pt':>9}"]
    for name in names:
        lines.append(
            f"{name:<{width}}  {results['npos'][name]:>6d}  {_percent(results['ap_11point'][name]):>8}  "
            f"{_percent(results['ap_all_point'][name]):>9}"
        )
    total = sum(results["npos"].values())
    lines.append(
        f"{'mAP':<{width}}  {total:>6d}  {_percent(results['mAP_11point']):>8}  {_percent(results['mAP_all_point']):>9}"
    )
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100.0 * value:.1f}"


def _curve(
    detections: Sequence[Detection], gts: Sequence[DetImage], label: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """(recall, precision, npos) after each detection in score order, matched as VOCevaldet.m does."""
    n = len(detections)
    image_index = np.fromiter((d[0] for d in detections), dtype=np.int64, count=n)
    scores = np.fromiter((d[1] for d in detections), dtype=np.float64, count=n)
    boxes = np.asarray([d[2] for d in detections], dtype=np.float64).reshape(n, -1) if n else np.zeros((0, 4))
    if boxes.shape[1] != 4:
        raise InvalidInput(f"evaluate_class: detection boxes must be (x1, y1, x2, y2); got {boxes.shape[1]} values")
    bad = ~(np.isfinite(scores) & np.isfinite(boxes).all(axis=1)) | (image_index < 0) | (image_index >= len(gts))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            f"evaluate_class: detection {i} {detections[i]!r} needs an image index in 0..{len(gts) - 1} and a finite "
            "score and box; image indices index the ground truth list"
        )
    # Ground truth of this class per image, difficult ones included: a match to one is ignored, not scored.
    own = [gt.labels == label for gt in gts]
    npos = int(sum(np.count_nonzero(mask & ~gt.difficult) for mask, gt in zip(own, gts, strict=True)))

    order = np.argsort(-scores, kind="stable")
    image_index, boxes = image_index[order], boxes[order]
    # The best gt of a detection does not depend on earlier matches, so IoUs are computed per image up front.
    best_gt = np.full(n, -1, dtype=np.int64)
    best_iou = np.full(n, -np.inf)
    for image in np.unique(image_index):
        mine = np.flatnonzero(image_index == image)
        gt_boxes = gts[image].boxes[own[image]]
        if gt_boxes.shape[0]:
            iou = box_iou(boxes[mine], gt_boxes)
            best_gt[mine] = iou.argmax(axis=1)  # the first of equal IoUs, as the devkit's strict ">" keeps
            # The devkit only considers overlapping boxes: a disjoint detection never matches, whatever the threshold.
            best = iou.max(axis=1)
            best_iou[mine] = np.where(best > 0, best, -np.inf)

    tp = np.zeros(n)
    fp = np.zeros(n)
    matched = [np.zeros(int(mask.sum()), dtype=bool) for mask in own]
    difficult = [gt.difficult[mask] for gt, mask in zip(gts, own, strict=True)]
    for d in range(n):
        image, j = int(image_index[d]), int(best_gt[d])
        if best_iou[d] >= iou_threshold:
            if difficult[image][j]:
                continue
            if not matched[image][j]:
                matched[image][j] = True
                tp[d] = 1.0
            else:
                fp[d] = 1.0
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos if npos else np.zeros(n)
    # The devkit's TP / (TP + FP) is 0/0 for leading ignored detections; 0 there leaves every AP unchanged.
    precision = np.divide(tp, tp + fp, out=np.zeros(n), where=(tp + fp) > 0)
    return recall, precision, npos
