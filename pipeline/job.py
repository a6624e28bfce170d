"""`sppnet reproduce`: the paper's classification experiment on the built-in data, end to end.

Trains (a) no SPP, (b) SPP single-size, (c) SPP multi-size over several seeds, evaluates each with 1 crop,
10 views, the full image and full images at other test sizes, and writes the report (Tables 2 and 3 of the
paper, measured). Finished runs are reused, so an interrupted job continues where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sppnet.core.networks import get_network
from sppnet.core.runs import load_model, read_model_info
from sppnet.reproduce.builtin_data import make_classification_dataset
from sppnet.reproduce.evaluate import evaluate_many
from sppnet.reproduce.solver import SolverConfig
from sppnet.reproduce.train import TrainConfig, TrainData, load_data, train

VARIANTS = ("no_spp", "spp_single", "spp_multi")


@dataclass(frozen=True)
class ReproduceConfig:
    """The main job's settings; the defaults fit a 2-core CPU in about a quarter of an hour."""

    network: str = "zf5_cpu"
    source: str = "fashion-mnist"
    images: int = 3000
    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 20
    milestones: tuple[int, ...] = (15, 18)
    batch_size: int = 64
    base_lr: float = 0.01
    single_size: int = 112
    multi_sizes: tuple[int, ...] = (112, 90)
    test_sizes: tuple[int, ...] = (90, 112, 128, 160)
    quick: bool = False

    @classmethod
    def quick_run(cls, **changes: Any) -> ReproduceConfig:
        """A smoke run: few images, 2 epochs, 1 seed; its numbers are no evidence."""
        return replace(cls(images=300, seeds=(0,), epochs=2, milestones=(), batch_size=32, quick=True), **changes)

    def train_config(self, variant: str, seed: int) -> TrainConfig:
        """The TrainConfig of one run: the same crop geometry for all three variants."""
        sizes = self.multi_sizes if variant == "spp_multi" else (self.single_size,)
        return TrainConfig(
            model=self.network,
            spp=variant != "no_spp",
            sizes=sizes,
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=seed,
            solver=SolverConfig(base_lr=self.base_lr, milestones=self.milestones),
            preprocess=get_network(self.network).default_preprocess(self.multi_sizes),
        )


def _data(out: Path, job: ReproduceConfig, log: Callable[[str], None]) -> Path:
    data_dir = out / "data"
    manifest = data_dir / "manifest.json"
    if manifest.exists():
        made = json.loads(manifest.read_text())
        found = (made.get("source", {}).get("name"), made.get("n"), made.get("seed"))
        if found == (job.source, job.images, job.data_seed):
            return data_dir
        raise ValueError(
            f"{data_dir} holds another dataset (source, images, seed = {found}): use another --out or remove it"
        )
    log(f"making the built-in dataset ({job.source}, {job.images} images) in {data_dir}")
    make_classification_dataset(data_dir, source=job.source, n=job.images, seed=job.data_seed)
    return data_dir


def _evaluation_plan(job: ReproduceConfig, variant: str, short_side: int) -> list[tuple[str, int | None]]:
    plan: list[tuple[str, int | None]] = [("crop", None), ("10view", None)]
    if variant != "no_spp":
        plan += [("full", size) for size in sorted({*job.test_sizes, short_side})]
    return plan


def _run(
    out: Path,
    data_dir: Path,
    data: TrainData,
    job: ReproduceConfig,
    variant: str,
    seed: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    config = job.train_config(variant, seed)
    run_dir = out / "runs" / f"{variant}-seed{seed}"
    began = time.perf_counter()
    finished = (run_dir / "model.json").exists() and read_model_info(run_dir)["train"]["config"] == config.to_json()
    if not finished:
        log(f"training {variant}, seed {seed}: sizes {config.sizes}, {config.epochs} epochs")
        train(config, data_dir, run_dir, resume=(run_dir / "checkpoint").exists(), data=data, log=log)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    model = load_model(run_dir)
    plan = _evaluation_plan(job, variant, config.preprocess.short_side)
    results = evaluate_many(model, data.test_images, data.test_labels, config.preprocess, plan)
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": str(run_dir),
        "train_seconds": sum(row.get("seconds", 0.0) for row in history),
        "history": history,
        "eval": [
            {"mode": r.mode, "size": r.size, "n": r.n, "top1_err": r.top1_err, "top5_err": r.top5_err} for r in results
        ],
        "wall_seconds": time.perf_counter() - began,
    }


def reproduce(job: ReproduceConfig, out: str | os.PathLike[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole experiment into `out` and write `out/report.md`, `out/report.json` and the plots."""
    from sppnet.reproduce.report import write_report

    out = Path(out)
    began = time.perf_counter()
    data_dir = _data(out, job, log)
    data = load_data(data_dir, job.train_config("spp_single", job.seeds[0]), log)
    runs = [_run(out, data_dir, data, job, variant, seed, log) for variant in VARIANTS for seed in job.seeds]
    results = {
        "format": 1,
        "settings": {
            "network": job.network,
            "epochs": job.epochs,
            "seeds": list(job.seeds),
            "quick": job.quick,
            "train_sizes": {v: list(job.train_config(v, 0).sizes) for v in VARIANTS},
            "test_sizes": list(job.test_sizes),
            "data": {
                "dir": str(data_dir),
                "source": job.source,
                "images": job.images,
                "train": len(data.train_images),
                "test": len(data.test_images),
                "classes": data.classes,
            },
            "preprocess": job.train_config("spp_single", 0).preprocess.to_json(),
            "solver": {"base_lr": job.base_lr, "milestones": list(job.milestones), "batch_size": job.batch_size},
        },
        "runs": runs,
        "timing": {
            "total_seconds": time.perf_counter() - began,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    paths = write_report(results, out)
    log(f"report: {paths['markdown']}")
    return results
