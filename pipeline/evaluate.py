"""Stage 3, evaluate: every run with 1 crop, 10 views and the full image at the job's test sizes (PAPER.md 5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sppnet.core.devices import resolve_device
from sppnet.core.runs import load_model
from sppnet.pipeline.config import ReproduceConfig
from sppnet.pipeline.data import DataResult
from sppnet.pipeline.train import TrainedRun
from sppnet.reproduce.evaluate import EvalResult, evaluate_many


@dataclass(frozen=True)
class EvaluatedRun:
    """A run and its errors per protocol: (mode, size, n, top1_err, top5_err) records."""

    run: TrainedRun
    evals: tuple[dict[str, Any], ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The run as the classification report reads it (`sppnet.reproduce.report.summarise`)."""
        return {
            "variant": self.run.variant,
            "seed": self.run.seed,
            "run_dir": str(self.run.run_dir),
            "train_seconds": self.run.train_seconds,
            "history": list(self.run.history),
            "eval": list(self.evals),
            "stopped": self.run.stopped,
            "wall_seconds": self.seconds,
        }


def evaluation_plan(job: ReproduceConfig, variant: str) -> list[tuple[str, int | None]]:
    """The protocols a variant is tested with on every test image: 1 crop, 10 views and (SPP) the full image at
    Table 3's short side; the no-SPP baseline has no full-image test (one input size)."""
    plan: list[tuple[str, int | None]] = [("crop", None), ("10view", None)]
    if variant != "no_spp":
        plan.append(("full", job.preprocess.short_side))
    return plan


def sizes_plan(job: ReproduceConfig, variant: str) -> list[tuple[str, int | None]]:
    """The full-image tests at the other test sizes (the size curve), run on `test_sizes_subset` test images."""
    if variant == "no_spp":
        return []
    return [("full", size) for size in sorted(set(job.test_sizes) - {job.preprocess.short_side})]


def spread_subset(count: int, wanted: int) -> np.ndarray:
    """Indices of `wanted` images spread evenly over the class-ordered list (all when `wanted` is 0 or >= `count`)."""
    if not 0 < wanted < count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(int))


def evaluate_runs(
    job: ReproduceConfig, runs: list[TrainedRun], data: DataResult, log: Callable[[str], None]
) -> list[EvaluatedRun]:
    """Each run's errors on the held-out test split."""
    evaluated = []
    for run in runs:
        began = time.perf_counter()
        model = load_model(run.run_dir).to(resolve_device(job.device), memory_format=torch.channels_last)
        images, labels = data.decoded.test_images, data.decoded.test_labels
        plan = evaluation_plan(job, run.variant)
        results = evaluate_many(model, images, labels, job.preprocess, plan, keep_predictions=True)
        records = [_record(r, labels) for r in results]
        subset = spread_subset(len(images), job.test_sizes_subset)
        sizes = sizes_plan(job, run.variant)
        if sizes:
            sub_images, sub_labels = [images[i] for i in subset], labels[subset]
            results = evaluate_many(model, sub_images, sub_labels, job.preprocess, sizes, keep_predictions=True)
            records += [_record(r, sub_labels) for r in results]
        evaluated.append(EvaluatedRun(run, tuple(records), time.perf_counter() - began))
        log(f"evaluated {run.variant}, seed {run.seed}: " + ", ".join(_short(r) for r in records))
    return evaluated


def _record(result: EvalResult, labels: np.ndarray) -> dict[str, Any]:
    """One protocol's errors, with each test image's top-1 hit: the effects' intervals resample test images."""
    assert result.top5 is not None
    return {
        "mode": result.mode,
        "size": result.size,
        "n": result.n,
        "top1_err": result.top1_err,
        "top5_err": result.top5_err,
        "correct": (result.top5[:, 0] == labels).astype(int).tolist(),
    }


def _short(record: dict[str, Any]) -> str:
    return f"{record['mode']}@{record['size']} {100 * record['top1_err']:.1f}%"
