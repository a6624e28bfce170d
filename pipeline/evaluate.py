"""Stage 3, evaluate: every run with 1 crop, 10 views and the full image at the job's test sizes (PAPER.md 5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sppnet.core.devices import resolve_device
from sppnet.core.runs import load_model
from sppnet.pipeline.config import ReproduceConfig
from sppnet.pipeline.data import DataResult
from sppnet.pipeline.train import TrainedRun
from sppnet.reproduce.evaluate import evaluate_many


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
    """The protocols a variant is tested with; the no-SPP baseline has no full-image test (one input size)."""
    plan: list[tuple[str, int | None]] = [("crop", None), ("10view", None)]
    if variant != "no_spp":
        plan += [("full", size) for size in sorted({*job.test_sizes, job.preprocess.short_side})]
    return plan


def evaluate_runs(
    job: ReproduceConfig, runs: list[TrainedRun], data: DataResult, log: Callable[[str], None]
) -> list[EvaluatedRun]:
    """Each run's errors on the held-out test split."""
    evaluated = []
    for run in runs:
        began = time.perf_counter()
        model = load_model(run.run_dir).to(resolve_device(job.device))
        plan = evaluation_plan(job, run.variant)
        labels = data.decoded.test_labels
        results = evaluate_many(model, data.decoded.test_images, labels, job.preprocess, plan, keep_predictions=True)
        records = tuple(
            {
                "mode": r.mode,
                "size": r.size,
                "n": r.n,
                "top1_err": r.top1_err,
                "top5_err": r.top5_err,
                "correct": (r.top5[:, 0] == labels).astype(int).tolist(),  # per test image: the effects resample them
            }
            for r in results
            if r.top5 is not None
        )
        evaluated.append(EvaluatedRun(run, records, time.perf_counter() - began))
        log(f"evaluated {run.variant}, seed {run.seed}: " + ", ".join(_short(r) for r in records))
    return evaluated


def _short(record: dict[str, Any]) -> str:
    return f"{record['mode']}@{record['size']} {100 * record['top1_err']:.1f}%"
