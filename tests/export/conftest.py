"""Fixtures for the export tests: one short multi-size training run and its ONNX export, shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppnet.export.onnx_export import ExportConfig, export_onnx, source_from_run
from sppnet.reproduce.builtin_data import make_classification_dataset
from sppnet.reproduce.train import TrainConfig, default_preprocess, train

SIZES = (112, 90)  # zf5_cpu's multi-size pair
EXPORT = ExportConfig(scales=((112, 112), (90, 90), (100, 76)), max_size=224, max_batch=8, opt_batch=4)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zf5_cpu trained for 2 multi-size epochs on 96 built-in images: real, non-degenerate weights."""
    root = tmp_path_factory.mktemp("trained")
    make_classification_dataset(root / "data", source="shapes", n=96, seed=5)
    config = TrainConfig(
        model="zf5_cpu", sizes=SIZES, epochs=2, batch_size=16, seed=1, preprocess=default_preprocess("zf5_cpu", SIZES)
    )
    train(config, root / "data", root / "run")
    return root / "run"


@pytest.fixture(scope="session")
def onnx_dir(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run exported at 112, 90 and 100x76, plus the dynamic model (up to 224), fp32 and fp16."""
    out = tmp_path_factory.mktemp("onnx") / "zf5_cpu"
    export_onnx(source_from_run(trained_run), out, EXPORT)
    return out
