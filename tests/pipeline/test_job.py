"""`sppnet reproduce`: the whole experiment runs end to end, writes the report, and reuses finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sppnet.pipeline.job import VARIANTS, ReproduceConfig, reproduce


@pytest.fixture(scope="module")
def quick_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    out = tmp_path_factory.mktemp("job")
    logged: list[str] = []
    results = reproduce(ReproduceConfig.quick_run(source="shapes", images=200, seeds=(0, 1)), out, logged.append)
    return out, results, logged


def test_quick_job_trains_every_variant_and_seed_and_writes_the_report(quick_job: tuple[Path, dict, list[str]]) -> None:
    out, results, _ = quick_job
    assert sorted((r["variant"], r["seed"]) for r in results["runs"]) == sorted(
        (v, s) for v in VARIANTS for s in (0, 1)
    )
    for name in ("report.md", "report.json", "test_sizes.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["quick"] is True and len(summary["effects"]) == 4
    assert "QUICK MODE" in (out / "report.md").read_text()


def test_every_run_is_evaluated_with_crop_10view_and_spp_runs_at_full_image_sizes(
    quick_job: tuple[Path, dict, list[str]],
) -> None:
    _, results, _ = quick_job
    for run in results["runs"]:
        modes = {(e["mode"], e["size"]) for e in run["eval"]}
        assert {("crop", 112), ("10view", 112)} <= modes
        full = {size for mode, size in modes if mode == "full"}
        assert full == (set() if run["variant"] == "no_spp" else {90, 112, 128, 160})
        assert all(0.0 <= e["top1_err"] <= 1.0 and e["n"] > 0 for e in run["eval"])


def test_a_second_call_reuses_finished_runs(quick_job: tuple[Path, dict, list[str]]) -> None:
    out, first, _ = quick_job
    logged: list[str] = []
    again = reproduce(ReproduceConfig.quick_run(source="shapes", images=200, seeds=(0, 1)), out, logged.append)
    assert not any(line.startswith("training") for line in logged)
    assert [r["eval"] for r in again["runs"]] == [r["eval"] for r in first["runs"]]


def test_another_dataset_in_the_output_directory_is_refused(quick_job: tuple[Path, dict, list[str]]) -> None:
    out, _, _ = quick_job
    with pytest.raises(ValueError, match="holds another dataset"):
        reproduce(ReproduceConfig.quick_run(source="shapes", images=300), out, lambda _: None)
