"""The Triton model repository of a real engine directory (zf5_cpu exported and built here with TensorRT-RTX, as
`sppnet export --network zf5_cpu --classes 10 --max-batch 8 --opt-batch 4` and `sppnet build` do): every
config.pbtxt parsed with Triton's schema from tritonclient, dims, batch sizes and profiles as the manifest says,
routing equal to the runtime's, the whole repository written atomically, and bad input refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from sppnet.core.atomic import sha256_file
from sppnet.core.errors import RouteError
from sppnet.core.manifest import read_engine_manifest
from sppnet.engines import serve_repo
from sppnet.engines.model_set import load_model_set
from sppnet.engines.routing import Served, route_size
from sppnet.engines.serve_repo import (
    RepositoryError,
    model_config_schema,
    parse_model_config,
    read_routes,
    write_model_repository,
)
from sppnet.export.build import build_engines
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_untrained

pytest.importorskip("tritonclient", reason="Triton's model config schema comes from tritonclient (pip install it)")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install tensorrt-rtx-cu13) builds the engines")
    root = tmp_path_factory.mktemp("serve")
    export_onnx(source_untrained("zf5_cpu", num_classes=10), root / "onnx", ExportConfig(max_batch=8, opt_batch=4))
    build_engines(root / "onnx", root / "engines")
    return root / "engines"


@pytest.fixture(scope="module")
def repository(engine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "models"
    return write_model_repository(engine_dir, out, max_queue_delay_us=250, instance_count=2, allow_rtx=True)


def configs(repository: Path) -> dict[str, object]:
    """Every model's config.pbtxt parsed with Triton's ModelConfig schema."""
    schema = model_config_schema()
    parsed = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = schema()
        text_format.Parse(path.read_text(), config)
        parsed[path.parent.name] = config
    return parsed


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_the_schema_is_tritons_own() -> None:
    schema = model_config_schema()
    assert schema.DESCRIPTOR.full_name == "inference.ModelConfig"
    names = ("tritonclient.grpc.model_config_pb2", "_sppnet_triton_model_config_pb2")  # imported, or loaded by path
    (module,) = [sys.modules[n] for n in names if getattr(sys.modules.get(n), "ModelConfig", None) is schema]
    assert Path(module.__file__).parts[-3:] == ("tritonclient", "grpc", "model_config_pb2.py")


def test_one_model_per_fixed_engine_and_per_dynamic_profile_each_parsed_by_tritons_schema(
    engine_dir: Path, repository: Path
) -> None:
    manifest = read_engine_manifest(engine_dir)
    content_sha256 = json.loads((engine_dir / "manifest.json").read_text())["content_sha256"]
    parsed = configs(repository)
    expected = {
        "zf5_cpu_112x112_fp32": ("zf5_cpu_112x112_fp32.engine", [3, 112, 112], 8, [4, 8], []),
        "zf5_cpu_90x90_fp16": ("zf5_cpu_90x90_fp16.engine", [3, 90, 90], 8, [4, 8], []),
        "zf5_cpu_dynamic_fp32_p0": ("zf5_cpu_dynamic_fp32.engine", [3, -1, -1], 8, [4, 8], ["0"]),
        "zf5_cpu_dynamic_fp32_p1": ("zf5_cpu_dynamic_fp32.engine", [3, -1, -1], 2, [2], ["1"]),
        "zf5_cpu_dynamic_fp16_p1": ("zf5_cpu_dynamic_fp16.engine", [3, -1, -1], 2, [2], ["1"]),
    }
    assert len(parsed) == 4 + 2 * 2  # 4 fixed engines, 2 dynamic engines of 2 profiles
    assert set(expected) <= set(parsed)
    schema_module = type(model_config_schema()())
    fp32 = schema_module.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
    for name, (engine, dims, max_batch, preferred, profile) in expected.items():
        config = parsed[name]
        assert (config.name, config.platform, config.default_model_filename) == (name, "tensorrt_plan", "model.plan")
        assert config.max_batch_size == max_batch
        (inp,) = config.input
        (out,) = config.output
        assert (inp.name, list(inp.dims), fp32.values_by_number[inp.data_type].name) == ("image", dims, "TYPE_FP32")
        assert (out.name, list(out.dims), out.label_filename) == ("logits", [10], "labels.txt")
        assert list(config.dynamic_batching.preferred_batch_size) == preferred
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        (group,) = config.instance_group
        assert (group.count, list(group.profile)) == (2, profile)
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        assert parameters["sppnet_manifest_sha256"] == sha256_file(engine_dir / "manifest.json")
        assert parameters["sppnet_content_sha256"] == content_sha256
        assert parameters["sppnet_engine_file"] == engine
        entry = next(e for e in manifest.files if e.file == engine)
        assert sha256_file(repository / name / "1" / "model.plan") == entry.sha256
        assert (repository / name / "labels.txt").read_text().split() == list(manifest.card.classes)
    text = (repository / "zf5_cpu_dynamic_fp32_p0" / "config.pbtxt").read_text()
    assert "Triton picks a plan's optimisation profile by input shape" in text


def test_plans_are_hard_links_of_the_engines_where_the_filesystem_allows(engine_dir: Path, repository: Path) -> None:
    table = json.loads((repository / "routing.json").read_text())
    for model in table["models"]:
        plan = repository / model["name"] / "1" / "model.plan"
        linked = os.stat(plan).st_ino == os.stat(engine_dir / model["engine_file"]).st_ino
        assert model["plan"] == ("hard link" if linked else "copy")


def test_routing_matches_the_runtimes_for_every_size(engine_dir: Path, repository: Path) -> None:
    routes = read_routes(repository)
    assert routes.route(112, 112, "fp32").name == "zf5_cpu_112x112_fp32"
    assert routes.route(90, 90, "fp16").name == "zf5_cpu_90x90_fp16"
    assert routes.route(90, 91, "fp32").name == "zf5_cpu_dynamic_fp32_p0"
    assert routes.route(200, 40, "fp32").name == "zf5_cpu_dynamic_fp32_p1"
    rng = np.random.default_rng(0)
    refused = 0
    for precision in ("fp32", "fp16"):
        served = Served.of(load_model_set(engine_dir, precision))
        sizes = [(112, 112), (90, 90), (38, 50), (225, 100), *map(tuple, rng.integers(30, 240, (300, 2)))]
        for h, w in sizes:
            try:
                expected = route_size(int(h), int(w), served)
            except RouteError:
                refused += 1
                with pytest.raises(RouteError, match=f"no model takes a {h}x{w} input"):
                    routes.route(int(h), int(w), precision)
                continue
            model = routes.route(int(h), int(w), precision)
            assert (model.engine_file, model.profile) == (expected.model, expected.profile)
            assert model.covers(int(h), int(w))
    assert refused > 2  # sizes below 39 or above 224 on either axis, at both precisions
    with pytest.raises(RepositoryError, match=r"has no int8 models \(it has fp16, fp32\)"):
        routes.route(112, 112, "int8")


def test_the_readme_describes_routing_and_says_tensorrt_rtx_plans_are_not_tritons(repository: Path) -> None:
    readme = (repository / "README.txt").read_text()
    assert "NOTE: these engines were built by TensorRT-RTX, which Triton's TensorRT backend" in readme
    for line in (
        "1. exactly 112x112, batch 1..8",
        "3. 39x39 to 112x112, batch 1..8",
        "4. 39x39 to 224x224, batch 1..2",
        "-> zf5_cpu_dynamic_fp16_p1",
    ):
        assert line in readme
    for config in repository.glob("*/config.pbtxt"):
        assert "# NOTE: built by TensorRT-RTX; Triton's tensorrt_plan backend cannot load it" in config.read_text()


def test_tensorrt_rtx_engines_are_refused_unless_allowed(engine_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError) as e:
        write_model_repository(engine_dir, tmp_path / "models")
    text = one_line(e)
    assert "holds TensorRT-RTX engines, which Triton's TensorRT backend cannot load" in text
    assert text.endswith("or pass --allow-rtx (allow_rtx=True) to write the layout anyway")
    assert list(tmp_path.iterdir()) == []


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_repository_is_replaced_whole_and_a_failure_leaves_the_old_one(
    engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    write_model_repository(engine_dir, out, allow_rtx=True)
    (out / "zf5_cpu_90x90_fp32" / "stale.txt").write_text("from an older repository")
    write_model_repository(engine_dir, out, max_queue_delay_us=7, allow_rtx=True)
    assert not (out / "zf5_cpu_90x90_fp32" / "stale.txt").exists()
    assert all(c.dynamic_batching.max_queue_delay_microseconds == 7 for c in configs(out).values())
    assert leftovers(tmp_path) == []

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing_parse(text: str, where: str) -> object:
        calls.append(where)
        if len(calls) == 3:
            raise RepositoryError(f"{where} is not a valid Triton model config (simulated)")
        return parse_model_config(text, where)

    monkeypatch.setattr(serve_repo, "parse_model_config", failing_parse)
    with pytest.raises(RepositoryError, match="simulated"):
        write_model_repository(engine_dir, out, max_queue_delay_us=9, allow_rtx=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


def test_an_output_that_is_not_a_repository_is_never_replaced(engine_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"not a model")
    for out in (other, engine_dir):
        with pytest.raises(RepositoryError) as e:
            write_model_repository(engine_dir, out, allow_rtx=True)
        assert one_line(e) == f"{out} exists and is not an sppnet Triton repository: choose another output or remove it"
    assert (other / "cat.jpg").read_bytes() == b"not a model"
    read_engine_manifest(engine_dir)  # untouched


def test_missing_or_tampered_engine_dirs_are_one_line_errors_naming_the_rebuild(
    engine_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as e:
        write_model_repository(tmp_path / "nowhere", tmp_path / "models", allow_rtx=True)
    assert one_line(e).startswith(f"no engine manifest at {tmp_path / 'nowhere' / 'manifest.json'}: rebuild it with")

    tampered = Path(shutil.copytree(engine_dir, tmp_path / "tampered"))
    engine = tampered / "zf5_cpu_90x90_fp32.engine"
    data = bytearray(engine.read_bytes())
    data[100] ^= 1
    engine.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        write_model_repository(tampered, tmp_path / "models", allow_rtx=True)
    assert "zf5_cpu_90x90_fp32.engine does not match" in one_line(e) and "sppnet build" in str(e.value)

    edited = Path(shutil.copytree(engine_dir, tmp_path / "edited"))
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["max_batch"] = 64
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="was edited after the build"):
        write_model_repository(edited, tmp_path / "models", allow_rtx=True)
    assert not (tmp_path / "models").exists()


def test_bad_options_and_invalid_configs_are_one_line_errors(engine_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="instance count must be at least 1; got 0"):
        write_model_repository(engine_dir, tmp_path / "models", instance_count=0, allow_rtx=True)
    with pytest.raises(RepositoryError, match="max queue delay must be >= 0 microseconds; got -1"):
        write_model_repository(engine_dir, tmp_path / "models", max_queue_delay_us=-1, allow_rtx=True)
    for text in ("platform: 42\n", 'name: "x"\nmax_batch_size: "eight"\n', "unknown_field: 1\n", "input [ { dims: [3"):
        with pytest.raises(RepositoryError) as e:
            parse_model_config(text, "m/config.pbtxt")
        assert one_line(e).startswith("m/config.pbtxt is not a valid Triton model config (")
    with pytest.raises(RepositoryError, match="missing or not an sppnet Triton routing table"):
        read_routes(tmp_path)
