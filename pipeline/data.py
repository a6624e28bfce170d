"""Stage 1, data: the built-in dataset, made once and reused while it is the one the job asks for."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sppnet.core.errors import InvalidInput
from sppnet.pipeline.config import ReproduceConfig
from sppnet.reproduce.builtin_data import make_classification_dataset
from sppnet.reproduce.train import TrainData, load_data


@dataclass(frozen=True)
class DataResult:
    """The dataset on disk and its images decoded once for every run."""

    directory: Path
    source: str
    images: int
    seed: int
    decoded: TrainData

    def to_json(self) -> dict[str, object]:
        return {
            "dir": str(self.directory),
            "source": self.source,
            "images": self.images,
            "train": len(self.decoded.train_images),
            "val": len(self.decoded.val_images or ()),
            "test": len(self.decoded.test_images),
            "classes": self.decoded.classes,
        }


def make_data(job: ReproduceConfig, out: Path, log: Callable[[str], None]) -> DataResult:
    """`out/data`: reused when its manifest says it is this job's dataset, made otherwise, refused if another's.

    The decoded training images then lose `job.val_images` of their number to a validation split (every k-th).
    """
    directory = out / "data"
    manifest = directory / "manifest.json"
    test_fraction = job.test_images / job.images
    wanted = (job.source, job.images, job.data_seed, test_fraction, json.loads(json.dumps(asdict(job.generation))))
    if manifest.exists():
        made = json.loads(manifest.read_text())
        found = (made.get("source", {}).get("name"), made.get("n"), made.get("seed"))
        found += (made.get("test_fraction"), made.get("settings"))
        if found != wanted:
            raise InvalidInput(
                f"{directory} holds another dataset (source, images, seed = {found[:3]}, or other generation "
                "settings): use another --out or remove it"
            )
    else:
        log(f"making the built-in dataset ({job.source}, {job.images} images, {job.test_images} test) in {directory}")
        make_classification_dataset(
            directory,
            source=job.source,
            n=job.images,
            seed=job.data_seed,
            fashion_mnist_dir=job.fashion_mnist_dir,
            test_fraction=test_fraction,
            settings=job.generation,
        )
    decoded = load_data(directory, job.train_config("spp_single", job.seeds[0]), log)
    if job.val_images:
        decoded = decoded.hold_out(job.val_images)
    return DataResult(directory, job.source, job.images, job.data_seed, decoded)
