"""The detection pipeline of PAPER.md section 7, end to end: proposals -> window features (SPP-net at 1 or 5
scales, or R-CNN mode) -> fc fine-tuning (model selection on val) -> SVMs (pool5, fc7, fine-tuned fc7) -> bbox
regression -> per-class NMS -> VOC07 AP on the test split.

Window features are computed once per split and mode; fc7 comes from pool5 through the (pre-trained or
fine-tuned) fc layers, since SPP-net fine-tunes only those.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppnet.core.errors import InvalidInput
from sppnet.core.images import load_bgr
from sppnet.core.models import SPPNet
from sppnet.core.preprocess import Preprocess
from sppnet.reproduce.detection.ap import Detection, evaluate_detections
from sppnet.reproduce.detection.bbox_regression import BBoxRegressionConfig, BBoxRegressor, match_ground_truth
from sppnet.reproduce.detection.boxes import nms
from sppnet.reproduce.detection.features import PAPER_SCALES, FeatureConfig, fc_features, rcnn_features, window_features
from sppnet.reproduce.detection.finetune import FinetuneConfig, finetune_fc, label_windows, with_ground_truth
from sppnet.reproduce.detection.proposals import ProposalCache, ProposalSettings
from sppnet.reproduce.detection.svm import ImageWindows, SVMBank, SVMConfig, normalise_features, train_svms
from sppnet.reproduce.detection.voc import DetImage

MODES = ("spp-1", "spp-5", "rcnn")
COLUMNS = ("pool5", "fc7", "ftfc7", "ftfc7 bb")
MODE_NAMES = {"spp-1": "SPP (1 scale)", "spp-5": "SPP (5 scales)", "rcnn": "R-CNN mode"}


@dataclass(frozen=True)
class DetectConfig:
    """Paper defaults (PAPER.md 7); `for_input_size` scales the pixel geometry to a network's input size."""

    scales: tuple[int, ...] = PAPER_SCALES
    single_scale: int = 688
    target: int = 224
    mapping: str = "paper"
    scale_rule: str = "paper"
    proposals: ProposalSettings = field(default_factory=ProposalSettings)
    finetune_epochs: float = 10.0
    finetune_lr: float = 1e-4  # the paper's; then / 10 for the last sixth of the iterations
    svm: SVMConfig = field(default_factory=SVMConfig)
    bbox: BBoxRegressionConfig = field(default_factory=BBoxRegressionConfig)
    nms_threshold: float = 0.3
    max_per_class: int = 100  # detections kept per class and image before NMS (highest scores)
    bootstrap: int = 200  # resamples of the test images for the mAP spread
    seed: int = 0

    @classmethod
    def for_input_size(cls, input_size: int, **changes: Any) -> DetectConfig:
        """The paper's scales and 224-pixel target times input_size / 224 (the CPU presets: half)."""
        f = input_size / 224
        base = cls(scales=tuple(round(s * f) for s in PAPER_SCALES), single_scale=round(688 * f), target=round(224 * f))
        return replace(base, **changes)

    def feature_config(self, mode: str) -> FeatureConfig:
        scales = (self.single_scale,) if mode == "spp-1" else self.scales
        return FeatureConfig(scales=scales, mapping=self.mapping, scale_rule=self.scale_rule, target=self.target)


@dataclass
class SplitFeatures:
    """Windows and their pool5 features for every image of a split (training splits: ground truth first)."""

    images: list[DetImage]
    windows: list[np.ndarray]
    pool5: list[np.ndarray]
    num_gt: list[int]
    seconds: dict[str, float]


def load_proposals(images: Sequence[DetImage], cache: ProposalCache, settings: ProposalSettings) -> list[np.ndarray]:
    """Selective-search boxes for every image, through the cache."""
    return [cache.get(image.path, settings=settings) for image in images]


def extract(
    model: SPPNet,
    pre: Preprocess,
    images: Sequence[DetImage],
    proposals: Sequence[np.ndarray],
    mode: str,
    config: DetectConfig,
    *,
    with_gt: bool,
    log: Callable[[str], None] | None = None,
) -> SplitFeatures:
    """pool5 features of every window (`with_gt`: ground-truth boxes first, as training expects)."""
    if mode not in MODES:
        raise InvalidInput(f"unknown detection mode {mode!r}: choose one of {', '.join(MODES)}")
    out = SplitFeatures([], [], [], [], {"prep": 0.0, "conv": 0.0, "pool": 0.0, "fc": 0.0})
    for number, (image, boxes) in enumerate(zip(images, proposals, strict=True)):
        gt = image.boxes if with_gt else np.zeros((0, 4))
        windows = with_ground_truth(boxes, gt)
        pixels = load_bgr(image.path)
        if mode == "rcnn":
            feats, timing = rcnn_features(model, pixels, windows, pre, layers=("pool5",))
        else:
            feats, timing = window_features(model, pixels, windows, pre, config.feature_config(mode), ("pool5",))
        out.images.append(image)
        out.windows.append(windows)
        out.pool5.append(feats["pool5"].astype(np.float16))  # halves memory; fc inputs are rounded the same way
        out.num_gt.append(len(gt))
        for key, value in timing.items():
            out.seconds[key] = out.seconds.get(key, 0.0) + value
        if log and (number + 1) % 50 == 0:
            log(f"  {mode}: features of {number + 1}/{len(images)} images")
    return out


def _fc7(model: SPPNet, pool5: Sequence[np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [fc_features(model, torch.from_numpy(p.astype(np.float32)), "fc7").numpy() for p in pool5]


def _svm_windows(split: SplitFeatures, features: Sequence[np.ndarray], num_classes: int) -> list[ImageWindows]:
    rows = []
    for image, feats, windows, k in zip(split.images, features, split.windows, split.num_gt, strict=True):
        rows.append(ImageWindows.from_boxes(feats, windows[k:], image.boxes, image.labels, num_classes))
    return rows


def _labels(split: SplitFeatures) -> np.ndarray:
    return np.concatenate(
        [
            label_windows(w[k:], im.boxes, im.labels)
            for im, w, k in zip(split.images, split.windows, split.num_gt, strict=True)
        ]
    )


@dataclass
class Detector:
    """Everything a column of the table needs at test time."""

    column: str
    svms: SVMBank
    fc_model: SPPNet | None  # None: SVMs on pool5
    regressor: BBoxRegressor | None = None
    regressor_scale: float = 1.0  # pool5 scaled to mean L2 norm 20 for the regression, as R-CNN does


def train_detectors(
    model: SPPNet,
    train: SplitFeatures,
    val: SplitFeatures,
    num_classes: int,
    config: DetectConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[list[Detector], dict[str, Any]]:
    """The four columns: SVMs on pool5, on fc7, on fine-tuned fc7, and the last with bbox regression."""
    info: dict[str, Any] = {}
    detectors = []
    pool5_rows = [p.astype(np.float32) for p in train.pool5]
    detectors.append(
        Detector("pool5", train_svms(_svm_windows(train, pool5_rows, num_classes), num_classes, config.svm), None)
    )
    detectors.append(
        Detector(
            "fc7",
            train_svms(_svm_windows(train, _fc7(model, train.pool5), num_classes), num_classes, config.svm),
            model,
        )
    )
    labels_train, labels_val = _labels(train), _labels(val)
    foreground = int((labels_train > 0).sum())
    solver = replace(FinetuneConfig().solver, base_lr=config.finetune_lr)
    ft_config = FinetuneConfig.for_data(
        foreground, config.finetune_epochs, seed=config.seed, eval_batch_size=4096, solver=solver
    )
    tuned = copy.deepcopy(model)
    began = time.perf_counter()
    tuned, history = finetune_fc(
        tuned,
        np.concatenate(train.pool5).astype(np.float32),
        labels_train,
        np.concatenate(val.pool5).astype(np.float32),
        labels_val,
        num_classes,
        ft_config,
    )
    info["finetune"] = {
        "iterations": ft_config.iterations,
        "seconds": time.perf_counter() - began,
        "best_iteration": history.best_iteration,
        "best_val_accuracy": history.best.val_accuracy,
        "foreground_windows": foreground,
    }
    if log:
        log(f"  fine-tuned fc6-fc8: {ft_config.iterations} iterations, val accuracy {history.best.val_accuracy:.3f}")
    ft_svms = train_svms(_svm_windows(train, _fc7(tuned, train.pool5), num_classes), num_classes, config.svm)
    detectors.append(Detector("ftfc7", ft_svms, tuned))
    regressor = BBoxRegressor(num_classes, config.bbox)
    proposals = np.concatenate([w[k:] for w, k in zip(train.windows, train.num_gt, strict=True)])
    pool5 = np.concatenate([p[k:] for p, k in zip(train.pool5, train.num_gt, strict=True)]).astype(np.float32)
    matched = [
        match_ground_truth(w[k:], im.boxes, im.labels)
        for im, w, k in zip(train.images, train.windows, train.num_gt, strict=True)
    ]
    pool5, scale = normalise_features(pool5)
    regressor.fit(pool5, proposals, np.concatenate([m[0] for m in matched]), np.concatenate([m[1] for m in matched]))
    detectors.append(Detector("ftfc7 bb", ft_svms, tuned, regressor, scale))
    info["bbox_samples_per_class"] = regressor.num_samples[1:].tolist()
    return detectors, info


def detect(detector: Detector, split: SplitFeatures, num_classes: int, config: DetectConfig) -> list[list[Detection]]:
    """Per class, the detections (image index, score, box) on every image of a split, after NMS."""
    per_class: list[list[Detection]] = [[] for _ in range(num_classes)]
    fc7 = (
        [p.astype(np.float32) for p in split.pool5]
        if detector.fc_model is None
        else _fc7(detector.fc_model, split.pool5)
    )
    for index, (windows, feats, pool5) in enumerate(zip(split.windows, fc7, split.pool5, strict=True)):
        if len(windows) == 0:
            continue
        scores = detector.svms.score(feats)
        for c in range(1, num_classes + 1):
            if not detector.svms.trained[c - 1]:
                continue
            s = scores[:, c - 1]
            top = np.argsort(-s, kind="stable")[: config.max_per_class]
            boxes = windows[top]
            if detector.regressor is not None:
                x = pool5[top].astype(np.float32) * np.float32(detector.regressor_scale)
                boxes = detector.regressor.predict(x, boxes, np.full(len(top), c))
                image = split.images[index]
                boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, image.width - 1)
                boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, image.height - 1)
            keep = nms(boxes, s[top], config.nms_threshold)
            per_class[c - 1] += [(index, float(s[top][k]), boxes[k]) for k in keep]
    return per_class


def bootstrap_map(
    per_class: Sequence[Sequence[Detection]], gts: Sequence[DetImage], classes: Sequence[str], rounds: int, seed: int
) -> float:
    """Standard deviation of the 11-point mAP over test sets resampled with replacement (image level)."""
    rng = np.random.default_rng(seed)
    values = []
    by_image: list[list[list[Detection]]] = [[[] for _ in gts] for _ in classes]
    for c, detections in enumerate(per_class):
        for d in detections:
            by_image[c][d[0]].append(d)
    for _ in range(rounds):
        pick = rng.integers(0, len(gts), len(gts))
        sample_gts = [gts[i] for i in pick]
        sample = [[(j, s, b) for j, i in enumerate(pick) for (_, s, b) in by_image[c][i]] for c in range(len(classes))]
        values.append(evaluate_detections(sample, sample_gts, classes)["mAP_11point"])
    values = [v for v in values if not math.isnan(v)]
    return float(np.std(values)) if values else math.nan


def evaluate_detectors(
    detectors: Sequence[Detector], test: SplitFeatures, classes: Sequence[str], config: DetectConfig,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """mAP (11-point and all-point), per-class AP and the bootstrap spread of every detector on a test split."""
    columns = {}
    for detector in detectors:
        per_class = detect(detector, test, len(classes), config)
        ap = evaluate_detections(per_class, test.images, classes)
        spread = bootstrap_map(per_class, test.images, classes, config.bootstrap, config.seed)
        columns[detector.column] = {
            "mAP_11point": ap["mAP_11point"],
            "mAP_all_point": ap["mAP_all_point"],
            "bootstrap_std": spread,
            "ap_11point": ap["ap_11point"],
        }
        if log:
            log(f"  {detector.column}: mAP {100 * ap['mAP_11point']:.1f} (+- {100 * spread:.1f})")
    return columns


def train_mode(
    model: SPPNet, pre: Preprocess, splits: dict[str, list[DetImage]], proposals: dict[str, list[np.ndarray]],
    mode: str, num_classes: int, config: DetectConfig, log: Callable[[str], None] | None = None,
) -> tuple[list[Detector], dict[str, Any]]:  # fmt: skip
    """Features of the train and val splits in `mode`, then the four detectors."""
    train = extract(model, pre, splits["train"], proposals["train"], mode, config, with_gt=True, log=log)
    val = extract(model, pre, splits["val"], proposals["val"], mode, config, with_gt=True, log=log)
    return train_detectors(model, train, val, num_classes, config, log)


def test_mode(
    detectors: Sequence[Detector], model: SPPNet, pre: Preprocess, images: list[DetImage],
    proposals: list[np.ndarray], mode: str, classes: Sequence[str], config: DetectConfig,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Features of the test split in `mode` and every detector's AP on it, with the feature time per image."""
    began = time.perf_counter()
    test = extract(model, pre, images, proposals, mode, config, with_gt=False, log=log)
    seconds = time.perf_counter() - began
    return {
        "columns": evaluate_detectors(detectors, test, classes, config, log),
        "test_images": len(test.images),
        "test_windows": sum(len(w) for w in test.windows),
        "test_feature_seconds": seconds,
        "test_timing": test.seconds,
    }


def run_detection(
    model: SPPNet,
    pre: Preprocess,
    splits: dict[str, list[DetImage]],
    classes: Sequence[str],
    cache: ProposalCache,
    config: DetectConfig,
    modes: Sequence[str] = MODES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train on `splits["train"]` (model selection on "val"), test on "test", for every mode; the table's rows."""
    model = model.eval()
    proposals = {name: load_proposals(images, cache, config.proposals) for name, images in splits.items()}
    results: dict[str, Any] = {"classes": list(classes), "modes": {}}
    for mode in modes:
        log(f"detection {MODE_NAMES[mode]}")
        detectors, info = train_mode(model, pre, splits, proposals, mode, len(classes), config, log)
        row = test_mode(detectors, model, pre, splits["test"], proposals["test"], mode, classes, config, log)
        results["modes"][mode] = row | info
    return results


def format_table(results: dict[str, Any]) -> str:
    """The paper's detection table layout: rows = methods, columns = features; mAP (11-point) +- bootstrap std."""
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for mode, row in results["modes"].items():
        cells = []
        for column in COLUMNS:
            c = row["columns"].get(column)
            cells.append("-" if c is None else f"{100 * c['mAP_11point']:.1f} +- {100 * c['bootstrap_std']:.1f}")
        lines.append(f"| {MODE_NAMES[mode]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_split(
    root: str | Path, split: str, classes: Sequence[str], log: Callable[[str], None] = print
) -> list[DetImage]:
    """The images of a VOC-layout split; skipped images are reported, one line each; images without objects kept."""
    from sppnet.reproduce.detection.voc import load_voc_detection

    images, problems = load_voc_detection(root, split, classes)
    for problem in problems:
        log(f"skipped: {problem}")
    return images
