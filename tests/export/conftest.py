"""Fixtures for the export tests: the shared trained run (tests/conftest.py) exported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppnet.export.onnx_export import ExportConfig, export_onnx, source_from_run

EXPORT = ExportConfig(scales=((112, 112), (90, 90), (100, 76)), max_size=224, max_batch=8, opt_batch=4, plugin=True)


@pytest.fixture(scope="session")
def onnx_dir(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run exported at 112, 90 and 100x76, plus the dynamic model (up to 224) in both SPP forms."""
    out = tmp_path_factory.mktemp("onnx") / "zf5_cpu"
    export_onnx(source_from_run(trained_run), out, EXPORT)
    return out
