"""`build_engines`: every ONNX model of an export directory becomes an engine (TensorRT-RTX builds them here, on
the CPU, about 0.1 s each for these tiny models), the plugin form is skipped with its reason, the engine manifest
is complete and verified, and every failure (no builder, bad ONNX, tampering, interruption) is one line that says
what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from sppnet.core.atomic import sha256_file
from sppnet.core.errors import BuildError
from sppnet.core.manifest import (
    Builder,
    ManifestError,
    read_engine_manifest,
    read_export_manifest,
    write_manifest,
)
from sppnet.core.profiles import dynamic_profiles, fixed_profile
from sppnet.export import trt_builder, trt_module
from sppnet.export.build import build_engines, plan_builds, plugin_status
from sppnet.export.trt_builder import NetworkFromOnnx
from sppnet.export.trt_module import Backend, load_backend

from .onnx_fixtures import make_onnx_export, rehash

REBUILD = "rebuild it with `sppnet build"
REEXPORT = "re-export it"


@pytest.fixture(scope="module")
def rtx():
    return pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install tensorrt-rtx-cu13) builds the engines")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return make_onnx_export(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def engine_dir(rtx, tiny_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engines")
    build_engines(tiny_onnx, out, builder="tensorrt_rtx")
    return out


def copy_onnx(tiny_onnx: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_onnx, tmp_path / "onnx"))


def leftovers(directory: Path) -> list[str]:
    """Temporary files an atomic write leaves if its cleanup failed."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_every_model_builds_with_tensorrt_rtx_and_the_plugin_form_is_skipped(rtx, tiny_onnx, engine_dir) -> None:
    onnx_manifest = read_export_manifest(tiny_onnx)
    manifest = read_engine_manifest(engine_dir)

    built = {e.source_file: e for e in manifest.files}
    skipped = {s["source_file"]: s for s in manifest.skipped}
    assert sorted(built) == sorted(
        f.file for f in onnx_manifest.files if f.spp_form != "plugin"
    )  # 4 fixed + 2 decomposed dynamic
    assert sorted(skipped) == ["tiny_dynamic_plugin_fp16.onnx", "tiny_dynamic_plugin_fp32.onnx"]
    for record in skipped.values():
        assert "has no plugins" in record["reason"] and record["spp_form"] == "plugin"

    scales = [f.scale for f in onnx_manifest.files if f.kind == "fixed"]
    for source in onnx_manifest.files:
        if source.file not in built:
            continue
        entry = built[source.file]
        assert entry.file == source.file.removesuffix(".onnx") + ".engine"
        assert entry.source_sha256 == source.sha256 == sha256_file(tiny_onnx / source.file)
        assert (entry.kind, entry.scale, entry.precision, entry.spp_form) == (
            source.kind,
            source.scale,
            source.precision,
            source.spp_form,
        )
        path = engine_dir / entry.file
        assert entry.bytes == path.stat().st_size > 0
        assert entry.sha256 == sha256_file(path)
        assert entry.seconds > 0
        if entry.kind == "fixed":
            expected = (fixed_profile(*entry.scale, opt_batch=2, max_batch=4),)
        else:
            expected = tuple(dynamic_profiles(min_size=8, max_size=64, scales=scales, opt_batch=2, max_batch=4))
        assert entry.profiles == expected

    assert (manifest.card, manifest.sizes) == (onnx_manifest.card, onnx_manifest.sizes)
    assert (manifest.max_batch, manifest.opt_batch) == (4, 2)
    assert manifest.source_manifest_sha256 == sha256_file(tiny_onnx / "manifest.json")
    assert Path(manifest.source_dir) == tiny_onnx.resolve()
    assert manifest.builder == Builder("tensorrt_rtx", rtx.__version__)
    assert manifest.target["compute_capabilities"] == ["8.0", "8.6", "8.9", "12.0"]
    assert manifest.target["and_later"] is True
    assert leftovers(engine_dir) == []
    assert sorted(p.name for p in engine_dir.iterdir()) == sorted([*(e.file for e in manifest.files), "manifest.json"])


def test_explicit_target_gpus_are_recorded_and_builder_errors_are_one_line(rtx, tiny_onnx, tmp_path) -> None:
    out = tmp_path / "engines"
    build_engines(
        tiny_onnx,
        out,
        builder="tensorrt_rtx",
        precisions=["fp16"],
        kinds=["fixed"],
        compute_capabilities=["8.6", "12.0"],
    )
    target = read_engine_manifest(out).target
    assert target == {"compute_capabilities": ["8.6", "12.0"], "and_later": False, "set_by": "build option"}

    with pytest.raises(BuildError, match=r"'9\.0' is not a TensorRT-RTX target: choose from .*8\.6"):
        build_engines(tiny_onnx, tmp_path / "x", builder="tensorrt_rtx", compute_capabilities=["9.0"])
    assert not (tmp_path / "x").exists()
    # TensorRT-RTX has no fp32 GEMM for Turing: the builder's own message comes back, on one line.
    with pytest.raises(
        BuildError, match=r"tiny_32x32_fp32\.onnx: the tensorrt_rtx .* builder failed: .*Turing"
    ) as info:
        build_engines(
            tiny_onnx,
            tmp_path / "turing",
            builder="tensorrt_rtx",
            precisions=["fp32"],
            kinds=["fixed"],
            compute_capabilities=["7.5"],
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "turing" / "manifest.json").exists()


def test_the_parser_s_refusal_is_one_line_and_custom_ops_never_reach_tensorrt_rtx(
    rtx, tiny_onnx, tmp_path, monkeypatch
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Det", ["image"], ["logits"])],
        "det",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "d.onnx")
    backend = load_backend("tensorrt_rtx")
    with pytest.raises(BuildError, match=r"d\.onnx: the tensorrt_rtx .* ONNX parser refused it: .*Det") as info:
        NetworkFromOnnx(tmp_path / "d.onnx", backend=backend)()
    assert "\n" not in str(info.value)

    def parser_must_not_run(*args, **kwargs):
        raise AssertionError("a custom node reached the TensorRT-RTX ONNX parser")

    monkeypatch.setattr(backend.trt, "OnnxParser", parser_must_not_run)
    with pytest.raises(BuildError, match=r"custom ops \(sppnet::SpatialPyramidPooling\).*decomposed"):
        NetworkFromOnnx(tiny_onnx / "tiny_dynamic_plugin_fp32.onnx", backend=backend)()


def test_a_tampered_engine_or_manifest_is_refused_with_the_rebuild_hint(engine_dir, tmp_path) -> None:
    def tampered(change) -> str:
        copy = Path(shutil.copytree(engine_dir, tmp_path / f"copy{len(list(tmp_path.iterdir()))}"))
        change(copy)
        with pytest.raises(ManifestError) as info:
            read_engine_manifest(copy)
        message = str(info.value)
        assert REBUILD in message and "\n" not in message
        return message

    def flip_byte(d: Path) -> None:
        path = d / "tiny_32x32_fp16.engine"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def edit_manifest(d: Path, edit) -> None:
        path = d / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))

    def widen_profile(m: dict) -> None:
        m["files"][-1]["profiles"][0]["max"][2] = 4096

    assert "tiny_32x32_fp16.engine does not match" in tampered(flip_byte)
    assert "tiny_dynamic_fp32.engine is listed in" in tampered(lambda d: (d / "tiny_dynamic_fp32.engine").unlink())
    assert "edited after the build" in tampered(lambda d: edit_manifest(d, widen_profile))
    assert "edited after the build" in tampered(lambda d: edit_manifest(d, lambda m: m.pop("skipped")))
    assert "unreadable" in tampered(lambda d: (d / "manifest.json").write_text('{"format": "sppnet-eng'))
    assert "no engine manifest" in tampered(lambda d: (d / "manifest.json").unlink())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_onnx_file_is_one_line_naming_the_file_and_re_export(rtx, tiny_onnx, tmp_path, damage) -> None:
    src = copy_onnx(tiny_onnx, tmp_path)
    path = src / "tiny_24x40_fp16.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x08\x99" + os.urandom(200))
    out = tmp_path / "engines"

    # Against the manifest's hash first: the file changed after export.
    with pytest.raises(ManifestError, match=r"tiny_24x40_fp16\.onnx does not match .*manifest\.json.*re-export"):
        build_engines(src, out, builder="tensorrt_rtx")
    # A file the exporter itself listed damaged: onnx.load / onnx.checker refuse it before any builder runs.
    rehash(src, path.name)
    with pytest.raises(ManifestError, match=rf"tiny_24x40_fp16\.onnx is not a valid ONNX model .*{REEXPORT}") as info:
        build_engines(src, out, builder="tensorrt_rtx")
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_an_onnx_file_with_the_wrong_input_size_is_refused(rtx, tiny_onnx, tmp_path) -> None:
    src = copy_onnx(tiny_onnx, tmp_path)
    shutil.copy(src / "tiny_32x32_fp32.onnx", src / "tiny_24x40_fp32.onnx")
    rehash(src, "tiny_24x40_fp32.onnx")
    with pytest.raises(
        ManifestError, match=r"tiny_24x40_fp32\.onnx takes input \['batch', 3, 32, 32\], not \[N, 3, 24, 40\]"
    ):
        build_engines(src, tmp_path / "engines", builder="tensorrt_rtx")


def test_without_any_builder_the_error_names_the_install(tiny_onnx, tmp_path, monkeypatch) -> None:
    for name in trt_module.MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    for call in (lambda: load_backend(), lambda: build_engines(tiny_onnx, tmp_path / "engines")):
        with pytest.raises(
            BuildError, match=r"no TensorRT builder .*`pip install tensorrt-rtx-cu13`.*\.\[trt-rtx\]"
        ) as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(BuildError, match="tried tensorrt_rtx"):
        load_backend("tensorrt_rtx")
    with pytest.raises(BuildError, match="unknown TensorRT builder 'trt'"):
        load_backend("trt")
    assert not (tmp_path / "engines").exists()


def test_an_interrupted_engine_write_leaves_no_engine_and_no_temporary_file(rtx, tiny_onnx, tmp_path, monkeypatch):
    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "engines"
    monkeypatch.setattr(os, "fsync", interrupted_fsync)  # inside write_atomic, after the data was written
    with pytest.raises(KeyboardInterrupt):
        build_engines(tiny_onnx, out, builder="tensorrt_rtx")
    assert sorted(p.name for p in out.iterdir()) == []


def test_an_interrupted_rebuild_leaves_no_manifest_listing_stale_engines(rtx, tiny_onnx, tmp_path, monkeypatch):
    out = tmp_path / "engines"
    build_engines(tiny_onnx, out, builder="tensorrt_rtx", kinds=["fixed"])
    read_engine_manifest(out)
    calls = []
    build = trt_builder.EngineFromNetwork.__call__

    def interrupted_second_build(self):
        calls.append(self)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return build(self)

    monkeypatch.setattr(trt_builder.EngineFromNetwork, "__call__", interrupted_second_build)
    with pytest.raises(KeyboardInterrupt):
        build_engines(tiny_onnx, out, builder="tensorrt_rtx", kinds=["fixed"])
    with pytest.raises(ManifestError, match=f"no engine manifest .*{REBUILD}"):
        read_engine_manifest(out)
    assert leftovers(out) == []


def test_tensorrt_rtx_records_that_it_has_no_timing_cache(engine_dir) -> None:
    cache = read_engine_manifest(engine_dir).timing_cache
    assert cache["file"] is None and "ignores timing caches" in cache["reason"]
    assert not (engine_dir / "timing.cache").exists()


@pytest.mark.filterwarnings("ignore:.*[Tt]iming cache.*:DeprecationWarning")
def test_a_timing_cache_is_written_atomically_and_reused_where_the_builder_supports_it(
    rtx, tiny_onnx, tmp_path, monkeypatch
) -> None:
    # TensorRT-RTX accepts the timing cache calls (as no-ops); pretend it uses them, to exercise the file handling
    # that full TensorRT gets.
    monkeypatch.setattr(Backend, "supports_timing_cache", property(lambda self: True))
    out = tmp_path / "engines"
    first = read_engine_manifest(build_engines(tiny_onnx, out, builder="tensorrt_rtx", kinds=["fixed"]).parent)
    cache_file = out / "timing.cache"
    size = cache_file.stat().st_size
    assert size > 0
    assert first.timing_cache == {"file": "timing.cache", "loaded_bytes": 0, "saved_bytes": size}
    second = read_engine_manifest(build_engines(tiny_onnx, out, builder="tensorrt_rtx", kinds=["fixed"]).parent)
    assert second.timing_cache["loaded_bytes"] == size
    assert leftovers(out) == []

    elsewhere = tmp_path / "caches" / "shared.cache"
    elsewhere.parent.mkdir()
    build_engines(tiny_onnx, out, builder="tensorrt_rtx", kinds=["fixed"], timing_cache=elsewhere)
    third = read_engine_manifest(out)
    assert third.timing_cache["file"] == str(elsewhere.resolve()) and elsewhere.is_file()


def test_precision_and_kind_filters_record_what_was_not_requested(rtx, tiny_onnx, tmp_path) -> None:
    build_engines(tiny_onnx, tmp_path / "e", builder="tensorrt_rtx", precisions=["fp16"], kinds=["fixed"])
    manifest = read_engine_manifest(tmp_path / "e")
    assert sorted(e.file for e in manifest.files) == ["tiny_24x40_fp16.engine", "tiny_32x32_fp16.engine"]
    reasons = {s["source_file"]: s["reason"] for s in manifest.skipped}
    assert len(reasons) == 6
    assert reasons["tiny_32x32_fp32.onnx"] == "not requested (precisions fp16; kinds fixed)"

    with pytest.raises(ValueError, match=r"precisions \['int8'\] not recognised: choose from fp32, fp16"):
        build_engines(tiny_onnx, tmp_path / "x", precisions=["int8"])
    with pytest.raises(ValueError, match=r"nothing to build .*tiny_dynamic_plugin_fp32\.onnx: .*has no plugins"):
        only_plugin = copy_onnx(tiny_onnx, tmp_path)
        exported = read_export_manifest(only_plugin)
        write_manifest(only_plugin, replace(exported, files=tuple(f for f in exported.files if f.spp_form == "plugin")))
        build_engines(only_plugin, tmp_path / "y", builder="tensorrt_rtx")
    with pytest.raises(ValueError, match="is the ONNX directory: choose another --out"):
        build_engines(tiny_onnx, tiny_onnx)


def test_full_tensorrt_builds_the_plugin_form_instead_of_the_decomposition_when_the_plugin_registers(tiny_onnx):
    manifest = read_export_manifest(tiny_onnx)
    full = Backend(types.SimpleNamespace(__name__="tensorrt", __version__="10.13"))
    jobs, skipped = plan_builds(
        manifest, full, precisions=("fp32", "fp16"), kinds=("fixed", "dynamic"), plugin=lambda: (True, "registered")
    )
    assert sorted(j.engine_file for j in jobs if j.entry.kind == "dynamic") == [
        "tiny_dynamic_plugin_fp16.engine",
        "tiny_dynamic_plugin_fp32.engine",
    ]
    assert {s["source_file"]: s["reason"] for s in skipped} == {
        "tiny_dynamic_fp32.onnx": "the plugin form of the same precision is built instead",
        "tiny_dynamic_fp16.onnx": "the plugin form of the same precision is built instead",
    }
    jobs, skipped = plan_builds(
        manifest, full, precisions=("fp32",), kinds=("dynamic",), plugin=lambda: (False, "no plugin here")
    )
    assert [j.engine_file for j in jobs] == ["tiny_dynamic_fp32.engine"]
    assert {s["source_file"]: s["reason"] for s in skipped}["tiny_dynamic_plugin_fp32.onnx"] == "no plugin here"


def test_plugin_status_says_why_there_is_no_plugin_without_full_tensorrt() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("full TensorRT is installed here")
    available, why = plugin_status()
    assert available is False and "plugin" in why


def test_reading_an_engine_manifest_imports_neither_torch_nor_onnx_nor_tensorrt(engine_dir) -> None:
    code = (
        "import sys; from sppnet.core.manifest import read_engine_manifest; "
        f"m = read_engine_manifest({str(engine_dir)!r}); "
        "heavy = sorted({'torch', 'onnx', 'tensorrt', 'tensorrt_rtx'} & set(sys.modules)); "
        "print(len(m.files), heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[0] == "6 []"


def test_engine_files_are_tensorrt_rtx_plans(engine_dir) -> None:
    # What TensorRT-RTX 1.x writes starts with the tag b"vtrt"; a file of anything else was not built by it.
    for entry in read_engine_manifest(engine_dir).files:
        assert (engine_dir / entry.file).read_bytes()[:4] == b"vtrt"


def test_the_real_zf5_cpu_export_builds_with_tensorrt_rtx(rtx, onnx_dir, tmp_path) -> None:
    # onnx_dir: the shared conftest's export of a trained zf5_cpu (fixed scales, the dynamic model in both forms).
    source = read_export_manifest(onnx_dir)
    manifest = read_engine_manifest(build_engines(onnx_dir, tmp_path / "engines", builder="tensorrt_rtx").parent)
    plugin = sorted(f.file for f in source.files if f.spp_form == "plugin")
    assert plugin == ["zf5_cpu_dynamic_plugin_fp16.onnx", "zf5_cpu_dynamic_plugin_fp32.onnx"]
    assert sorted(e.source_file for e in manifest.files) == sorted(f.file for f in source.files if f.file not in plugin)
    assert {e.kind for e in manifest.files} == {"fixed", "dynamic"}
    assert sorted(s["source_file"] for s in manifest.skipped) == plugin
    scales = [f.scale for f in source.files if f.kind == "fixed"]
    expected = dynamic_profiles(
        min_size=source.sizes.min,
        max_size=source.sizes.max,
        scales=scales,
        opt_batch=source.opt_batch,
        max_batch=source.max_batch,
    )
    assert len(expected) == 2 and expected[1].max[2:] == (source.sizes.max,) * 2  # scales are below max size
    for entry in manifest.files:
        if entry.kind == "dynamic":
            assert entry.profiles == tuple(expected)
