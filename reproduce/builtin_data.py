"""Built-in classification data for SPP: one object at widely varying scales and positions on clutter, any image size.

Writes an ImageFolder tree (`train/<class>/<index>.png`, `test/<class>/<index>.png`) and `manifest.json`, byte for
byte reproducible from the seed. Sources: real Fashion-MNIST items (Debian's `dataset-fashion-mnist`) or
procedural shapes that need nothing installed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sppnet.core.errors import BadData, InvalidInput

FORMAT_VERSION = 1
SOURCES: tuple[str, ...] = ("fashion-mnist", "shapes")
SPLITS: tuple[str, ...] = ("train", "test")
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Official names ("T-shirt/top", "Ankle boot", ...) made safe for folder names.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "ellipse",
    "pentagon",
    "arrow",
    "crescent",
)
# The idx train files feed only the train split and the t10k files only the test split.
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049
_FASHION_FIX = "install it with `apt-get install dataset-fashion-mnist` or pass --fashion-mnist-dir DIR"
_SUPERSAMPLE = 4

MaskFn = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class GenerationSettings:
    """How each image is drawn. The defaults give 64-320 px images whose object spans 20-90% of the short side.

    Attributes:
        short_side: short image side in pixels, uniform and inclusive; 64..160 brackets the ~90-112 px inputs of
            the CPU presets, so training resizes both up and down.
        aspect: width / height, log-uniform, so portrait and landscape are equally likely (long side <= 320 px).
        object_scale: side of the object's square box over the short side, log-uniform (every octave as likely).
        strokes: distractor polylines per image, inclusive.
        blobs: soft textured distractor patches per image, inclusive.
        grain: standard deviation of the per-pixel noise added last, in grey levels; off by default because it
            roughly doubles PNG size and encoding time.
        png_compress_level: zlib level of the PNGs; fixed so the bytes are reproducible.
    """

    short_side: tuple[int, int] = (64, 160)
    aspect: tuple[float, float] = (0.5, 2.0)
    object_scale: tuple[float, float] = (0.2, 0.9)
    strokes: tuple[int, int] = (2, 5)
    blobs: tuple[int, int] = (1, 3)
    grain: float = 0.0
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        checks = {
            "short_side must be 16 <= low <= high": 16 <= self.short_side[0] <= self.short_side[1],
            "aspect must be 0 < low <= high": 0 < self.aspect[0] <= self.aspect[1],
            "object_scale must be 0 < low <= high <= 1": 0 < self.object_scale[0] <= self.object_scale[1] <= 1,
            "strokes must be 0 <= low <= high": 0 <= self.strokes[0] <= self.strokes[1],
            "blobs must be 0 <= low <= high": 0 <= self.blobs[0] <= self.blobs[1],
            "grain must be >= 0": self.grain >= 0,
            "png_compress_level must be 0..9": 0 <= self.png_compress_level <= 9,
        }
        for message, ok in checks.items():
            if not ok:
                raise InvalidInput(f"GenerationSettings: {message}; got {self}")


@dataclass(frozen=True)
class IdxSplit:
    """The Fashion-MNIST items of one idx pair: (N, rows, cols) uint8 images, (N,) labels, and file provenance."""

    images: np.ndarray
    labels: np.ndarray
    files: dict[str, dict[str, str]]


def save_png(path: Path, image: np.ndarray, compress_level: int) -> None:
    """Write an (H, W, 3) uint8 array as a PNG with no timestamp or other varying chunk."""
    Image.fromarray(image, "RGB").save(path, format="PNG", compress_level=compress_level)


def make_classification_dataset(
    out: Path,
    *,
    source: str = "fashion-mnist",
    n: int = 3000,
    seed: int = 0,
    fashion_mnist_dir: Path | None = None,
    test_fraction: float = 0.2,
    settings: GenerationSettings | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Generate `n` images into the ImageFolder tree `out` (built in a sibling temp dir, renamed at the end).

    Returns the manifest also written to `out/manifest.json`; `workers` threads (default: up to 4) share the work.
    Raises ValueError for bad arguments, an `out` that exists and is not empty, or missing or bad Fashion-MNIST files.
    """
    settings = settings or GenerationSettings()
    out = Path(out)
    counts = _split_counts(source, n, test_fraction)
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer; got {seed!r}")
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise InvalidInput(f"workers must be >= 1; got {workers}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"output {out} already exists and is not empty: choose another --out or remove it")

    idx: dict[str, IdxSplit] = {}
    if source == "fashion-mnist":
        directory = Path(fashion_mnist_dir) if fashion_mnist_dir is not None else DEFAULT_FASHION_MNIST_DIR
        idx = {split: load_fashion_mnist_split(directory, split) for split in SPLITS}
        classes = FASHION_MNIST_CLASSES
        source_info: dict[str, Any] = {"name": source, "dir": str(directory)}
        source_info["files"] = {name: info for split in SPLITS for name, info in idx[split].files.items()}
    else:
        classes = SHAPE_CLASSES
        source_info = {"name": source}

    items = {split: _assign_items(idx[split].labels, counts[split], seed, i) for i, split in enumerate(SPLITS) if idx}

    def one(split_index: int, index: int) -> dict[str, Any]:
        split, label = SPLITS[split_index], index % len(classes)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, 0, index)))
        item = int(items[split][index]) if items else None
        mask_of = _fashion_mask(idx[split].images[item]) if item is not None else _shape_mask(classes[label], rng)
        image, box = _render(mask_of, rng, settings)
        relative = f"{split}/{classes[label]}/{index:05d}.png"
        save_png(tmp / relative, image, settings.png_compress_level)
        return _record(relative, split, classes[label], label, image, box, item)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        for split in SPLITS:
            for name in classes:
                (tmp / split / name).mkdir(parents=True)
        jobs = [(i, index) for i, split in enumerate(SPLITS) for index in range(counts[split])]
        # Every image has its own seed, so the thread count changes the speed, never the bytes.
        with ThreadPoolExecutor(workers) as pool:
            try:
                records = list(pool.map(lambda job: one(*job), jobs))
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        manifest = {
            "format_version": FORMAT_VERSION,
            "generator": "sppnet.reproduce.builtin_data",
            "seed": seed,
            "source": source_info,
            "n": n,
            "test_fraction": test_fraction,
            "settings": asdict(settings),
            "classes": list(classes),
            "counts": {
                split: {name: sum(r["split"] == split and r["class"] == name for r in records) for name in classes}
                for split in SPLITS
            },
            "size_distribution": size_distribution(records),
            "images": records,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, out)  # rename(2) also replaces an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def size_distribution(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Min, median and max of height, width, aspect (w/h) and object scale over per-image manifest records."""
    return {
        key: {
            "min": float(np.min(values)),
            "median": round(float(np.median(values)), 6),
            "max": float(np.max(values)),
        }
        for key in ("height", "width", "aspect", "object_scale")
        for values in [np.array([r[key] for r in records], dtype=np.float64)]
    }


def load_fashion_mnist_split(directory: Path, split: str) -> IdxSplit:
    """Read and validate one split's idx image and label files (gzip + numpy; no torchvision).

    `split` is "train" or "test"; "t10k", the prefix of the test files, is accepted too.
    """
    split = "test" if split == "t10k" else split
    if split not in FASHION_MNIST_FILES:
        raise InvalidInput(f"unknown Fashion-MNIST split {split!r}: choose train or test (t10k)")
    images_name, labels_name = FASHION_MNIST_FILES[split]
    images_raw, images_info = _read_gz(Path(directory) / images_name)
    labels_raw, labels_info = _read_gz(Path(directory) / labels_name)
    images = _parse_idx(images_raw, _IDX_IMAGES_MAGIC, 3, Path(directory) / images_name)
    labels = _parse_idx(labels_raw, _IDX_LABELS_MAGIC, 1, Path(directory) / labels_name)
    where = f"Fashion-MNIST files {Path(directory) / images_name} and {labels_name}"
    if len(images) != len(labels):
        raise InvalidInput(f"{where} disagree ({len(images)} images, {len(labels)} labels): {_FASHION_FIX}")
    missing = sorted(set(range(len(FASHION_MNIST_CLASSES))) - set(np.unique(labels).tolist()))
    if missing or labels.max() >= len(FASHION_MNIST_CLASSES):
        raise InvalidInput(f"{where}: labels must cover exactly the classes 0..9 (missing {missing}): {_FASHION_FIX}")
    return IdxSplit(images, labels, {images_name: images_info, labels_name: labels_info})


def _read_gz(path: Path) -> tuple[bytes, dict[str, str]]:
    if not path.is_file():
        raise BadData(f"Fashion-MNIST file {path} not found: {_FASHION_FIX} holding the train-/t10k- idx .gz files")
    raw = path.read_bytes()
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise InvalidInput(f"Fashion-MNIST file {path} is not valid gzip ({error}): {_FASHION_FIX}") from None
    return data, {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest()}


def _parse_idx(data: bytes, magic: int, ndim: int, path: Path) -> np.ndarray:
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic or len(data) < header:
        raise InvalidInput(f"Fashion-MNIST file {path} has idx magic {found}, expected {magic}: {_FASHION_FIX}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + math.prod(shape) or 0 in shape[1:]:
        raise InvalidInput(
            f"Fashion-MNIST file {path} is truncated or malformed (shape {shape}, {len(data) - header} data bytes): "
            f"{_FASHION_FIX}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _split_counts(source: str, n: int, test_fraction: float) -> dict[str, int]:
    if source not in SOURCES:
        raise InvalidInput(f"unknown dataset source {source!r}: choose one of {', '.join(SOURCES)}")
    if not isinstance(n, int) or isinstance(n, bool):
        raise InvalidInput(f"n must be an integer image count; got {n!r}")
    if not 0 < test_fraction < 1:
        raise InvalidInput(f"test_fraction must lie strictly between 0 and 1; got {test_fraction}")
    classes = len(FASHION_MNIST_CLASSES if source == "fashion-mnist" else SHAPE_CLASSES)
    test = round(n * test_fraction)
    if min(n - test, test) < classes:
        smallest = next(
            m
            for m in range(2 * classes, 10**9)
            if min(m - round(m * test_fraction), round(m * test_fraction)) >= classes
        )
        raise InvalidInput(
            f"n={n} with test_fraction={test_fraction} gives {n - test} train and {test} test images, too few for "
            f"one per class ({classes} classes) in each split: use n >= {smallest}"
        )
    return {"train": n - test, "test": test}


def _assign_items(labels: np.ndarray, count: int, seed: int, split_index: int) -> np.ndarray:
    """Item index of each image: image i has class i % C and takes the next item of a seeded per-class shuffle."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, 1)))
    classes = len(FASHION_MNIST_CLASSES)
    shuffled = [rng.permutation(np.flatnonzero(labels == c)) for c in range(classes)]
    return np.array([shuffled[i % classes][(i // classes) % len(shuffled[i % classes])] for i in range(count)])


def _fashion_mask(item: np.ndarray) -> MaskFn:
    """A function of the object side giving the item, resized, as an alpha mask in [0, 1]."""

    def mask(side: int) -> np.ndarray:
        resized = Image.fromarray(item, "L").resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float32) / 255.0

    return mask


def _shape_mask(name: str, rng: np.random.Generator) -> MaskFn:
    """A function of the object side giving the shape, anti-aliased by supersampling, as an alpha mask in [0, 1]."""
    polygons = _shape_polygons(name, rng)

    def mask(side: int) -> np.ndarray:
        big = side * _SUPERSAMPLE
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        for points, fill in polygons:
            draw.polygon([((x + 1) * big / 2, (y + 1) * big / 2) for x, y in points], fill=fill)
        small = canvas.resize((side, side), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0

    return mask


def _shape_polygons(name: str, rng: np.random.Generator) -> list[tuple[list[tuple[float, float]], int]]:
    """Polygons in the unit disc (fill 255 adds, fill 0 cuts) of one shape at a random rotation and stroke."""
    turn = rng.uniform(0, 2 * math.pi)

    def placed(points: list[tuple[float, float]], dx: float = 0.0) -> list[tuple[float, float]]:
        c, s = math.cos(turn), math.sin(turn)
        return [(0.95 * ((x + dx) * c - y * s), 0.95 * ((x + dx) * s + y * c)) for x, y in points]

    def ellipse(rx: float, ry: float, count: int = 72) -> list[tuple[float, float]]:
        return [(rx * math.cos(t), ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, count, endpoint=False)]

    def regular(k: int, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
        m = k * len(radii)
        angles = [2 * math.pi * j / m for j in range(m)]
        return [
            (radii[j % len(radii)] * math.cos(t), radii[j % len(radii)] * math.sin(t)) for j, t in enumerate(angles)
        ]

    if name == "circle":
        return [(placed(ellipse(1, 1)), 255)]
    if name == "ellipse":
        return [(placed(ellipse(1, rng.uniform(0.4, 0.65))), 255)]
    if name == "ring":
        return [(placed(ellipse(1, 1)), 255), (placed(ellipse(*[1 - rng.uniform(0.2, 0.4)] * 2)), 0)]
    if name == "crescent":
        inner = rng.uniform(0.75, 0.9)
        return [(placed(ellipse(1, 1)), 255), (placed(ellipse(inner, inner), dx=rng.uniform(0.3, 0.5)), 0)]
    if name == "square":
        return [(placed(regular(4)), 255)]
    if name == "triangle":
        return [(placed(regular(3)), 255)]
    if name == "pentagon":
        return [(placed(regular(5)), 255)]
    if name == "star":
        return [(placed(regular(5, (1.0, rng.uniform(0.38, 0.5)))), 255)]
    if name == "cross":
        t = rng.uniform(0.14, 0.3)
        a = math.sqrt(1 - t * t)
        quarter = ((a, -t), (a, t), (t, t))
        arms = [(p * c - q * r, p * r + q * c) for c, r in ((1, 0), (0, 1), (-1, 0), (0, -1)) for p, q in quarter]
        return [(placed(arms), 255)]
    if name == "arrow":
        t, h = rng.uniform(0.1, 0.2), rng.uniform(0.45, 0.6)
        return [(placed([(-0.95, -t), (0.1, -t), (0.1, -h), (1.0, 0.0), (0.1, h), (0.1, t), (-0.95, t)]), 255)]
    raise InvalidInput(f"unknown shape {name!r}: choose one of {', '.join(SHAPE_CLASSES)}")


def clutter(
    rng: np.random.Generator, height: int, width: int, short: int, blobs: tuple[int, int], strokes: tuple[int, int]
) -> np.ndarray:
    """The distractor background, (H, W, 3) uint8 RGB: smooth noise, then blobs, then polyline strokes."""
    canvas = _background(rng, height, width)
    for _ in range(int(rng.integers(blobs[0], blobs[1] + 1))):
        _add_blob(canvas, rng, short)
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(rng.integers(2, 5))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(points, fill=colour, width=int(rng.integers(1, 4)), joint="curve")
    return np.asarray(picture, dtype=np.uint8)


def _render(
    mask_of: MaskFn, rng: np.random.Generator, s: GenerationSettings
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image: smooth noise, distractor blobs and strokes, then the tinted object, then grain."""
    short = int(rng.integers(s.short_side[0], s.short_side[1] + 1))
    aspect = math.exp(rng.uniform(math.log(s.aspect[0]), math.log(s.aspect[1])))
    height, width = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)

    canvas = clutter(rng, height, width, short, s.blobs, s.strokes).astype(np.float32)

    scale = math.exp(rng.uniform(math.log(s.object_scale[0]), math.log(s.object_scale[1])))
    side = min(max(round(scale * short), math.ceil(s.object_scale[0] * short)), math.floor(s.object_scale[1] * short))
    side = max(side, 4)
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    alpha = mask_of(side)[..., None]
    # Bright or dark tint so the object stands out from the mid-grey background on average.
    tint = rng.uniform(0, 1, 3).astype(np.float32)
    colour = 185 + 70 * tint if rng.random() < 0.5 else 60 * tint
    window = canvas[y : y + side, x : x + side]
    canvas[y : y + side, x : x + side] = window * (1 - alpha) + colour * alpha

    if s.grain > 0:
        canvas += s.grain * rng.standard_normal((height, width, 3), dtype=np.float32)
    return np.rint(canvas.clip(0, 255)).astype(np.uint8), (x, y, side)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour noise: a coarse random grid around a mid-tone base, upsampled bicubically."""
    cells = int(rng.integers(2, 6))
    grid_h, grid_w = (
        max(2, round(cells * height / min(height, width))),
        max(2, round(cells * width / min(height, width))),
    )
    grid = rng.uniform(80, 170, 3) + rng.uniform(-50, 50, (grid_h, grid_w, 3))
    coarse = Image.fromarray(grid.clip(0, 255).astype(np.uint8), "RGB")
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32).copy()


def _add_blob(canvas: np.ndarray, rng: np.random.Generator, short: int) -> None:
    """Blend a soft-edged patch of blocky random texture into the canvas (clutter with no class shape)."""
    height, width = canvas.shape[:2]
    sigma = rng.uniform(0.06, 0.18) * short
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    y0, y1 = max(0, int(cy - 3 * sigma)), min(height, int(cy + 3 * sigma) + 1)
    x0, x1 = max(0, int(cx - 3 * sigma)), min(width, int(cx + 3 * sigma) + 1)
    if y1 <= y0 or x1 <= x0:
        return
    block = int(rng.integers(2, 7))
    cells = rng.uniform(0, 255, ((y1 - y0) // block + 1, (x1 - x0) // block + 1, 3)).astype(np.float32)
    texture = cells.repeat(block, 0).repeat(block, 1)[: y1 - y0, : x1 - x0]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    weight = rng.uniform(0.3, 0.7) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    weight = weight.astype(np.float32)[..., None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - weight) + texture * weight


def _record(
    path: str, split: str, name: str, label: int, image: np.ndarray, box: tuple[int, int, int], item: int | None
) -> dict[str, Any]:
    height, width = image.shape[:2]
    record: dict[str, Any] = {
        "path": path,
        "split": split,
        "class": name,
        "label": label,
        "height": height,
        "width": width,
        "aspect": round(width / height, 6),
        "box": list(box),
        "object_scale": round(box[2] / min(height, width), 6),
    }
    if item is not None:
        record["item"] = item
    return record
