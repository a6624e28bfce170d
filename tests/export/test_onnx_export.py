"""`export_onnx`: one model per scale and a dynamic model (its plugin form on request), fp32 and fp16, checked,
hashed in a typed manifest with each file's optimisation profiles, and equal to PyTorch in ONNX Runtime within
stated tolerances; bad input is refused before anything is written, and an interrupted export leaves no partial
file and no manifest (not even the previous export's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import sppnet.export.onnx_export as onnx_export
from sppnet.core.manifest import ManifestError, Weights, read_export_manifest
from sppnet.core.models import build_model
from sppnet.core.preprocess import Preprocess
from sppnet.core.profiles import dynamic_profiles, fixed_profile
from sppnet.core.runs import load_model
from sppnet.engines.backends.onnxrt import SessionFromOnnx
from sppnet.engines.compare import TOLERANCE, format_summary, summarise
from sppnet.engines.parity import check_export
from sppnet.export.onnx_export import (
    ExportConfig,
    ExportSource,
    card_of,
    export_onnx,
    source_from_run,
    source_untrained,
)
from sppnet.export.onnx_model import check_onnx

from .conftest import EXPORT


def source(model: torch.nn.Module, classes: list[str]) -> ExportSource:
    """An export source for a freshly built model (untrained weights, paper preprocessing)."""
    return ExportSource(model, card_of(model, classes, Preprocess(), Weights("0" * 64, trained=False)))


def test_the_manifest_lists_every_file_with_kind_scale_precision_form_profiles_and_a_verified_hash(
    onnx_dir: Path, trained_run: Path
) -> None:
    manifest = read_export_manifest(onnx_dir)  # verifies every sha256
    listed = {(f.kind, f.scale or (), f.precision, f.spp_form) for f in manifest.files}
    fixed = {("fixed", s, p, "static") for s in EXPORT.scales for p in ("fp32", "fp16")}
    dynamic = {("dynamic", (), p, form) for p in ("fp32", "fp16") for form in ("decomposed", "plugin")}
    assert listed == fixed | dynamic
    card = manifest.card
    assert (card.network, card.levels, card.rule, card.spp) == ("zf5_cpu", (6, 3, 2, 1), "adaptive", True)
    assert (manifest.sizes.min, manifest.sizes.max) == (39, 224)  # zf5_cpu's smallest input; max_size
    assert card.weights.trained is True and card.weights.source == str(trained_run.resolve())
    assert len(card.classes) == card.num_classes and (card.input_name, card.output_name) == ("image", "logits")
    batches = {"opt_batch": 4, "max_batch": 8}
    for entry in manifest.files:
        if entry.kind == "fixed":
            assert entry.profiles == (fixed_profile(*entry.scale, **batches),)
        else:
            assert entry.profiles == tuple(dynamic_profiles(min_size=39, max_size=224, scales=EXPORT.scales, **batches))
    assert sorted(p.name for p in onnx_dir.iterdir()) == sorted([f.file for f in manifest.files] + ["manifest.json"])


def test_the_plugin_form_is_exported_only_on_request(tmp_path: Path) -> None:
    src = source_untrained("zf5_cpu", num_classes=3)
    export_onnx(src, tmp_path, ExportConfig(scales=((112, 112),), precisions=("fp32",)))
    forms = {f.file: f.spp_form for f in read_export_manifest(tmp_path).files}
    assert forms == {"zf5_cpu_112x112_fp32.onnx": "static", "zf5_cpu_dynamic_fp32.onnx": "decomposed"}


def test_every_file_passes_the_checker_and_shape_inference_with_the_right_io(onnx_dir: Path) -> None:
    manifest = read_export_manifest(onnx_dir)
    classes = manifest.card.num_classes
    for entry in manifest.files:
        model = onnx.load(onnx_dir / entry.file)
        assert check_onnx(model, custom_op=entry.spp_form == "plugin")["output"] == ["batch", classes]
        assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, *(entry.scale or ["height", "width"])]
        weights = [t for t in model.graph.initializer if t.name.endswith(".weight")]
        want = onnx.TensorProto.FLOAT16 if entry.precision == "fp16" else onnx.TensorProto.FLOAT
        assert {t.data_type for t in weights} == {want}, entry.file
        ops = {n.op_type for n in model.graph.node}
        assert ("SpatialPyramidPooling" in ops) == (entry.spp_form == "plugin")


def test_onnx_runtime_equals_pytorch_for_every_fixed_model_and_the_dynamic_model_at_50_sizes(
    onnx_dir: Path, trained_run: Path
) -> None:
    rows = check_export(load_model(trained_run), onnx_dir, dynamic_count=50, batch=4)
    summary = summarise(rows)
    print("\n" + format_summary(summary))
    by_file = {s["file"]: s for s in summary}
    assert len(by_file) == 8  # the plugin form needs TensorRT
    for s in summary:
        assert s["ok"], s
        assert s["max_rel"] <= TOLERANCE[s["precision"]]
        if "dynamic" in s["file"]:
            assert s["sizes"] >= 50
    sizes = {r.size for r in rows if "dynamic" in r.name}
    assert (39, 224) in sizes and (224, 39) in sizes  # the extreme aspect ratios at the range's ends
    assert any(h % 16 and w % 16 for h, w in sizes)  # sizes off the feature stride
    assert all(s["top1_agree"] == 1.0 for s in summary if s["precision"] == "fp32")
    assert all(s["top1_agree"] >= 0.9 for s in summary if s["precision"] == "fp16")


def test_a_fixed_model_takes_any_batch(onnx_dir: Path) -> None:
    session = SessionFromOnnx(onnx_dir / "zf5_cpu_90x90_fp32.onnx")()
    for batch in (1, 3, 8):
        assert session.run(None, {"image": np.zeros((batch, 3, 90, 90), np.float32)})[0].shape[0] == batch


def test_untrained_networks_export_with_their_seed_and_weights_hash(tmp_path: Path) -> None:
    src = source_untrained("convnet5_cpu", num_classes=7, seed=3)
    assert torch.equal(
        src.model.features.conv1.weight,
        source_untrained("convnet5_cpu", num_classes=7, seed=3).model.features.conv1.weight,
    )
    export_onnx(src, tmp_path, ExportConfig(scales=((96, 96),), dynamic=False, precisions=("fp32",)))
    manifest = read_export_manifest(tmp_path)
    assert manifest.card.weights.trained is False and manifest.card.weights.seed == 3
    assert [f.file for f in manifest.files] == ["convnet5_cpu_96x96_fp32.onnx"]


def test_a_run_of_another_network_is_refused_with_the_networks_name(trained_run: Path) -> None:
    with pytest.raises(ValueError, match="holds a zf5_cpu model, not zf5: pass --network zf5_cpu"):
        source_from_run(trained_run, network="zf5")


def test_weights_that_do_not_fit_the_described_network_are_refused(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = json.loads((run / "model.json").read_text())
    info["network"] = info["model"]["name"] = "convnet5_cpu"
    (run / "model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="does not fit this model"):
        source_from_run(run)


def test_a_scale_too_small_for_the_network_is_refused_before_any_file_is_written(tmp_path: Path) -> None:
    src = source_untrained("zf5_cpu", num_classes=3)
    with pytest.raises(ValueError, match=r"too small for zf5_cpu.*give at least 39x39"):
        export_onnx(src, tmp_path / "out", ExportConfig(scales=((112, 112), (30, 30))))
    assert not (tmp_path / "out").exists()


def test_a_scale_the_rule_cannot_bin_is_refused_naming_the_scale(tmp_path: Path) -> None:
    src = source(build_model("zf5_cpu", num_classes=3, rule="window"), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"scale 180x180 \(conv5 10x10\).*window rule"):
        export_onnx(src, tmp_path, ExportConfig(scales=((180, 180),)))


def test_the_no_spp_baseline_exports_at_its_size_only(tmp_path: Path) -> None:
    src = source(build_model("zf5_cpu", spp=False, num_classes=3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="--no-dynamic"):
        export_onnx(src, tmp_path, ExportConfig(scales=((112, 112),)))
    with pytest.raises(ValueError, match="takes 112x112 only"):
        export_onnx(src, tmp_path, ExportConfig(scales=((90, 90),), dynamic=False))
    export_onnx(src, tmp_path, ExportConfig(scales=((112, 112),), dynamic=False, precisions=("fp32",)))
    x = np.random.default_rng(0).normal(size=(2, 3, 112, 112)).astype(np.float32)
    want = src.model.eval()(torch.from_numpy(x)).detach().numpy()
    got = SessionFromOnnx(tmp_path / "zf5_cpu_112x112_fp32.onnx")().run(None, {"image": x})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_an_interrupted_export_leaves_no_partial_file_and_no_manifest(tmp_path: Path, monkeypatch) -> None:
    fresh, again = tmp_path / "fresh", tmp_path / "again"
    config = ExportConfig(scales=((112, 112),), max_size=160)
    export_onnx(source_untrained("zf5_cpu", num_classes=3), again, config)  # a complete export, re-exported below
    calls = []
    real = onnx_export.model_to_onnx

    def interrupted(*args: object, **kwargs: object) -> onnx.ModelProto:
        calls.append(1)
        if len(calls) % 3 == 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "model_to_onnx", interrupted)
    for out in (fresh, again):
        with pytest.raises(KeyboardInterrupt):
            export_onnx(source_untrained("zf5_cpu", num_classes=3), out, config)
        files = sorted(p.name for p in out.iterdir())
        assert "manifest.json" not in files  # the old manifest would list files this export was replacing
        assert files[:2] == ["zf5_cpu_112x112_fp16.onnx", "zf5_cpu_112x112_fp32.onnx"]  # whole files only
        for name in files:
            onnx.checker.check_model(onnx.load(out / name))
    assert sorted(p.name for p in fresh.iterdir()) == ["zf5_cpu_112x112_fp16.onnx", "zf5_cpu_112x112_fp32.onnx"]


def test_a_changed_or_truncated_file_is_refused_with_the_re_export_hint(onnx_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(onnx_dir, copy)
    path = copy / "zf5_cpu_90x90_fp32.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ManifestError, match=r"zf5_cpu_90x90_fp32.onnx does not match .*truncated.*sppnet export"):
        read_export_manifest(copy)
    read_export_manifest(copy, verify=False)  # the manifest itself is intact
    path.unlink()
    with pytest.raises(ManifestError, match=r"zf5_cpu_90x90_fp32.onnx is listed in .* but missing"):
        read_export_manifest(copy)
