"""The main job's settings as one typed dataclass; the defaults fit a 2-core CPU."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sppnet.core.networks import get_network
from sppnet.core.preprocess import Preprocess
from sppnet.reproduce.solver import SolverConfig
from sppnet.reproduce.stats import ConvergenceRule
from sppnet.reproduce.train import TrainConfig

VARIANTS = ("no_spp", "spp_single", "spp_multi")


@dataclass(frozen=True)
class ReproduceConfig:
    """What `sppnet reproduce` runs: the classification experiment, then export, engines, runtime, detection."""

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
    device: str = "auto"  # where training and evaluation run: cuda when present
    precision: str = "fp32"  # training precision: fp32, or bf16 autocast
    stop: ConvergenceRule | None = None  # stop each run once it has converged (else at `epochs`)
    parity_sizes: int = 50  # random sizes the dynamic ONNX models are checked at
    serve_images: int = 300  # held-out images served through the runtime
    with_detection: bool = False
    detection_images: int = 200
    detection_proposals: int = 500

    @classmethod
    def quick_run(cls, **changes: Any) -> ReproduceConfig:
        """A smoke run: few images, 2 epochs, 1 seed; its numbers are no evidence."""
        quick = cls(
            images=300,
            seeds=(0,),
            epochs=2,
            milestones=(),
            batch_size=32,
            quick=True,
            parity_sizes=10,
            serve_images=60,
            detection_images=30,
            detection_proposals=100,
        )
        return replace(quick, **changes)

    @property
    def preprocess(self) -> Preprocess:
        """One crop geometry for all three variants: the multi-size pair's largest size."""
        return get_network(self.network).default_preprocess(self.multi_sizes)

    def train_config(self, variant: str, seed: int) -> TrainConfig:
        """The TrainConfig of one run."""
        sizes = self.multi_sizes if variant == "spp_multi" else (self.single_size,)
        return TrainConfig(
            model=self.network,
            spp=variant != "no_spp",
            sizes=sizes,
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=seed,
            solver=SolverConfig(base_lr=self.base_lr, milestones=self.milestones),
            preprocess=self.preprocess,
            precision=self.precision,
            stop=self.stop,
        )
