"""Every registered network (the paper's four and their CPU presets) exports at its training sizes plus the
dynamic model, fp32 and fp16 (by default without the plugin form, which only full TensorRT builds), and TensorRT-RTX
builds all of its engines on this CPU-only machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from sppnet.core.manifest import read_engine_manifest, read_export_manifest
from sppnet.core.networks import NETWORKS
from sppnet.export.build import build_engines
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_untrained


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_network_exports_and_every_engine_builds(name: str, tmp_path: Path) -> None:
    spec = NETWORKS[name]
    onnx_dir, engine_dir = tmp_path / "onnx", tmp_path / "engines"
    export_onnx(source_untrained(name, num_classes=1000), onnx_dir, ExportConfig(max_batch=8, opt_batch=2))
    exported = read_export_manifest(onnx_dir).files
    assert len(exported) == 2 * len(spec.train_sizes) + 2
    assert {f.spp_form for f in exported} == {"static", "decomposed"}
    for entry in exported:
        onnx.checker.check_model(str(onnx_dir / entry.file))

    built = read_engine_manifest(build_engines(onnx_dir, engine_dir, builder="tensorrt_rtx").parent)
    engines = {(f.kind, f.scale or (), f.precision) for f in built.files}
    want = {("fixed", (s, s), p) for s in spec.train_sizes for p in ("fp32", "fp16")}
    assert engines == want | {("dynamic", (), p) for p in ("fp32", "fp16")}
    assert built.skipped == ()  # nothing TensorRT-RTX cannot build was exported
    assert built.builder.module == "tensorrt_rtx"
    for f in built.files:
        assert (engine_dir / f.file).stat().st_size == f.bytes > 0
    shutil.rmtree(tmp_path)  # the paper's networks leave about 2 GB each
