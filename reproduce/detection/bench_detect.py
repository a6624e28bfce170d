"""`sppnet bench detect`: time per image of SPP-net feature extraction (1 and 5 scales) against R-CNN mode at the
same proposal count, split into conv and fc as the paper reports them, as ratios measured in one run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.images import load_bgr
from sppnet.core.models import SPPNet
from sppnet.core.preprocess import Preprocess
from sppnet.reproduce.detection.features import rcnn_features, window_features
from sppnet.reproduce.detection.pipeline import MODE_NAMES, DetectConfig
from sppnet.reproduce.detection.proposals import ProposalSettings, selective_search


@dataclass(frozen=True)
class DetectTiming:
    """Median seconds per image of one mode: conv (with resizing/warping and pooling) and fc."""

    mode: str
    conv_s: float
    fc_s: float
    windows: int

    @property
    def total_s(self) -> float:
        return self.conv_s + self.fc_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"total_s": self.total_s}


def proposals_for(image: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` windows: selective search's, topped up with random boxes when it finds fewer (same count per mode)."""
    boxes = selective_search(image, ProposalSettings(max_proposals=count))
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    extra = count - len(boxes)
    if extra > 0:
        x = np.sort(rng.uniform(0, w - 1, (extra, 2)), axis=1)
        y = np.sort(rng.uniform(0, h - 1, (extra, 2)), axis=1)
        boxes = np.concatenate([boxes, np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)])
    return boxes[:count]


def bench_detect(
    model: SPPNet,
    pre: Preprocess,
    images: Sequence[str | Path],
    *,
    proposals: int = 2000,
    config: DetectConfig | None = None,
    repeats: int = 3,
) -> list[DetectTiming]:
    """Median over images and repeats (modes interleaved per image) of conv and fc seconds per image."""
    config = config or DetectConfig()
    model = model.eval()
    times: dict[str, dict[str, list[float]]] = {m: {"conv": [], "fc": []} for m in ("spp-1", "spp-5", "rcnn")}
    for index, path in enumerate(images):
        image = load_bgr(path)
        boxes = proposals_for(image, proposals, seed=index)
        for _ in range(repeats):
            for mode in times:
                if mode == "rcnn":
                    _, timing = rcnn_features(model, image, boxes, pre, layers=("fc7",))
                else:
                    _, timing = window_features(model, image, boxes, pre, config.feature_config(mode), ("fc7",))
                times[mode]["conv"].append(timing["prep"] + timing["conv"] + timing["pool"])
                times[mode]["fc"].append(timing["fc"])
    return [
        DetectTiming(mode, statistics.median(t["conv"]), statistics.median(t["fc"]), proposals)
        for mode, t in times.items()
    ]


def format_timings(rows: Sequence[DetectTiming], images: int) -> str:
    """A table of seconds per image and the R-CNN / SPP ratios."""
    by = {r.mode: r for r in rows}
    rcnn = by["rcnn"]
    lines = [
        f"seconds per image, {rows[0].windows} windows, median over {images} images (conv includes resizing and "
        "window pooling or warping)",
        f"{'mode':16} {'conv s':>8} {'fc s':>8} {'total s':>8} {'R-CNN/this conv':>16} {'R-CNN/this total':>17}",
    ]
    for r in rows:
        lines.append(
            f"{MODE_NAMES[r.mode]:16} {r.conv_s:8.3f} {r.fc_s:8.3f} {r.total_s:8.3f} "
            f"{rcnn.conv_s / r.conv_s:15.1f}x {rcnn.total_s / r.total_s:16.1f}x"
        )
    return "\n".join(lines)
