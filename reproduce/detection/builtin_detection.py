"""Built-in detection data: 1-4 objects per image on clutter, in VOC 2007 layout, reproducible from a seed.

Objects and clutter are drawn as in `sppnet.reproduce.builtin_data` (Fashion-MNIST items or procedural shapes);
each object's ground truth is the tight box of the pixels it painted. Writes `out/VOC2007/` with
`JPEGImages/<id>.png` (PNG, not JPEG: lossless, and the VOC loader reads either), `Annotations/<id>.xml`,
`ImageSets/Main/{<split>,trainval}.txt`, and `out/manifest.json` last.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.atomic import write_atomic
from sppnet.core.errors import InvalidInput
from sppnet.reproduce.builtin_data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    SHAPE_CLASSES,
    SOURCES,
    MaskFn,
    _fashion_mask,
    _shape_mask,
    clutter,
    load_fashion_mnist_split,
    save_png,
)
from sppnet.reproduce.detection.voc import write_annotation

FORMAT_VERSION = 1
DEFAULT_SPLITS: tuple[tuple[str, float], ...] = (("train", 0.5), ("val", 0.2), ("test", 0.3))
# Alpha below this is dropped before compositing, so the pixels an object changes and its box agree exactly.
_VISIBLE_ALPHA = 0.1
_MIN_SIDE = 12
_PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class DetectionSettings:
    """How each detection image is drawn; the defaults keep images small enough for a CPU pipeline.

    Attributes:
        short_side: short image side in pixels, uniform and inclusive.
        aspect: width / height, log-uniform.
        objects: objects per image, uniform and inclusive (an object that finds no free place is left out).
        object_scale: side of an object's square over the short side, log-uniform.
        max_overlap: largest fraction of either box's area two ground-truth boxes may share (0 = disjoint).
        truncation: largest fraction of an object's side that may lie outside the image.
        strokes: distractor polylines per image, inclusive.
        blobs: soft textured distractor patches per image, inclusive.
        png_compress_level: zlib level of the PNGs; fixed so the bytes are reproducible.
    """

    short_side: tuple[int, int] = (160, 320)
    aspect: tuple[float, float] = (0.6, 1.6)
    objects: tuple[int, int] = (1, 4)
    object_scale: tuple[float, float] = (0.2, 0.6)
    max_overlap: float = 0.15
    truncation: float = 0.25
    strokes: tuple[int, int] = (2, 5)
    blobs: tuple[int, int] = (1, 3)
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        checks = {
            "short_side must be 32 <= low <= high": 32 <= self.short_side[0] <= self.short_side[1],
            "aspect must be 0 < low <= high": 0 < self.aspect[0] <= self.aspect[1],
            "objects must be 1 <= low <= high": 1 <= self.objects[0] <= self.objects[1],
            "object_scale must be 0 < low <= high <= 1": 0 < self.object_scale[0] <= self.object_scale[1] <= 1,
            "max_overlap must be 0 <= max_overlap <= 1": 0 <= self.max_overlap <= 1,
            "truncation must be 0 <= truncation <= 0.5": 0 <= self.truncation <= 0.5,
            "strokes must be 0 <= low <= high": 0 <= self.strokes[0] <= self.strokes[1],
            "blobs must be 0 <= low <= high": 0 <= self.blobs[0] <= self.blobs[1],
            "png_compress_level must be 0..9": 0 <= self.png_compress_level <= 9,
        }
        for message, ok in checks.items():
            if not ok:
                raise InvalidInput(f"DetectionSettings: {message}; got {self}")


@dataclass(frozen=True, eq=False)
class Scene:
    """One rendered image and its ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        clutter: the same image before any object was drawn.
        boxes: (K, 4) float64 tight boxes (0-based, inclusive) of the placed objects' painted pixels.
        masks: (K, H, W) bool, the pixels each placed object painted (a later object may paint over them).
        placed: (K,) indices into the objects passed to `render_scene`; the others found no free place.
    """

    image: np.ndarray
    clutter: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    placed: np.ndarray


def make_detection_dataset(
    out: str | os.PathLike[str],
    *,
    source: str = "fashion-mnist",
    n: int = 500,
    seed: int = 0,
    splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS,
    settings: DetectionSettings | None = None,
    fashion_mnist_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Generate `n` images as a VOC 2007 tree under `out/VOC2007` and return the manifest written last.

    Image ids are 000001.. in split order; the fractions in `splits` are rounded to whole images (at least one
    per split). Fashion-MNIST items come from its train idx files for every split but "test", which uses the t10k
    files. `workers` threads (default: up to 4) share the work without changing a byte. Raises ValueError for bad
    arguments, an `out` that exists and is not empty, or missing or bad Fashion-MNIST files.
    """
    settings = settings or DetectionSettings()
    out = Path(out)
    if source not in SOURCES:
        raise InvalidInput(f"unknown dataset source {source!r}: choose one of {', '.join(SOURCES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer; got {seed!r}")
    counts = _split_counts(n, splits)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise InvalidInput(f"workers must be >= 1; got {workers}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"output {out} already exists and is not empty: choose another --out or remove it")

    pools: dict[str, list[np.ndarray]] = {}
    items: dict[str, np.ndarray] = {}
    if source == "fashion-mnist":
        directory = Path(fashion_mnist_dir) if fashion_mnist_dir is not None else DEFAULT_FASHION_MNIST_DIR
        idx = {part: load_fashion_mnist_split(directory, part) for part in sorted({_idx_part(s) for s in counts})}
        classes = FASHION_MNIST_CLASSES
        items = {part: split.images for part, split in idx.items()}
        pools = {part: [np.flatnonzero(split.labels == c) for c in range(len(classes))] for part, split in idx.items()}
        source_info: dict[str, Any] = {"name": source, "dir": str(directory)}
        source_info["files"] = {name: info for split in idx.values() for name, info in split.files.items()}
    else:
        classes = SHAPE_CLASSES
        source_info = {"name": source}
    voc = out / "VOC2007"

    def one(index: int, split: str) -> dict[str, Any]:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        chosen = rng.integers(0, len(classes), int(rng.integers(settings.objects[0], settings.objects[1] + 1)))
        if pools:
            part = _idx_part(split)
            objects = [_fashion_mask(items[part][rng.choice(pools[part][c])]) for c in chosen]
        else:
            objects = [_shape_mask(classes[c], rng) for c in chosen]
        scene = render_scene(objects, rng, settings)
        labels = chosen[scene.placed] + 1
        image_id = f"{index + 1:06d}"
        height, width = scene.image.shape[:2]
        save_png(voc / "JPEGImages" / f"{image_id}.png", scene.image, settings.png_compress_level)
        write_annotation(
            voc / "Annotations" / f"{image_id}.xml",
            image_id,
            f"{image_id}.png",
            width,
            height,
            scene.boxes,
            labels,
            np.zeros(len(labels), dtype=bool),
            classes,
        )
        return {"id": image_id, "split": split, "labels": labels.tolist()}

    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    # Every image has its own seed, so the thread count changes the speed, never the bytes.
    with ThreadPoolExecutor(workers) as pool:
        try:
            records = list(pool.map(one, range(n), [name for name, count in counts.items() for _ in range(count)]))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise

    lists = {name: [r["id"] for r in records if r["split"] == name] for name in counts}
    lists["trainval"] = sorted(lists.get("train", []) + lists.get("val", []))
    for name, ids in lists.items():
        write_atomic(voc / "ImageSets" / "Main" / f"{name}.txt", "".join(f"{i}\n" for i in ids).encode())
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "sppnet.reproduce.detection.builtin_detection",
        "task": "detection",
        "layout": "VOC2007",
        "seed": seed,
        "source": source_info,
        "n": n,
        "splits": dict(splits),
        "settings": asdict(settings),
        "classes": list(classes),
        "counts": {
            name: {
                "images": len(ids),
                "objects": sum(len(r["labels"]) for r in records if r["split"] == name),
                "per_class": {
                    cls: sum(r["labels"].count(label) for r in records if r["split"] == name)
                    for label, cls in enumerate(classes, start=1)
                },
            }
            for name, ids in lists.items()
            if name != "trainval"
        },
    }
    write_atomic(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def render_scene(objects: Sequence[MaskFn], rng: np.random.Generator, settings: DetectionSettings) -> Scene:
    """Draw clutter, then each object (an alpha-mask function of its side) at a free place, in order.

    An object may be cut by the image edge (at most `truncation` of its side) and may share at most
    `max_overlap` of its box with any other; one that finds no such place in a few tries is left out.
    """
    s = settings
    short = int(rng.integers(s.short_side[0], s.short_side[1] + 1))
    aspect = math.exp(rng.uniform(math.log(s.aspect[0]), math.log(s.aspect[1])))
    height, width = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
    clutter = _clutter(rng, height, width, short, s)
    canvas = clutter.astype(np.float32)

    lowest = max(math.ceil(s.object_scale[0] * short), _MIN_SIDE)
    highest = max(math.floor(s.object_scale[1] * short), lowest)
    boxes: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    placed: list[int] = []
    for number, mask_of in enumerate(objects):
        scale = math.exp(rng.uniform(math.log(s.object_scale[0]), math.log(s.object_scale[1])))
        side = min(max(round(scale * short), lowest), highest)
        alpha = mask_of(side)
        alpha = np.where(alpha >= _VISIBLE_ALPHA, alpha, 0.0).astype(np.float32)
        spill = math.floor(s.truncation * side)
        for _ in range(_PLACEMENT_TRIES):
            x = int(rng.integers(-spill, width - side + spill + 1))
            y = int(rng.integers(-spill, height - side + spill + 1))
            mask = np.zeros((height, width), dtype=np.float32)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, width), min(y + side, height)
            mask[y0:y1, x0:x1] = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
            box = _tight_box(mask > 0)
            if box is not None and all(_shared_fraction(box, other) <= s.max_overlap for other in boxes):
                break
        else:
            continue
        # Bright or dark tint so the object stands out from the mid-grey background, as in builtin_data.
        tint = rng.uniform(0, 1, 3).astype(np.float32)
        colour = 185 + 70 * tint if rng.random() < 0.5 else 60 * tint
        canvas = canvas * (1 - mask[..., None]) + colour * mask[..., None]
        boxes.append(box)
        masks.append(mask > 0)
        placed.append(number)
    return Scene(
        image=np.rint(canvas.clip(0, 255)).astype(np.uint8),
        clutter=clutter,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        masks=np.asarray(masks, dtype=bool).reshape(-1, height, width),
        placed=np.asarray(placed, dtype=np.int64),
    )


def _clutter(rng: np.random.Generator, height: int, width: int, short: int, s: DetectionSettings) -> np.ndarray:
    """The classification set's distractor background (`builtin_data.clutter`) with this set's settings."""
    return clutter(rng, height, width, short, s.blobs, s.strokes)


def _tight_box(mask: np.ndarray) -> np.ndarray | None:
    """(x1, y1, x2, y2) of the True pixels, inclusive, or None if there are none."""
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if columns.size == 0:
        return None
    return np.array([columns[0], rows[0], columns[-1], rows[-1]], dtype=np.float64)


def _shared_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area (pixels counted inclusively)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0] + 1) * (a[3] - a[1] + 1), (b[2] - b[0] + 1) * (b[3] - b[1] + 1))
    return float(iw * ih / smaller)


def _idx_part(split: str) -> str:
    return "test" if split == "test" else "train"


def _split_counts(n: int, splits: Sequence[tuple[str, float]]) -> dict[str, int]:
    """Images per split: fractions rounded by largest remainder so they sum to `n`, each at least 1."""
    names = [name for name, _ in splits]
    fractions = np.array([fraction for _, fraction in splits], dtype=np.float64)
    if not names or len(set(names)) != len(names) or "trainval" in names:
        raise InvalidInput(
            f"splits need distinct names other than 'trainval' (it is written as train + val); got {names}"
        )
    if not all(name and name.replace("_", "").replace("-", "").isalnum() for name in names):
        raise InvalidInput(f"split names must be letters, digits, '_' or '-'; got {names}")
    if not (np.isfinite(fractions).all() and (fractions > 0).all() and abs(fractions.sum() - 1) < 1e-9):
        raise InvalidInput(f"split fractions must be positive and sum to 1; got {dict(splits)}")
    if not isinstance(n, int) or isinstance(n, bool) or n < len(names):
        raise InvalidInput(f"n must be an integer of at least one image per split ({len(names)}); got {n!r}")
    exact = n * fractions
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if (counts < 1).any():
        raise InvalidInput(f"n={n} leaves a split of {dict(splits)} without images: use a larger n")
    return dict(zip(names, counts.tolist(), strict=True))
