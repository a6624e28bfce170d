"""`sppnet reproduce` end to end: every stage runs, the report is assembled from their results, finished runs are
reused with the same figures, and an output directory holding another dataset is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sppnet.pipeline.config import VARIANTS
from sppnet.pipeline.job import JobResult, run_job

from .conftest import QUICK


def test_quick_job_trains_every_variant_and_seed_and_writes_the_report(quick_job) -> None:
    out, result, _ = quick_job
    assert sorted((r.run.variant, r.run.seed) for r in result.runs) == sorted((v, s) for v in VARIANTS for s in (0, 1))
    for name in ("report.md", "report.json", "test_sizes.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["quick"] is True and len(summary["effects"]) == 4
    assert {"export", "engines", "runtime"} <= set(summary) and "detection" not in summary


def test_the_report_is_the_classification_report_then_one_section_per_stage(quick_job) -> None:
    out, result, _ = quick_job
    text = (out / "report.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[-3:] == ["## Export", "## Engines", "## Runtime"]
    assert "QUICK MODE" in text and headings.index("## The three effects") < headings.index("## Export")
    for stage in (result.export, result.build, result.serve):
        assert stage.markdown() in text


def test_every_run_is_evaluated_with_crop_10view_and_spp_runs_at_full_image_sizes(quick_job) -> None:
    _, result, _ = quick_job
    for evaluated in result.runs:
        modes = {(e["mode"], e["size"]) for e in evaluated.evals}
        assert {("crop", 112), ("10view", 112)} <= modes
        full = {size for mode, size in modes if mode == "full"}
        assert full == (set() if evaluated.run.variant == "no_spp" else {90, 112, 128, 160})
        assert all(0.0 <= e["top1_err"] <= 1.0 and e["n"] > 0 for e in evaluated.evals)


def test_a_second_call_reuses_finished_runs_and_reports_the_same_figures(quick_job) -> None:
    out, first, _ = quick_job
    before = json.loads((out / "report.json").read_text())
    logged: list[str] = []
    again: JobResult = run_job(QUICK, out, logged.append)
    assert not any(line.startswith("training") for line in logged)
    assert all(r.run.reused for r in again.runs)
    assert [r.evals for r in again.runs] == [r.evals for r in first.runs]
    after = json.loads((out / "report.json").read_text())
    assert after["effects"] == before["effects"] and after["variants"] == before["variants"]


def test_another_dataset_in_the_output_directory_is_refused(quick_job) -> None:
    out, _, _ = quick_job
    with pytest.raises(ValueError, match="holds another dataset"):
        run_job(replace(QUICK, images=300), out, lambda _: None)
