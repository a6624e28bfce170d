"""Dataset loaders: labels and order from small trees written here, every error naming what was expected."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet.reproduce.builtin_data import make_classification_dataset
from sppnet.reproduce.datasets import (
    VOC_CLASSES,
    BadImage,
    ImageList,
    Sample,
    builtin_split,
    caltech101_splits,
    image_folder,
    load_images,
    scan,
    voc07_classification,
)

RNG = np.random.default_rng(20140618)
VOC_ORDER = [
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
]


def _rgb(height: int = 5, width: int = 6) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png(path: Path, rgb: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb() if rgb is None else rgb, "RGB").save(path)
    return path


def _touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _raises(match: str) -> pytest.RaisesExc[ValueError]:
    return pytest.raises(ValueError, match=re.escape(match))


# image_folder


def test_image_folder_labels_order_nesting_and_ignored_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    wanted = {
        "dog": [root / "dog/b.png", root / "dog/A.PNG", root / "dog/sub/deeper/z.jpeg", root / "dog/sub/c.bmp"],
        "Zebra": [root / "Zebra/1.TIF"],
        "cat": [root / "cat/x.webp", root / "cat/y.ppm", root / "cat/y.pgm", root / "cat/w.tiff", root / "cat/v.jpg"],
    }
    for paths in wanted.values():
        for path in paths:
            _touch(path, b"x")  # listing never decodes
    for ignored in ["dog/notes.txt", "dog/.hidden.png", "dog/.cache/e.png", "cat/README", "cat/f.gif", "top.png"]:
        _touch(root / ignored, b"x")
    _touch(root / ".hiddenclass/q.png", b"x")

    images = image_folder(root)

    classes = sorted(wanted)  # "Zebra" < "cat" < "dog" by code point
    assert images.classes == ["Zebra", "cat", "dog"] == classes
    expected = [(path, classes.index(name)) for name in classes for path in sorted(wanted[name])]
    assert [(s.path, s.label) for s in images.samples] == expected
    assert images.root == root and images.kind == "single-label" and len(images) == 10
    assert images.counts() == {"Zebra": 1, "cat": 5, "dog": 4}
    assert all(isinstance(s.label, int) for s in images.samples)


def test_image_folder_accepts_str(tmp_path: Path) -> None:
    _touch(tmp_path / "a/1.png")
    assert [s.path for s in image_folder(str(tmp_path)).samples] == [tmp_path / "a/1.png"]


def test_image_folder_errors(tmp_path: Path) -> None:
    with _raises(f"image folder {tmp_path / 'nope'} not found"):
        image_folder(tmp_path / "nope")
    with _raises("is not a directory"):
        image_folder(_touch(tmp_path / "file.png"))

    flat = tmp_path / "flat"
    _touch(flat / "1.jpg")
    _touch(flat / "2.jpg")
    with _raises("expected ROOT/<class>/<image>, found images directly in ROOT; move them into one folder per class"):
        image_folder(flat)

    bare = tmp_path / "bare"
    _touch(bare / "notes.txt")
    with _raises("no class folders (expected ROOT/<class>/<image>)"):
        image_folder(bare)

    partial = tmp_path / "partial"
    _touch(partial / "a/1.png")
    _touch(partial / "b/readme.txt")
    (partial / "c").mkdir()
    with _raises("class folder(s) with no images: b, c"):
        image_folder(partial)

    nothing = tmp_path / "nothing"
    _touch(nothing / "a/readme.txt")
    (nothing / "b").mkdir()
    with _raises("no images in its 2 class folder(s)"):
        image_folder(nothing)


# ImageList


def test_image_list_subset_counts_and_validation(tmp_path: Path) -> None:
    samples = tuple(Sample(tmp_path / f"{i}.png", i % 3) for i in range(7))
    images = ImageList(tmp_path, ["a", "b", "c"], samples)
    part = images.subset(np.array([5, 0, 3]))
    assert [s.path.name for s in part.samples] == ["5.png", "0.png", "3.png"]
    assert part.classes == images.classes and part.root == images.root and part.kind == "single-label"
    assert images.counts() == {"a": 3, "b": 2, "c": 2}
    assert Sample("x.png", 0).path == Path("x.png")

    targets = (Sample(tmp_path / "1.png", (1, -1)), Sample(tmp_path / "2.png", (1, 0)))
    multi = ImageList(tmp_path, ["a", "b"], targets, "multi-label")
    assert multi.counts() == {"a": 2, "b": 0}

    with _raises("unknown ImageList.kind"):
        ImageList(tmp_path, ["a"], (), "multi")  # type: ignore[arg-type]
    with _raises("expected a class index in 0..K-1"):
        ImageList(tmp_path, ["a"], (Sample(tmp_path / "1.png", 1),))
    with _raises("expected K targets"):
        ImageList(tmp_path, ["a", "b"], (Sample(tmp_path / "1.png", (1,)),), "multi-label")


# builtin_split


def _builtin_tree(root: Path, train: list[str], test: list[str]) -> Path:
    for split, names in (("train", train), ("test", test)):
        for name in names:
            for i in range(2 if split == "train" else 1):
                _png(root / split / name / f"{i:05d}.png")
    (root / "manifest.json").write_text(json.dumps({"classes": train}))
    return root


def test_builtin_split_reads_each_split(tmp_path: Path) -> None:
    root = _builtin_tree(tmp_path / "d", ["emu", "ant"], ["emu", "ant"])
    train, test = builtin_split(root, "train"), builtin_split(root, "test")
    assert train.classes == test.classes == ["ant", "emu"]
    assert [(s.path, s.label) for s in train.samples] == [
        (root / "train/ant/00000.png", 0),
        (root / "train/ant/00001.png", 0),
        (root / "train/emu/00000.png", 1),
        (root / "train/emu/00001.png", 1),
    ]
    assert [s.path for s in test.samples] == [root / "test/ant/00000.png", root / "test/emu/00000.png"]


def test_builtin_split_errors(tmp_path: Path) -> None:
    root = _builtin_tree(tmp_path / "d", ["ant", "emu"], ["ant", "emu", "fox"])
    with _raises("train has classes ['ant', 'emu'] but test has ['ant', 'emu', 'fox']"):
        builtin_split(root, "train")

    classes_only = tmp_path / "classes_only"
    _png(classes_only / "ant/1.png")
    with _raises("expected the layout `sppnet data make` writes (DIR/train/<class>/*.png"):
        builtin_split(classes_only, "train")
    with _raises("but no train or test folder"):
        builtin_split(classes_only, "test")
    with _raises("but it does not exist"):
        builtin_split(tmp_path / "missing", "train")

    good = _builtin_tree(tmp_path / "good", ["ant", "emu"], ["ant", "emu"])
    with _raises("unknown built-in split 'val'"):
        builtin_split(good, "val")
    (good / "manifest.json").write_text(json.dumps({"classes": ["ant", "cow"]}))
    with _raises("manifest.json lists classes ['ant', 'cow'] but the folders are ['ant', 'emu']"):
        builtin_split(good, "train")


def test_builtin_split_reads_what_data_make_writes(tmp_path: Path) -> None:
    manifest = make_classification_dataset(tmp_path / "d", source="shapes", n=40, test_fraction=0.25)
    for split in ("train", "test"):
        images = builtin_split(tmp_path / "d", split)
        assert images.classes == sorted(manifest["classes"])
        assert images.counts() == {name: manifest["counts"][split][name] for name in images.classes}


# VOC 2007


def _voc_target(image: int, klass: int) -> int:
    return (1, -1, 0)[(image + 2 * klass) % 3]


def _voc_tree(tmp_path: Path) -> tuple[Path, list[str]]:
    devkit = tmp_path / "VOCdevkit"
    voc = devkit / "VOC2007"
    ids = ["000005", "000001", "000012"]
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    for c, name in enumerate(VOC_ORDER):
        rows = [f"{image_id} {_voc_target(n, c):2d}\n" for n, image_id in enumerate(ids)]
        if c % 2:
            rows.reverse()  # class files may list the ids in another order
        (main / f"{name}_trainval.txt").write_text("".join(rows))
    for image_id in ids:
        buffer = io.BytesIO()
        Image.fromarray(_rgb(), "RGB").save(buffer, format="JPEG")
        _touch(voc / "JPEGImages" / f"{image_id}.jpg", buffer.getvalue())
    return devkit, ids


def test_voc07_labels_from_either_root(tmp_path: Path) -> None:
    devkit, ids = _voc_tree(tmp_path)
    assert list(VOC_CLASSES) == VOC_ORDER
    for root in (devkit, devkit / "VOC2007"):
        images = voc07_classification(root)
        assert images.kind == "multi-label" and images.classes == VOC_ORDER and images.root == devkit / "VOC2007"
        assert [s.path for s in images.samples] == [devkit / "VOC2007/JPEGImages" / f"{i}.jpg" for i in ids]
        for n, sample in enumerate(images.samples):
            assert sample.label == tuple(_voc_target(n, c) for c in range(20))
        assert 0 in images.samples[0].label and -1 in images.samples[0].label
        assert images.counts() == {
            name: sum(_voc_target(n, c) == 1 for n in range(3)) for c, name in enumerate(VOC_ORDER)
        }
        assert len(load_images(images)[0]) == 3


def test_voc07_errors(tmp_path: Path) -> None:
    devkit, ids = _voc_tree(tmp_path)
    main = devkit / "VOC2007/ImageSets/Main"

    with _raises(f"{main / 'test.txt'} not found"):
        voc07_classification(devkit, "test")
    with _raises(f"expected {tmp_path / 'VOC2007' / 'ImageSets' / 'Main'}"):
        voc07_classification(tmp_path)

    sofa = main / "sofa_trainval.txt"
    original = sofa.read_text()
    sofa.unlink()
    with _raises(f"{sofa} not found"):
        voc07_classification(devkit)

    sofa.write_text(original + "000012\n")
    with _raises(f"{sofa}:4: expected '<image_id> <label>', got '000012'"):
        voc07_classification(devkit)
    sofa.write_text(original.replace(" 1\n", " 2\n", 1))
    with pytest.raises(ValueError, match=re.escape(f"{sofa}:") + r"\d+: label '2' is not 1 \(present\)"):
        voc07_classification(devkit)

    lines = original.splitlines(keepends=True)
    dropped = lines[1].split()[0]
    sofa.write_text(lines[0] + lines[2])
    with _raises(f"{sofa}: image id {dropped} of trainval.txt is missing"):
        voc07_classification(devkit)
    sofa.write_text(original + "009999 1\n")
    with _raises(f"{sofa}:4: image id 009999 is not in trainval.txt"):
        voc07_classification(devkit)
    sofa.write_text(original + lines[0])
    with _raises(f"{sofa}: image id {lines[0].split()[0]} is listed twice"):
        voc07_classification(devkit)
    sofa.write_text(original)

    jpeg = devkit / "VOC2007/JPEGImages" / f"{ids[1]}.jpg"
    jpeg.unlink()
    with _raises(f"1 image(s) listed in {main / 'trainval.txt'} are missing on disk ({jpeg})"):
        voc07_classification(devkit)


# Caltech101


def _caltech_tree(root: Path, sizes: dict[str, int]) -> Path:
    for name, size in sizes.items():
        for i in range(size):
            _touch(root / name / f"image_{i + 1:04d}.jpg", b"x")  # listing never decodes
    return root


def test_caltech101_protocol(tmp_path: Path) -> None:
    root = _caltech_tree(tmp_path / "101_ObjectCategories", {"ant": 40, "Faces": 40, "yak": 40, "BACKGROUND_Google": 9})
    train, test = caltech101_splits(root, seed=3)
    classes = ["Faces", "ant", "yak"]
    assert train.classes == test.classes == classes
    assert train.counts() == dict.fromkeys(classes, 30) and test.counts() == dict.fromkeys(classes, 10)
    assert not {s.path for s in train.samples} & {s.path for s in test.samples}
    for label, name in enumerate(classes):
        mine = [s.path for s in train.samples + test.samples if s.label == label]
        assert sorted(mine) == [root / name / f"image_{i + 1:04d}.jpg" for i in range(40)]
    assert all("BACKGROUND" not in str(s.path) for s in train.samples + test.samples)

    # The documented draw: one Generator(seed), a permutation per sorted class, first n_train train, next n_test test.
    rng = np.random.default_rng(3)
    expected_train, expected_test = [], []
    for name in classes:
        order = rng.permutation(40)
        expected_train += [root / name / f"image_{i + 1:04d}.jpg" for i in sorted(order[:30])]
        expected_test += [root / name / f"image_{i + 1:04d}.jpg" for i in sorted(order[30:80])]
    assert [s.path for s in train.samples] == expected_train and [s.path for s in test.samples] == expected_test

    again = caltech101_splits(root, seed=3)
    assert again[0].samples == train.samples and again[1].samples == test.samples
    other = caltech101_splits(root, seed=4)
    assert other[0].samples != train.samples

    small_train, small_test = caltech101_splits(root, n_train=5, n_test=7)
    assert small_train.counts() == dict.fromkeys(classes, 5) and small_test.counts() == dict.fromkeys(classes, 7)
    with_background = caltech101_splits(root, n_train=5, exclude=())[0]
    assert with_background.classes == ["BACKGROUND_Google", *classes]


def test_caltech101_too_few_images(tmp_path: Path) -> None:
    root = _caltech_tree(tmp_path / "c", {"ant": 40, "bee": 30, "cow": 12, "BACKGROUND_Google": 3})
    with _raises("fewer than n_train + 1 = 31 images: bee (30), cow (12)"):
        caltech101_splits(root)
    with _raises("n_train >= 1 and n_test >= 1"):
        caltech101_splits(root, n_test=0)


# scan / load_images


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _mixed_folder(tmp_path: Path) -> tuple[ImageList, dict[str, np.ndarray], dict[str, str]]:
    """Good and convertible images (with their expected BGR uint8) and bad ones (with a piece of their reason)."""
    folder = tmp_path / "mixed" / "only"
    good: dict[str, np.ndarray] = {}
    bad: dict[str, str] = {}

    rgb = _rgb(4, 7)
    _png(folder / "00_good.png", rgb)
    good["00_good.png"] = rgb[:, :, ::-1]
    _touch(folder / "01_corrupt.png", RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    bad["01_corrupt.png"] = "not an image Pillow can identify"
    whole = _png_bytes(Image.fromarray(_rgb(64, 64), "RGB"))
    _touch(folder / "02_truncated.png", whole[: len(whole) // 2])
    bad["02_truncated.png"] = "truncated or corrupt"
    _touch(folder / "03_empty.png")
    bad["03_empty.png"] = "file is empty"
    _png(folder / "04_one_pixel.png", _rgb(1, 1))
    bad["04_one_pixel.png"] = "smaller than min_side=2"

    grey = RNG.integers(0, 256, (3, 5), dtype=np.uint8)
    Image.fromarray(grey, "L").save(folder / "05_grey.png")
    good["05_grey.png"] = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = RNG.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "06_rgba.png")
    good["06_rgba.png"] = rgba[:, :, 2::-1]  # alpha dropped, not composited
    cmy = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    cmyk = np.concatenate([cmy, np.zeros((4, 4, 1), np.uint8)], axis=2)  # K = 0: RGB = 255 - CMY exactly
    Image.fromarray(cmyk, "CMYK").save(folder / "07_cmyk.tiff")
    good["07_cmyk.tiff"] = (255 - cmy)[:, :, ::-1]
    sixteen = RNG.integers(0, 65536, (3, 4), dtype=np.uint16)
    Image.fromarray(sixteen).save(folder / "08_sixteen.png")
    good["08_sixteen.png"] = np.repeat(np.rint(sixteen / 257.0).astype(np.uint8)[:, :, None], 3, axis=2)
    rgb = _rgb(6, 2)
    _png(folder / "09_good.png", rgb)
    good["09_good.png"] = rgb[:, :, ::-1]
    return image_folder(tmp_path / "mixed"), good, bad


def test_scan_and_load_images_skip_bad_images(tmp_path: Path) -> None:
    images, good, bad = _mixed_folder(tmp_path)
    assert len(images) == 10
    kept, reported = scan(images, min_side=2)
    assert [s.path.name for s in kept.samples] == sorted(good)
    assert kept.classes == images.classes and all(s.label == 0 for s in kept.samples)
    assert [item.path.name for item in reported] == sorted(bad)
    for item in reported:
        assert isinstance(item, BadImage) and item.path == images.root / "only" / item.path.name
        assert bad[item.path.name] in item.reason
        assert str(item) == f"{item.path}: {item.reason}"

    for workers in (1, 3):
        arrays, loaded, reported = load_images(images, min_side=2, workers=workers)
        assert loaded.samples == kept.samples and [b.path.name for b in reported] == sorted(bad)
        assert len(arrays) == len(good)
        for array, name in zip(arrays, sorted(good), strict=True):
            assert array.dtype == np.uint8 and array.shape == good[name].shape
            np.testing.assert_array_equal(array, good[name], err_msg=name)

    kept_one, reported_one = scan(images)  # min_side=1 keeps the one-pixel image
    assert "04_one_pixel.png" in [s.path.name for s in kept_one.samples] and len(reported_one) == 3


def test_scan_and_load_images_error_lists_bad_images(tmp_path: Path) -> None:
    images, _, bad = _mixed_folder(tmp_path)
    for function in (scan, load_images):
        with pytest.raises(ValueError, match=re.escape("4 of 10 images cannot be used")) as caught:
            function(images, min_side=2, on_bad="error")
        for name, reason in bad.items():
            assert f"{images.root / 'only' / name}: " in str(caught.value) and reason in str(caught.value)
    with _raises("unknown on_bad 'ignore'"):
        scan(images, on_bad="ignore")  # type: ignore[arg-type]
    with _raises("workers must be >= 1"):
        load_images(images, workers=0)
