"""Fixtures for the runtime tests: the shared trained run exported once, with a dynamic range that takes the
scikit-image photos at their own sizes, and the photos themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import skimage.data

from sppnet.export.onnx_export import ExportConfig, export_onnx, source_from_run

SCALES = ((112, 112), (90, 90))
EXPORT = ExportConfig(scales=SCALES, max_size=704, max_batch=8, opt_batch=4)
PHOTOS = Path(skimage.data.__file__).parent
# Real photos of several sizes and kinds shipped with scikit-image (height x width as stored).
PHOTO_FILES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png", "ihc.png")


@pytest.fixture(scope="session")
def runtime_onnx(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained zf5_cpu run exported at 112 and 90 plus the dynamic model up to 704, fp32 and fp16."""
    out = tmp_path_factory.mktemp("runtime") / "onnx"
    export_onnx(source_from_run(trained_run), out, EXPORT)
    return out


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    paths = [PHOTOS / name for name in PHOTO_FILES]
    assert all(p.is_file() for p in paths), "scikit-image's data photos are missing: pip install scikit-image"
    return paths
