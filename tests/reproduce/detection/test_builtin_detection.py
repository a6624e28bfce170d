"""The built-in detection dataset: VOC layout, boxes that tightly bound the drawn objects, splits, determinism."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet.reproduce.builtin_data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    SHAPE_CLASSES,
    _shape_mask,
)
from sppnet.reproduce.detection import builtin_detection
from sppnet.reproduce.detection.builtin_detection import DetectionSettings, Scene, make_detection_dataset
from sppnet.reproduce.detection.voc import load_voc_detection, parse_annotation

N, SEED = 20, 7
SPLITS = ("train", "val", "test")
HAVE_FASHION_MNIST = all(
    (DEFAULT_FASHION_MNIST_DIR / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, Scene]]:
    """A small shapes dataset and every scene drawn for it, keyed by its pixels."""
    scenes: dict[bytes, Scene] = {}
    real = builtin_detection.render_scene

    def spy(*args, **kwargs) -> Scene:
        scene = real(*args, **kwargs)
        scenes[scene.image.tobytes()] = scene
        return scene

    out = tmp_path_factory.mktemp("detection") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtin_detection, "render_scene", spy)
        make_detection_dataset(out, source="shapes", n=N, seed=SEED, workers=2)
    return out, scenes


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def read_ids(voc: Path, split: str) -> list[str]:
    return (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def test_voc_layout_is_complete(generated: tuple[Path, dict[bytes, Scene]]) -> None:
    out, _ = generated
    voc = out / "VOC2007"
    assert sorted(p.name for p in out.iterdir()) == ["VOC2007", "manifest.json"]
    ids = [f"{i:06d}" for i in range(1, N + 1)]
    assert sorted(p.name for p in (voc / "JPEGImages").iterdir()) == [f"{i}.png" for i in ids]
    assert sorted(p.name for p in (voc / "Annotations").iterdir()) == [f"{i}.xml" for i in ids]
    assert sorted(p.name for p in (voc / "ImageSets" / "Main").iterdir()) == [
        f"{s}.txt" for s in ("test", "train", "trainval", "val")
    ]
    for split in (*SPLITS, "trainval"):
        images, problems = load_voc_detection(out, split, SHAPE_CLASSES)
        assert problems == [] and [image.image_id for image in images] == read_ids(voc, split)


def test_splits_are_disjoint_cover_every_image_and_match_the_manifest(
    generated: tuple[Path, dict[bytes, Scene]],
) -> None:
    out, _ = generated
    voc = out / "VOC2007"
    lists = {split: read_ids(voc, split) for split in SPLITS}
    assert [len(lists[s]) for s in SPLITS] == [10, 4, 6]
    every = [i for ids in lists.values() for i in ids]
    assert sorted(every) == [f"{i:06d}" for i in range(1, N + 1)] and len(set(every)) == N
    assert read_ids(voc, "trainval") == sorted(lists["train"] + lists["val"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"name": "shapes"} and manifest["seed"] == SEED and manifest["n"] == N
    assert manifest["classes"] == list(SHAPE_CLASSES)
    assert manifest["settings"] == json.loads(json.dumps(asdict(DetectionSettings())))
    for split in SPLITS:
        images, _ = load_voc_detection(out, split, SHAPE_CLASSES)
        counts = manifest["counts"][split]
        assert counts["images"] == len(images) and counts["objects"] == sum(len(image) for image in images)
        labels = np.concatenate([image.labels for image in images])
        assert counts["per_class"] == {name: int((labels == c).sum()) for c, name in enumerate(SHAPE_CLASSES, 1)}


def test_annotations_are_the_tight_boxes_of_the_drawn_objects(generated: tuple[Path, dict[bytes, Scene]]) -> None:
    out, scenes = generated
    touching_edge = 0
    for xml in sorted((out / "VOC2007" / "Annotations").iterdir()):
        image, problems = parse_annotation(xml, SHAPE_CLASSES)
        assert problems == []
        pixels = np.asarray(Image.open(image.path).convert("RGB"))
        assert pixels.shape == (image.height, image.width, 3)
        scene = scenes[pixels.tobytes()]  # the file holds exactly the drawn image
        assert 1 <= len(image) <= 4 and ((image.labels >= 1) & (image.labels <= len(SHAPE_CLASSES))).all()
        assert not image.difficult.any()
        np.testing.assert_array_equal(image.boxes, scene.boxes)
        changed = (pixels != scene.clutter).any(axis=2)
        assert not (changed & ~scene.masks.any(axis=0)).any(), "pixels changed outside every object"
        for (x1, y1, x2, y2), mask in zip(image.boxes.astype(int), scene.masks, strict=True):
            rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert (x1, y1, x2, y2) == (columns[0], rows[0], columns[-1], rows[-1])
            assert changed[mask].mean() > 0.9
            touching_edge += x1 == 0 or y1 == 0 or x2 == image.width - 1 or y2 == image.height - 1
        assert 160 <= min(image.height, image.width) <= 320
    assert touching_edge > 0


def test_objects_with_no_overlap_allowed_have_disjoint_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        objects = [_shape_mask(name, rng) for name in ("square", "circle", "star", "cross")]
        scene = builtin_detection.render_scene(objects, rng, DetectionSettings(max_overlap=0.0))
        assert len(scene.boxes) == len(scene.masks) == len(scene.placed) >= 1
        for i in range(len(scene.boxes)):
            for j in range(i):
                a, b = scene.boxes[i], scene.boxes[j]
                assert a[0] > b[2] or b[0] > a[2] or a[1] > b[3] or b[1] > a[3]


def test_same_seed_same_bytes_other_seed_other_bytes(
    generated: tuple[Path, dict[bytes, Scene]], tmp_path: Path
) -> None:
    out, _ = generated
    make_detection_dataset(tmp_path / "again", source="shapes", n=N, seed=SEED, workers=1)
    assert tree_hashes(tmp_path / "again") == tree_hashes(out)
    make_detection_dataset(tmp_path / "other", source="shapes", n=N, seed=SEED + 1, workers=1)
    other, ours = tree_hashes(tmp_path / "other"), tree_hashes(out)
    assert all(other[name] != ours[name] for name in ours if name.startswith("VOC2007/JPEGImages/"))


def test_manifest_is_written_last(generated: tuple[Path, dict[bytes, Scene]], tmp_path: Path) -> None:
    out, _ = generated
    manifest_time = (out / "manifest.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= manifest_time for p in out.rglob("*") if p.is_file())

    calls: list[int] = []
    real = builtin_detection.write_annotation

    def failing(*args, **kwargs) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtin_detection, "write_annotation", failing)
        with pytest.raises(OSError, match="disk full"):
            make_detection_dataset(tmp_path / "broken", source="shapes", n=6, seed=0, workers=1)
    assert not (tmp_path / "broken" / "manifest.json").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_detection_dataset(taken, source="shapes", n=6)
    with pytest.raises(ValueError, match="unknown dataset source"):
        make_detection_dataset(tmp_path / "a", source="mnist", n=6)
    with pytest.raises(ValueError, match="sum to 1"):
        make_detection_dataset(tmp_path / "b", source="shapes", n=6, splits=(("train", 0.5), ("test", 0.4)))
    with pytest.raises(ValueError, match="trainval"):
        make_detection_dataset(tmp_path / "c", source="shapes", n=6, splits=(("trainval", 0.5), ("test", 0.5)))
    with pytest.raises(ValueError, match="without images"):
        make_detection_dataset(
            tmp_path / "d", source="shapes", n=3, splits=(("train", 0.9), ("val", 0.05), ("test", 0.05))
        )
    with pytest.raises(ValueError, match="objects"):
        DetectionSettings(objects=(0, 2))


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist provides the idx files")
def test_fashion_mnist_source_names_its_classes_and_files(tmp_path: Path) -> None:
    manifest = make_detection_dataset(tmp_path / "fm", n=4, seed=1, splits=(("train", 0.5), ("test", 0.5)))
    assert manifest["classes"] == list(FASHION_MNIST_CLASSES)
    assert set(manifest["source"]["files"]) == {name for pair in FASHION_MNIST_FILES.values() for name in pair}
    images, problems = load_voc_detection(tmp_path / "fm", "trainval", FASHION_MNIST_CLASSES)
    assert problems == [] and len(images) == 2 and all(len(image) >= 1 for image in images)
