"""Each stage of the main job on its own: typed results, what each reuses, and what each does when it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppnet.core.errors import BuildError
from sppnet.core.manifest import read_engine_manifest, read_export_manifest
from sppnet.pipeline import build as build_stage
from sppnet.pipeline.config import ReproduceConfig
from sppnet.pipeline.data import make_data
from sppnet.pipeline.evaluate import evaluation_plan, sizes_plan, spread_subset
from sppnet.pipeline.serve import held_out_images, serve_check

from .conftest import QUICK


def test_data_is_made_once_then_reused_and_another_dataset_is_refused(tmp_path: Path) -> None:
    job = ReproduceConfig.quick_run(source="shapes", images=60, test_images=20)
    logged: list[str] = []
    first = make_data(job, tmp_path, logged.append)
    assert any(line.startswith("making the built-in dataset") for line in logged)
    logged.clear()
    again = make_data(job, tmp_path, logged.append)
    assert not logged and again.to_json() == first.to_json()
    assert len(first.decoded.train_images) + len(first.decoded.test_images) == 60
    with pytest.raises(ValueError, match="holds another dataset"):
        make_data(ReproduceConfig.quick_run(source="shapes", images=80, test_images=20), tmp_path, logged.append)


def test_every_test_image_gets_crop_10view_and_the_full_image_and_a_subset_the_other_sizes() -> None:
    job = ReproduceConfig(test_sizes=(90, 160), test_sizes_subset=4)
    short = job.preprocess.short_side
    assert evaluation_plan(job, "no_spp") == [("crop", None), ("10view", None)]
    assert evaluation_plan(job, "spp_multi") == [("crop", None), ("10view", None), ("full", short)]
    assert sizes_plan(job, "spp_multi") == [("full", 90), ("full", 160)] and sizes_plan(job, "no_spp") == []
    assert spread_subset(10, 4).tolist() == [0, 3, 6, 9] and spread_subset(10, 0).tolist() == list(range(10))


def test_a_dataset_too_small_for_its_test_and_validation_splits_is_refused() -> None:
    with pytest.raises(ValueError, match="raise --images or lower --test-images"):
        ReproduceConfig(images=6000, test_images=5000, val_images=1000)


def test_the_export_stage_lists_every_file_with_its_agreement(quick_job) -> None:
    _, result, _ = quick_job
    export = result.export
    files = {f.file for f in read_export_manifest(export.onnx_dir).files}
    assert {row["file"] for row in export.parity} == files == {f.file for f in export.files}
    assert export.ok and all(row["sizes"] >= 1 for row in export.parity)
    assert export.run_dir.name == "spp_multi-seed0"


def test_the_build_stage_builds_every_export_file_with_the_installed_builder(quick_job) -> None:
    _, result, _ = quick_job
    build = result.build
    assert build.engine_dir is not None and build.builder is not None and build.builder.startswith("tensorrt")
    built = read_engine_manifest(build.engine_dir)
    assert {f.source_file for f in built.files} == {f.file for f in result.export.files}
    assert "| engine |" in build.markdown() and build.to_json()["built"] is True


def test_without_a_builder_the_build_stage_says_why_and_the_job_goes_on(quick_job, monkeypatch, tmp_path) -> None:
    _, result, _ = quick_job

    def no_builder() -> None:
        raise BuildError("no TensorRT builder could be imported: install tensorrt-rtx-cu13")

    monkeypatch.setattr(build_stage, "load_backend", no_builder)
    logged: list[str] = []
    skipped = build_stage.build_export(result.export, tmp_path, logged.append)
    assert skipped.engine_dir is None and not (tmp_path / "engines").exists()
    assert "tensorrt-rtx-cu13" in skipped.markdown() and skipped.to_json() == {"built": False, "reason": skipped.reason}
    assert any("engines not built" in line for line in logged)


def test_the_serve_stage_serves_held_out_images_that_agree_with_pytorch(quick_job) -> None:
    _, result, _ = quick_job
    served = result.serve
    assert served.images == QUICK.serve_images and len(served.policies) == 2
    for policy in served.policies:
        assert not policy.errors and sum(policy.routes.values()) == served.images
        assert policy.agreement["top1_agree"] == 1.0 and policy.agreement["max_rel"] < 1e-4
    assert served.bench["images"] > 0 and served.bench["dispatcher_s"] > 0


def test_held_out_images_come_from_every_class_in_a_reproducible_order(quick_job) -> None:
    out, _, _ = quick_job
    classes = sorted(p.name for p in (out / "data" / "test").iterdir() if p.is_dir())
    images = held_out_images(out / "data", 2 * len(classes))
    assert {p.parent.name for p in images} == set(classes)
    assert images == held_out_images(out / "data", 2 * len(classes)) and len(set(images)) == len(images)


def test_serve_check_refuses_a_directory_that_is_not_a_model_directory(quick_job, tmp_path) -> None:
    out, result, _ = quick_job
    with pytest.raises(ValueError, match="is not an engine directory"):
        serve_check(tmp_path, result.export.run_dir, held_out_images(out / "data", 2), bench_images=6)
