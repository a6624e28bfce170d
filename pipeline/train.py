"""Stage 2, train: the three variants (no SPP, SPP single-size, SPP multi-size) over the job's seeds.

A run whose `model.json` records this very training config is reused; an interrupted one resumes from its last
finished epoch (exactly, `sppnet.reproduce.train`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.manifest import RUN_INFO, read_run_info
from sppnet.pipeline.config import VARIANTS, ReproduceConfig
from sppnet.pipeline.data import DataResult
from sppnet.reproduce.train import CHECKPOINT_DIR, METRICS_FILE, train


@dataclass(frozen=True)
class TrainedRun:
    """One finished run: its variant, seed, directory, per-epoch history and whether it was reused."""

    variant: str
    seed: int
    run_dir: Path
    history: tuple[dict[str, Any], ...]
    reused: bool
    stopped: dict[str, Any]  # why it stopped: converged (and by which rule) or at its epoch budget

    @property
    def train_seconds(self) -> float:
        return sum(row.get("seconds", 0.0) for row in self.history)


def train_runs(job: ReproduceConfig, data: DataResult, out: Path, log: Callable[[str], None]) -> list[TrainedRun]:
    """Every (variant, seed) run of the job, trained or reused, in a fixed order."""
    return [_run(job, data, out, variant, seed, log) for variant in VARIANTS for seed in job.seeds]


def _run(
    job: ReproduceConfig, data: DataResult, out: Path, variant: str, seed: int, log: Callable[[str], None]
) -> TrainedRun:
    config = job.train_config(variant, seed)
    run_dir = out / "runs" / f"{variant}-seed{seed}"
    finished = (run_dir / RUN_INFO).exists() and read_run_info(run_dir).train.get("config") == config.to_json()
    if not finished:
        log(f"training {variant}, seed {seed}: sizes {config.sizes}, {config.epochs} epochs")
        resume = (run_dir / CHECKPOINT_DIR).exists()
        train(config, data.directory, run_dir, resume=resume, data=data.decoded, log=log, device=job.device)
    text = (run_dir / METRICS_FILE).read_text()
    history = tuple(json.loads(line) for line in text.splitlines() if line)
    return TrainedRun(variant, seed, run_dir, history, finished, read_run_info(run_dir).train["stopped"])
