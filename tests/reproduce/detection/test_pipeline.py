"""The detection pipeline end to end on a small built-in detection set: every mode and column gives an mAP, images
without objects or proposals do not stop it, trained detectors survive a round trip through disk, and the CLI's
data make / detect train / test / image / bench detect work as a user runs them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import sppnet.reproduce.detection.pipeline as pipeline
from sppnet.cli import main
from sppnet.core.runs import load_model, load_preprocess
from sppnet.reproduce.detection.builtin_detection import make_detection_dataset
from sppnet.reproduce.detection.detector_io import config_from_json, load_detectors, save_detectors
from sppnet.reproduce.detection.pipeline import (
    COLUMNS,
    DetectConfig,
    detect,
    extract,
    format_table,
    read_split,
    run_detection,
    train_mode,
)
from sppnet.reproduce.detection.proposals import ProposalCache, ProposalSettings
from sppnet.reproduce.detection.voc import DetImage

# A quarter of the paper's pixel geometry (scales 120..300): small and fast; the geometry is tested elsewhere.
CONFIG = DetectConfig.for_input_size(
    56, proposals=ProposalSettings(max_proposals=40), finetune_epochs=2.0, finetune_lr=1e-3, bootstrap=5
)


@pytest.fixture(scope="module")
def det_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("det") / "data"
    manifest = make_detection_dataset(out, source="shapes", n=18, seed=2)
    return out, manifest["classes"]


def test_every_mode_and_column_gives_an_map_and_the_table_has_the_papers_layout(
    det_data: tuple[Path, list[str]], trained_run: Path, tmp_path: Path
) -> None:
    data, classes = det_data
    splits = {s: read_split(data, s, classes) for s in ("train", "val", "test")}
    model, pre = load_model(trained_run), load_preprocess(trained_run)
    results = run_detection(
        model, pre, splits, classes, ProposalCache(tmp_path / "p"), CONFIG, modes=("spp-1", "spp-5", "rcnn"), log=print
    )
    for mode in ("spp-1", "spp-5", "rcnn"):
        row = results["modes"][mode]
        assert set(row["columns"]) == set(COLUMNS)
        for column in row["columns"].values():
            assert 0.0 <= column["mAP_11point"] <= 1.0 and 0.0 <= column["mAP_all_point"] <= 1.0
            assert not math.isnan(column["bootstrap_std"])
        assert row["test_images"] == len(splits["test"]) and row["finetune"]["iterations"] >= 1
    table = format_table(results).splitlines()
    assert table[0] == "| method | pool5 | fc7 | ftfc7 | ftfc7 bb |"
    assert [line.split("|")[1].strip() for line in table[2:]] == ["SPP (1 scale)", "SPP (5 scales)", "R-CNN mode"]


def test_images_without_objects_or_proposals_are_handled(
    det_data: tuple[Path, list[str]], trained_run: Path, tmp_path: Path
) -> None:
    data, classes = det_data
    splits = {s: read_split(data, s, classes) for s in ("train", "val", "test")}
    first = splits["train"][0]
    splits["train"][0] = DetImage(first.image_id, first.path, first.width, first.height, [], [], [])  # no objects
    model, pre = load_model(trained_run), load_preprocess(trained_run)
    cache = ProposalCache(tmp_path / "p")
    proposals = {s: pipeline.load_proposals(images, cache, CONFIG.proposals) for s, images in splits.items()}
    proposals["train"][1] = np.zeros((0, 4))  # selective search found nothing: ground truth windows only
    detectors, _ = train_mode(model, pre, splits, proposals, "spp-1", len(classes), CONFIG)
    test_proposals = [np.zeros((0, 4)), *proposals["test"][1:]]
    split = extract(model, pre, splits["test"], test_proposals, "spp-1", CONFIG, with_gt=False)
    per_class = detect(detectors[-1], split, len(classes), CONFIG)
    assert all(d[0] != 0 for detections in per_class for d in detections)  # nothing on the image without windows


def test_trained_detectors_round_trip_through_disk(
    det_data: tuple[Path, list[str]], trained_run: Path, tmp_path: Path
) -> None:
    data, classes = det_data
    splits = {s: read_split(data, s, classes) for s in ("train", "val", "test")}
    model, pre = load_model(trained_run), load_preprocess(trained_run)
    cache = ProposalCache(tmp_path / "p")
    proposals = {s: pipeline.load_proposals(images, cache, CONFIG.proposals) for s, images in splits.items()}
    detectors, info = train_mode(model, pre, splits, proposals, "spp-1", len(classes), CONFIG)
    save_detectors(tmp_path / "det", trained_run, "spp-1", classes, CONFIG, detectors, info)
    loaded_info, model2, pre2, loaded = load_detectors(tmp_path / "det")
    assert config_from_json(loaded_info["config"]) == CONFIG
    test = extract(model2, pre2, splits["test"], proposals["test"], "spp-1", CONFIG, with_gt=False)
    for a, b in zip(detectors, loaded, strict=True):
        assert a.column == b.column
        got, want = detect(b, test, len(classes), CONFIG), detect(a, test, len(classes), CONFIG)
        for x, y in zip(got, want, strict=True):
            assert [(i, round(s, 4)) for i, s, _ in x] == [(i, round(s, 4)) for i, s, _ in y]
    (tmp_path / "det" / "pool5.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"does not match .* retrain it with `sppnet detect train`"):
        load_detectors(tmp_path / "det")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_detection_commands_work_as_a_user_runs_them(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path: Path
) -> None:
    data, out = tmp_path / "data", tmp_path / "detector"
    code, text, err = run(capsys, "data", "make", "--task", "detection", "--source", "shapes", "--n", "12",
                          "--out", str(data))  # fmt: skip
    assert code == 0 and "VOC layout, 12 images" in text, err
    code, text, err = run(capsys, "detect", "train", "--data", str(data), "--checkpoint", str(trained_run),
                          "--out", str(out), "--max-proposals", "30", "--epochs", "1")  # fmt: skip
    assert code == 0 and (out / "detector.json").is_file(), err
    code, text, err = run(capsys, "detect", "test", "--detector", str(out), "--data", str(data), "--json")
    report = json.loads(text)
    assert code == 0 and set(report["columns"]) == set(COLUMNS), err
    image = sorted((data / "VOC2007" / "JPEGImages").iterdir())[0]
    code, text, err = run(capsys, "detect", "image", str(image), "--detector", str(out), "--threshold", "-10", "--json")
    assert code == 0, err
    for line in text.splitlines():
        record = json.loads(line)
        assert record["class"] in report["columns"]["pool5"]["ap_11point"] and len(record["box"]) == 4
    code, text, err = run(capsys, "bench", "detect", str(image), "--checkpoint", str(trained_run),
                          "--max-proposals", "50", "--repeats", "1", "--json")  # fmt: skip
    rows = {r["mode"]: r for r in json.loads(text)}
    assert code == 0 and set(rows) == {"spp-1", "spp-5", "rcnn"} and all(r["windows"] == 50 for r in rows.values())
    code, _, err = run(capsys, "detect", "test", "--detector", str(tmp_path / "none"), "--data", str(data))
    assert code == 2 and "no detector description" in err and "sppnet detect train" in err
