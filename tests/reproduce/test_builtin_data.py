"""The built-in classification datasets: ImageFolder layout, manifest, variety, determinism, provenance, atomicity."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet.reproduce import builtin_data
from sppnet.reproduce.builtin_data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    SHAPE_CLASSES,
    GenerationSettings,
    load_fashion_mnist_split,
    make_classification_dataset,
)

SMALL_N = 60  # 48 train + 12 test: every class in both splits
HAVE_FASHION_MNIST = all(
    (DEFAULT_FASHION_MNIST_DIR / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair
)
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist provides the idx files"
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    make_classification_dataset(out, source="shapes", n=150, seed=3)
    return out


def png_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def read_idx_labels(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    return np.frombuffer(data, dtype=np.uint8, offset=8)


def test_manifest_counts_equal_the_files_on_disk_and_every_class_is_in_both_splits(shapes: Path) -> None:
    manifest = json.loads((shapes / "manifest.json").read_text())
    assert manifest["format_version"] == builtin_data.FORMAT_VERSION
    assert manifest["seed"] == 3 and manifest["source"] == {"name": "shapes"}
    assert manifest["classes"] == list(SHAPE_CLASSES)
    assert sorted(p.name for p in shapes.iterdir()) == ["manifest.json", "test", "train"]
    for split in ("train", "test"):
        assert sorted(p.name for p in (shapes / split).iterdir()) == sorted(SHAPE_CLASSES)
        on_disk = {name: len(list((shapes / split / name).glob("*.png"))) for name in SHAPE_CLASSES}
        assert manifest["counts"][split] == on_disk
        assert min(on_disk.values()) >= 1
    assert sum(sum(c.values()) for c in manifest["counts"].values()) == len(png_files(shapes)) == 150
    assert manifest["counts"]["test"] == dict.fromkeys(SHAPE_CLASSES, 3)  # round(150 * 0.2) = 30, balanced
    assert sorted(r["path"] for r in manifest["images"]) == [
        p.relative_to(shapes).as_posix() for p in png_files(shapes)
    ]


def test_images_are_rgb_pngs_within_the_documented_sizes(shapes: Path) -> None:
    settings = GenerationSettings()
    low, high = settings.short_side
    manifest = json.loads((shapes / "manifest.json").read_text())
    for record in manifest["images"]:
        with Image.open(shapes / record["path"]) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            width, height = image.size
        assert (height, width) == (record["height"], record["width"])
        assert low <= min(height, width) <= high
        assert max(height, width) <= round(high * settings.aspect[1])
        assert settings.aspect[0] <= width / height <= settings.aspect[1]
        x, y, side = record["box"]
        assert 0 <= x <= width - side and 0 <= y <= height - side
        assert settings.object_scale[0] <= side / min(height, width) <= settings.object_scale[1]
        assert record["object_scale"] == pytest.approx(side / min(height, width), abs=1e-6)
        assert record["class"] == SHAPE_CLASSES[record["label"]] and record["path"].split("/")[1] == record["class"]


def test_size_distribution_in_the_manifest_equals_one_computed_from_the_files(shapes: Path) -> None:
    manifest = json.loads((shapes / "manifest.json").read_text())
    sizes = {}
    for path in png_files(shapes):
        with Image.open(path) as image:
            sizes[path.relative_to(shapes).as_posix()] = image.size
    widths = np.array([w for w, _ in sizes.values()], dtype=float)
    heights = np.array([h for _, h in sizes.values()], dtype=float)
    scales = [r["box"][2] / min(sizes[r["path"]]) for r in manifest["images"]]
    expected = {"height": heights, "width": widths, "aspect": widths / heights, "object_scale": np.array(scales)}
    for key, values in expected.items():
        stats = manifest["size_distribution"][key]
        assert stats["min"] == pytest.approx(values.min(), abs=1e-6), key
        assert stats["median"] == pytest.approx(np.median(values), abs=1e-6), key
        assert stats["max"] == pytest.approx(values.max(), abs=1e-6), key


def test_aspect_ratios_and_object_scales_actually_spread(shapes: Path) -> None:
    records = json.loads((shapes / "manifest.json").read_text())["images"]
    aspects = [r["width"] / r["height"] for r in records]
    scales = [r["object_scale"] for r in records]
    assert sum(a < 0.8 for a in aspects) >= 20 and sum(a > 1.25 for a in aspects) >= 20  # portrait and landscape
    assert max(scales) / min(scales) >= 3
    assert len({min(r["height"], r["width"]) for r in records}) >= 40
    # The object is not always in the same place: its centre covers both halves of the image in both axes.
    centres = [((x + s / 2) / r["width"], (y + s / 2) / r["height"]) for r in records for x, y, s in [r["box"]]]
    assert {cx < 0.5 for cx, _ in centres} == {True, False} and {cy < 0.5 for _, cy in centres} == {True, False}


def test_same_seed_gives_a_byte_identical_tree_whatever_the_thread_count(tmp_path: Path) -> None:
    make_classification_dataset(tmp_path / "a", source="shapes", n=SMALL_N, seed=7, workers=1)
    make_classification_dataset(tmp_path / "b", source="shapes", n=SMALL_N, seed=7, workers=3)
    make_classification_dataset(tmp_path / "c", source="shapes", n=SMALL_N, seed=8)
    a, b, c = (tree_hashes(tmp_path / name) for name in "abc")
    assert len(a) == SMALL_N + 1 and a == b
    assert a.keys() == c.keys()
    differing = [path for path in a if a[path] != c[path]]
    assert len(differing) == len(a)  # every image and the manifest (its seed) change


@needs_fashion_mnist
def test_fashion_mnist_train_images_come_from_idx_train_items_and_test_from_t10k(tmp_path: Path) -> None:
    manifest = make_classification_dataset(tmp_path / "fm", source="fashion-mnist", n=SMALL_N, seed=1)
    assert manifest["classes"] == list(FASHION_MNIST_CLASSES)
    files = manifest["source"]["files"]
    for pair in FASHION_MNIST_FILES.values():
        for name in pair:
            path = DEFAULT_FASHION_MNIST_DIR / name
            assert files[name] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    labels = {
        split: read_idx_labels(DEFAULT_FASHION_MNIST_DIR / pair[1]) for split, pair in FASHION_MNIST_FILES.items()
    }
    assert (len(labels["train"]), len(labels["test"])) == (60_000, 10_000)
    seen: dict[str, list[int]] = {"train": [], "test": []}
    for record in manifest["images"]:
        item = record["item"]
        assert 0 <= item < len(labels[record["split"]])
        # The image's class is the label of its item in its own split's file; drawing from the other file
        # would break this for about 9 in 10 images.
        assert labels[record["split"]][item] == record["label"]
        seen[record["split"]].append(item)
    assert all(len(items) == len(set(items)) for items in seen.values())  # no item used twice within a split
    assert sorted(p.name for p in (tmp_path / "fm" / "train").iterdir()) == sorted(FASHION_MNIST_CLASSES)


@needs_fashion_mnist
def test_fashion_mnist_reads_an_explicit_directory_and_is_deterministic(tmp_path: Path) -> None:
    make_classification_dataset(tmp_path / "a", n=SMALL_N, fashion_mnist_dir=DEFAULT_FASHION_MNIST_DIR)
    make_classification_dataset(tmp_path / "b", n=SMALL_N)
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    t10k = load_fashion_mnist_split(DEFAULT_FASHION_MNIST_DIR, "t10k")
    test = load_fashion_mnist_split(DEFAULT_FASHION_MNIST_DIR, "test")
    assert t10k.images.shape == (10_000, 28, 28) and np.array_equal(t10k.labels, test.labels)


def test_a_missing_fashion_mnist_directory_gives_a_one_line_error_naming_the_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ValueError) as error:
        make_classification_dataset(tmp_path / "out", source="fashion-mnist", n=SMALL_N, fashion_mnist_dir=missing)
    message = str(error.value)
    assert "\n" not in message and str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message and "--fashion-mnist-dir" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_malformed_idx_file_gives_a_one_line_error_naming_it(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    for pair in FASHION_MNIST_FILES.values():
        for name in pair:
            (fake / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 8))  # labels magic everywhere
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz has idx magic 2049, expected 2051") as error:
        make_classification_dataset(tmp_path / "out", n=SMALL_N, fashion_mnist_dir=fake)
    assert "\n" not in str(error.value) and "--fashion-mnist-dir" in str(error.value)
    (fake / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not valid gzip"):
        make_classification_dataset(tmp_path / "out", n=SMALL_N, fashion_mnist_dir=fake)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "cifar"}, r"unknown dataset source 'cifar': choose one of fashion-mnist, shapes"),
        ({"n": 40}, r"n=40 .* 32 train and 8 test .* use n >= 48"),
        ({"n": 10, "test_fraction": 0.5}, r"too few for one per class"),
        ({"test_fraction": 0.0}, r"test_fraction must lie strictly between 0 and 1"),
        ({"test_fraction": 1.0}, r"test_fraction must lie strictly between 0 and 1"),
        ({"n": 60.0}, r"n must be an integer"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
        ({"workers": 0}, r"workers must be >= 1"),
    ],
)
def test_bad_arguments_raise_a_clear_value_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_classification_dataset(tmp_path / "out", **{"source": "shapes", "n": SMALL_N, **kwargs})
    assert not (tmp_path / "out").exists()


def test_bad_settings_raise_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="object_scale must be 0 < low <= high <= 1"):
        GenerationSettings(object_scale=(0.2, 1.5))
    with pytest.raises(ValueError, match="short_side must be 16 <= low <= high"):
        GenerationSettings(short_side=(100, 64))


def test_an_existing_non_empty_out_is_refused_and_left_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=rf"{out} already exists and is not empty: choose another --out or remove"):
        make_classification_dataset(out, source="shapes", n=SMALL_N)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_existing_empty_out_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    make_classification_dataset(out, source="shapes", n=SMALL_N)
    assert len(png_files(out)) == SMALL_N and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_midway_leaves_no_out_and_no_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    written: list[Path] = []
    real_save = builtin_data.save_png

    def failing_save(path: Path, image: np.ndarray, compress_level: int) -> None:
        if len(written) >= 10:
            raise KeyboardInterrupt  # an interruption, not just an error
        real_save(path, image, compress_level)
        written.append(path)

    monkeypatch.setattr(builtin_data, "save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_classification_dataset(tmp_path / "out", source="shapes", n=SMALL_N, workers=workers)
    assert len(written) >= 10 and all(".tmp-" in path.as_posix() for path in written)
    assert list(tmp_path.iterdir()) == []


def test_a_plain_error_midway_also_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(path: Path, image: np.ndarray, compress_level: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(builtin_data, "save_png", full_disk)
    with pytest.raises(OSError, match="disk full"):
        make_classification_dataset(tmp_path / "out", source="shapes", n=SMALL_N)
    assert list(tmp_path.iterdir()) == []
