"""`sppnet reproduce`: the paper's classification experiment on the built-in data, then its deployment, as stages.

data -> train -> evaluate -> export -> build -> serve (-> detect), each a function with typed inputs and a typed
result; the report is assembled from those results (the classification tables of `sppnet.reproduce.report`, then
one section per later stage). Finished training runs and detection results are reused, so an interrupted job
continues where it stopped; the cheaper stages run again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sppnet.core.devices import resolve_device
from sppnet.pipeline.build import BuildResult, build_export
from sppnet.pipeline.config import VARIANTS, ReproduceConfig
from sppnet.pipeline.data import DataResult, make_data
from sppnet.pipeline.detect import DetectResult, detection_stage
from sppnet.pipeline.evaluate import EvaluatedRun, evaluate_runs
from sppnet.pipeline.export import ExportResult, export_run
from sppnet.pipeline.serve import ServeResult, held_out_images, serve_check
from sppnet.pipeline.train import train_runs
from sppnet.reproduce.report import write_report


@dataclass(frozen=True)
class JobResult:
    """Every stage's result, the report files and the wall time."""

    data: DataResult
    runs: tuple[EvaluatedRun, ...]
    export: ExportResult
    build: BuildResult
    serve: ServeResult
    detect: DetectResult | None
    report: dict[str, Path]
    seconds: float


def classification_results(
    job: ReproduceConfig, data: DataResult, runs: tuple[EvaluatedRun, ...], seconds: float
) -> dict[str, Any]:
    """The settings, runs and timing the classification report summarises."""
    return {
        "format": 2,
        "settings": {
            "network": job.network,
            "epochs": job.epochs,
            "device": str(resolve_device(job.device)),
            "precision": job.precision,
            "stop": job.plateau.describe() if job.plateau else None,
            "dropout": job.dropout,
            "generation": asdict(job.generation),
            "seeds": list(job.seeds),
            "quick": job.quick,
            "train_sizes": {v: list(job.train_config(v, 0).sizes) for v in VARIANTS},
            "test_sizes": list(job.test_sizes),
            "data": data.to_json(),
            "preprocess": job.preprocess.to_json(),
            "solver": {"base_lr": job.base_lr, "milestones": list(job.milestones), "batch_size": job.batch_size},
        },
        "runs": [run.to_json() for run in runs],
        "timing": {"total_seconds": seconds, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }


def run_job(job: ReproduceConfig, out: str | os.PathLike[str], log: Callable[[str], None] = print) -> JobResult:
    """Run every stage into `out` and write `out/report.md`, `out/report.json` and the plots."""
    out = Path(out)
    began = time.perf_counter()
    data = make_data(job, out, log)
    runs = tuple(evaluate_runs(job, train_runs(job, data, out, log), data, log))
    multi = next(r.run.run_dir for r in runs if r.run.variant == "spp_multi")
    export = export_run(multi, out, parity_sizes=job.parity_sizes, log=log)
    build = build_export(export, out, log)
    serve = serve_check(export.onnx_dir, multi, held_out_images(data.directory, job.serve_images))
    detect = None
    if job.with_detection:
        detect = detection_stage(
            out,
            multi,
            images=job.detection_images,
            source=job.source,
            max_proposals=job.detection_proposals,
            log=log,
        )
    seconds = time.perf_counter() - began
    stages = [export, build, serve, *([detect] if detect else [])]
    extra = {"export": export.to_json(), "engines": build.to_json(), "runtime": serve.to_json()}
    if detect:
        extra["detection"] = detect.to_json()
    paths = write_report(
        classification_results(job, data, runs, seconds),
        out,
        sections=[stage.markdown() for stage in stages],
        extra=extra,
    )
    log(f"report: {paths['markdown']} ({seconds / 60:.1f} min)")
    return JobResult(data, runs, export, build, serve, detect, paths, seconds)
