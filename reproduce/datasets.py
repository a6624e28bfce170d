"""Dataset loaders: image lists for class folders, the built-in data, VOC 2007 classification and Caltech101.

A loader only lists files and labels (`ImageList`); `scan` and `load_images` decode them with `images.load_bgr`,
the one image decoder, and report the files that cannot be used. No PyTorch here: plain Python and numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from sppnet.core.errors import BadData
from sppnet.core.images import ImageError, load_bgr

Kind = Literal["single-label", "multi-label"]
KINDS: tuple[str, ...] = get_args(Kind)
OnBad = Literal["skip", "error"]
ON_BAD: tuple[str, ...] = get_args(OnBad)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
BUILTIN_SPLITS: tuple[str, ...] = ("train", "test")
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_FIRST_FEW = 5
_EXTENSIONS_TEXT = ", ".join(sorted(IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class Sample:
    """One image file and its label: a class index, or for multi-label data one target per class."""

    path: Path
    label: int | tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class ImageList:
    """The samples of one dataset split; `classes[i]` names label i (single-label) or target i (multi-label)."""

    root: Path
    classes: list[str]
    samples: tuple[Sample, ...]
    kind: Kind = "single-label"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "classes", list(self.classes))
        object.__setattr__(self, "samples", tuple(self.samples))
        if self.kind not in KINDS:
            raise BadData(f"unknown ImageList.kind {self.kind!r}: choose one of {KINDS}")
        n = len(self.classes)
        for sample in self.samples:
            label = sample.label
            if self.kind == "single-label":
                ok = isinstance(label, int) and 0 <= label < n
            else:
                ok = isinstance(label, tuple) and len(label) == n
            if not ok:
                raise BadData(
                    f"ImageList ({self.kind}, {n} classes): sample {sample.path} has label {label!r}; "
                    + ("expected a class index in 0..K-1" if self.kind == "single-label" else "expected K targets")
                )

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Iterable[int]) -> ImageList:
        """The samples at `indices`, in that order, with the same root, classes and kind."""
        return ImageList(self.root, self.classes, tuple(self.samples[int(i)] for i in indices), self.kind)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order; for multi-label data, images where the class is present (target 1)."""
        totals = [0] * len(self.classes)
        for sample in self.samples:
            if isinstance(sample.label, tuple):
                for i, target in enumerate(sample.label):
                    totals[i] += target == 1
            else:
                totals[sample.label] += 1
        return dict(zip(self.classes, totals, strict=True))


@dataclass(frozen=True)
class BadImage:
    """A file that `load_bgr` refused, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def image_folder(root: str | os.PathLike[str]) -> ImageList:
    """ImageNet-style class folders `root/<class>/<image>`: labels 0..K-1 follow the sorted class names.

    Images are files with an extension in IMAGE_EXTENSIONS (any case), found recursively in each class folder and
    sorted by path; hidden files and folders (names starting with ".") and files directly in `root` are ignored.
    Raises ValueError for a missing root, no class folders, class folders without images, or no images at all.
    """
    return _class_folders(Path(root), exclude=())


def builtin_split(data_dir: str | os.PathLike[str], split: str) -> ImageList:
    """One split ("train" or "test") of the built-in data that `sppnet data make` writes.

    The layout is `DIR/train/<class>/*.png`, `DIR/test/<class>/*.png` and `DIR/manifest.json`. Labels follow the
    sorted class names as in `image_folder` (not the manifest's class order); both splits must have the same classes.
    """
    data_dir = Path(data_dir)
    if split not in BUILTIN_SPLITS:
        raise BadData(f"unknown built-in split {split!r}: choose one of {BUILTIN_SPLITS}")
    layout = "DIR/train/<class>/*.png, DIR/test/<class>/*.png and DIR/manifest.json"
    missing = [name for name in BUILTIN_SPLITS if not (data_dir / name).is_dir()]
    if missing:
        found = "it does not exist" if not data_dir.exists() else f"no {' or '.join(missing)} folder"
        raise BadData(
            f"built-in data {data_dir}: expected the layout `sppnet data make` writes ({layout}), but {found}; "
            "create it with `sppnet data make` or pass that command's output folder"
        )
    names = {name: [path.name for path in _class_dirs(data_dir / name)] for name in BUILTIN_SPLITS}
    if names["train"] != names["test"]:
        raise BadData(
            f"built-in data {data_dir}: train has classes {names['train']} but test has {names['test']}; "
            "the splits must match: regenerate the data with `sppnet data make`"
        )
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text()).get("classes")
        except (OSError, ValueError, AttributeError) as error:
            raise BadData(f"built-in data {manifest}: cannot read it ({error}); regenerate the data") from None
        if listed is not None and sorted(listed) != names["train"]:
            raise BadData(
                f"built-in data {data_dir}: manifest.json lists classes {sorted(listed)} but the folders are "
                f"{names['train']}; regenerate the data with `sppnet data make`"
            )
    return image_folder(data_dir / split)


def voc07_classification(devkit_root: str | os.PathLike[str], split: str = "trainval") -> ImageList:
    """PASCAL VOC 2007 classification, multi-label: one target per VOC class, 1 present, -1 absent, 0 difficult.

    `devkit_root` is `VOCdevkit` or its `VOC2007` folder. Image ids, in order, come from
    `ImageSets/Main/<split>.txt`; the targets from `ImageSets/Main/<class>_<split>.txt`; images are
    `JPEGImages/<id>.jpg`. Raises ValueError naming the file for a missing file, a malformed line, class files
    whose ids differ from the split's, or a listed image missing on disk.
    """
    voc = _voc2007_dir(Path(devkit_root))
    main = voc / "ImageSets" / "Main"
    ids = [fields[0] for _, fields in _read_lines(main / f"{split}.txt", 1, "<image_id>")]
    _check_unique(ids, main / f"{split}.txt")
    targets: dict[str, list[int]] = {image_id: [] for image_id in ids}
    for name in VOC_CLASSES:
        path = main / f"{name}_{split}.txt"
        seen: list[str] = []
        for number, (image_id, target) in _read_lines(path, 2, "<image_id> <label>"):
            # 0 ("difficult"): the class appears only in objects marked difficult.
            if target not in ("1", "-1", "0"):
                raise BadData(
                    f"{path}:{number}: label {target!r} is not 1 (present), -1 (absent) or 0 (difficult); "
                    "restore the file from the VOC 2007 devkit"
                )
            if image_id not in targets:
                raise BadData(
                    f"{path}:{number}: image id {image_id} is not in {split}.txt; "
                    "every class file must list the same ids as the split: restore the files from the devkit"
                )
            targets[image_id].append(int(target))
            seen.append(image_id)
        _check_unique(seen, path)
        if len(seen) != len(ids):
            listed = set(seen)
            absent = next(image_id for image_id in ids if image_id not in listed)
            raise BadData(
                f"{path}: image id {absent} of {split}.txt is missing ({len(ids) - len(seen)} ids missing); "
                "every class file must list the same ids as the split: restore the files from the devkit"
            )
    jpegs = voc / "JPEGImages"
    samples = tuple(Sample(jpegs / f"{image_id}.jpg", tuple(targets[image_id])) for image_id in ids)
    missing = [sample.path for sample in samples if not sample.path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:_FIRST_FEW])
        raise BadData(
            f"VOC 2007 {split}: {len(missing)} image(s) listed in {main / f'{split}.txt'} are missing on disk "
            f"({shown}{', ...' if len(missing) > _FIRST_FEW else ''}); extract VOCtrainval/VOCtest into the devkit"
        )
    return ImageList(voc, list(VOC_CLASSES), samples, "multi-label")


def caltech101_splits(
    root: str | os.PathLike[str],
    n_train: int = 30,
    n_test: int = 50,
    seed: int = 0,
    exclude: Sequence[str] = ("BACKGROUND_Google",),
) -> tuple[ImageList, ImageList]:
    """Caltech101 train and test lists (class folders such as `101_ObjectCategories`), the paper's protocol.

    Per class, `n_train` random images train and up to `n_test` of the rest test, drawn by one
    `numpy.random.default_rng(seed)` over the sorted classes, so a seed is one of the paper's "several random
    splits": the paper reports the mean accuracy over several splits, so run several seeds and report the mean.
    Folders named in `exclude` are not classes (names not present are ignored). Raises ValueError naming the classes
    with fewer than `n_train + 1` images.
    """
    if n_train < 1 or n_test < 1:
        raise BadData(f"caltech101_splits needs n_train >= 1 and n_test >= 1; got {n_train} and {n_test}")
    images = _class_folders(Path(root), exclude=tuple(exclude))
    by_class: list[list[Sample]] = [[] for _ in images.classes]
    for sample in images.samples:
        by_class[sample.label].append(sample)
    small = [
        f"{name} ({len(members)})"
        for name, members in zip(images.classes, by_class, strict=True)
        if len(members) < n_train + 1
    ]
    if small:
        raise BadData(
            f"Caltech101 {images.root}: class(es) with fewer than n_train + 1 = {n_train + 1} images: "
            f"{', '.join(small)}; lower n_train or add them to exclude"
        )
    rng = np.random.default_rng(seed)
    train: list[Sample] = []
    test: list[Sample] = []
    for members in by_class:
        order = rng.permutation(len(members))
        train += [members[i] for i in sorted(order[:n_train])]
        test += [members[i] for i in sorted(order[n_train : n_train + n_test])]
    return (
        ImageList(images.root, images.classes, tuple(train)),
        ImageList(images.root, images.classes, tuple(test)),
    )


def scan(
    images: ImageList, *, min_side: int = 1, on_bad: OnBad = "skip", workers: int | None = None
) -> tuple[ImageList, list[BadImage]]:
    """Decode every image once, to find those `load_bgr` refuses (or with a side below `min_side`).

    Returns the usable images, in order, and the bad ones: on_bad "skip" drops them (the caller reports them),
    "error" raises ValueError with their count and the first few.
    """
    kept, bad = _decode(images, min_side=min_side, on_bad=on_bad, workers=workers, keep_arrays=False)
    return images.subset(index for index, _ in kept), bad


def load_images(
    images: ImageList, *, min_side: int = 1, on_bad: OnBad = "skip", workers: int | None = None
) -> tuple[list[np.ndarray], ImageList, list[BadImage]]:
    """Decode a small dataset into memory: (H, W, 3) uint8 BGR arrays, the images kept, and the bad ones.

    8-bit images are exact; 16-bit and float images are rounded to the nearest level. `min_side` and `on_bad` as
    in `scan`; `workers` threads decode (Pillow releases the GIL), results in input order.
    """
    kept, bad = _decode(images, min_side=min_side, on_bad=on_bad, workers=workers, keep_arrays=True)
    arrays = [array for _, array in kept if array is not None]
    return arrays, images.subset(index for index, _ in kept), bad


def _class_folders(root: Path, *, exclude: tuple[str, ...]) -> ImageList:
    expected = "expected ROOT/<class>/<image>"
    if not root.exists():
        raise BadData(f"image folder {root} not found ({expected}); check the path")
    if not root.is_dir():
        raise BadData(f"image folder {root} is not a directory ({expected}); pass the folder of class folders")
    class_dirs = [path for path in _class_dirs(root) if path.name not in exclude]
    if not class_dirs:
        if any(_is_image(path) for path in root.iterdir() if path.is_file()):
            raise BadData(
                f"image folder {root}: {expected}, found images directly in ROOT; move them into one folder per class"
            )
        raise BadData(f"image folder {root}: no class folders ({expected}); check the path")
    files = {path.name: _images_under(path) for path in class_dirs}
    if not any(files.values()):
        raise BadData(
            f"image folder {root}: no images in its {len(class_dirs)} class folder(s) ({expected} with an "
            f"extension in {_EXTENSIONS_TEXT}); check the path and the file types"
        )
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise BadData(
            f"image folder {root}: class folder(s) with no images: {', '.join(empty)} (extensions "
            f"{_EXTENSIONS_TEXT}); add images or remove the folders"
        )
    classes = list(files)
    samples = tuple(Sample(path, label) for label, name in enumerate(classes) for path in files[name])
    return ImageList(root, classes, samples)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")), key=lambda p: p.name
    )


def _images_under(folder: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        found += [Path(directory, name) for name in names if _is_image(Path(name))]
    return sorted(found)


def _is_image(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _voc2007_dir(root: Path) -> Path:
    for candidate in (root, root / "VOC2007"):
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise BadData(
        f"VOC 2007 {root}: expected {root / 'VOC2007' / 'ImageSets' / 'Main'} or {root / 'ImageSets' / 'Main'}; "
        "pass the VOCdevkit folder or its VOC2007 folder"
    )


def _read_lines(path: Path, n_fields: int, form: str) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a VOC list file as (line number, fields), each line exactly `n_fields` fields."""
    if not path.is_file():
        raise BadData(f"VOC 2007: {path} not found; restore ImageSets/Main from the VOC 2007 devkit")
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != n_fields:
            raise BadData(f"{path}:{number}: expected {form!r}, got {line.strip()!r}; restore the file")
        lines.append((number, fields))
    return lines


def _check_unique(ids: list[str], path: Path) -> None:
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            raise BadData(f"{path}: image id {image_id} is listed twice; restore the file from the devkit")
        seen.add(image_id)


def _decode(
    images: ImageList, *, min_side: int, on_bad: str, workers: int | None, keep_arrays: bool
) -> tuple[list[tuple[int, np.ndarray | None]], list[BadImage]]:
    """(index, uint8 array or None) for the usable images, in order, and the bad images."""
    if on_bad not in ON_BAD:
        raise BadData(f"unknown on_bad {on_bad!r}: choose one of {ON_BAD}")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise BadData(f"workers must be >= 1; got {workers}")

    def one(path: Path) -> np.ndarray | BadImage | None:
        try:
            array = load_bgr(path, min_side=min_side)
        except ImageError as error:
            return BadImage(path, error.reason)
        return np.clip(np.rint(array), 0, 255).astype(np.uint8) if keep_arrays else None

    kept: list[tuple[int, np.ndarray | None]] = []
    bad: list[BadImage] = []
    # Chunks keep the number of pending futures (and decoded arrays in flight) bounded on large datasets.
    chunk = workers * 32
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(images), chunk):
            paths = [sample.path for sample in images.samples[start : start + chunk]]
            for index, result in enumerate(pool.map(one, paths), start=start):
                if isinstance(result, BadImage):
                    bad.append(result)
                else:
                    kept.append((index, result))
    if bad and on_bad == "error":
        shown = "; ".join(str(item) for item in bad[:_FIRST_FEW])
        raise BadData(
            f"{len(bad)} of {len(images)} images cannot be used: {shown}{'; ...' if len(bad) > _FIRST_FEW else ''}; "
            "fix or remove them, or skip them with on_bad='skip'"
        )
    return kept, bad
