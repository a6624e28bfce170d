"""Shared fixtures for the sppnet tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sppnet.core.networks import get_network
from sppnet.reproduce.builtin_data import make_classification_dataset
from sppnet.reproduce.train import TrainConfig, train

TRAINED_SIZES = (112, 90)  # zf5_cpu's multi-size pair


def _load_test_helper(name: str) -> ModuleType:
    """Import tests/<name>.py by path (the tests folder is not a package; pytest runs in importlib mode)."""
    module_name = f"_sppnet_tests_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def caffe_oracle():  # -> caffe_oracle.CaffeOracle
    """The BVLC Caffe oracle (built on first use); skipped without its build script, failed under CI."""
    return _load_test_helper("caffe_oracle").find_or_build()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zf5_cpu trained for 2 multi-size epochs on 96 built-in images: real, non-degenerate weights."""
    root = tmp_path_factory.mktemp("trained")
    make_classification_dataset(root / "data", source="shapes", n=96, seed=5)
    config = TrainConfig(
        model="zf5_cpu",
        sizes=TRAINED_SIZES,
        epochs=2,
        batch_size=16,
        seed=1,
        preprocess=get_network("zf5_cpu").default_preprocess(TRAINED_SIZES),
    )
    train(config, root / "data", root / "run")
    return root / "run"
