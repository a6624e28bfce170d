"""The detection commands as library calls: train a detector from a run, test it on a split, detect in one image.

`sppnet detect train|test|image` are thin wrappers of these; each returns what the command prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sppnet.core.errors import InvalidInput
from sppnet.core.images import load_bgr
from sppnet.core.runs import load_model, load_preprocess
from sppnet.reproduce.datasets import VOC_CLASSES
from sppnet.reproduce.detection.detector_io import config_from_json, load_detectors, save_detectors
from sppnet.reproduce.detection.pipeline import (
    DetectConfig,
    SplitFeatures,
    detect,
    extract,
    load_proposals,
    read_split,
    test_mode,
    train_mode,
)
from sppnet.reproduce.detection.proposals import ProposalCache
from sppnet.reproduce.detection.voc import DetImage


def dataset_classes(data: Path) -> list[str]:
    """The classes of a detection set: its manifest's (the built-in set) or VOC's 20."""
    manifest = data / "manifest.json"
    if manifest.is_file():
        return list(json.loads(manifest.read_text())["classes"])
    return list(VOC_CLASSES)


def train_detector(
    data: Path,
    run_dir: Path,
    out: Path,
    mode: str,
    config: DetectConfig,
    log: Callable[[str], None] = print,
) -> Path:
    """Fine-tune the fc layers, train the SVMs and box regressors on `data`'s train split (val for selection)."""
    model, pre = load_model(run_dir).eval(), load_preprocess(run_dir)
    classes = dataset_classes(data)
    splits = {s: read_split(data, s, classes) for s in ("train", "val")}
    cache = ProposalCache(out / "proposals")
    proposals = {s: load_proposals(images, cache, config.proposals) for s, images in splits.items()}
    detectors, info = train_mode(model, pre, splits, proposals, mode, len(classes), config, log)
    return save_detectors(out, run_dir, mode, classes, config, detectors, info)


def test_detector(
    detector_dir: Path, data: Path, split: str, log: Callable[[str], None] | None = print
) -> dict[str, Any]:
    """AP per feature column of a trained detector on a split (VOC07 11-point and all-point)."""
    info, model, pre, detectors = load_detectors(detector_dir)
    config = config_from_json(info["config"])
    images = read_split(data, split, info["classes"])
    proposals = load_proposals(images, ProposalCache(detector_dir / "proposals"), config.proposals)
    row = test_mode(detectors, model, pre, images, proposals, info["mode"], info["classes"], config, log)
    return {"mode": info["mode"], "split": split, **row}


def detect_image(
    detector_dir: Path, image_path: str | os.PathLike[str], column: str, threshold: float
) -> tuple[list[tuple[float, str, list[float]]], int]:
    """(score, class, box) of every detection scoring at least `threshold` in one image, best first, and how many
    proposals were scored."""
    info, model, pre, detectors = load_detectors(detector_dir)
    config = config_from_json(info["config"])
    detector = next((d for d in detectors if d.column == column), None)
    if detector is None:
        raise InvalidInput(f"no detector column {column!r}: choose one of {', '.join(d.column for d in detectors)}")
    pixels = load_bgr(image_path)
    path = Path(image_path)
    image = DetImage(path.stem, path, pixels.shape[1], pixels.shape[0], [], [], [])
    boxes = ProposalCache(detector_dir / "proposals").get(image_path, pixels, config.proposals)
    split: SplitFeatures = extract(model, pre, [image], [boxes], info["mode"], config, with_gt=False)
    found = []
    for label, detections in enumerate(detect(detector, split, len(info["classes"]), config), start=1):
        found += [
            (score, info["classes"][label - 1], [round(float(v), 1) for v in box])
            for _, score, box in detections
            if score >= threshold
        ]
    found.sort(key=lambda d: -d[0])
    return found, len(boxes)
