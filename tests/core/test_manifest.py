"""The typed, versioned manifests (`sppnet.core.manifest`): a run's model.json, an ONNX export's and an engine
directory's manifest.json. Each round-trips through its file; a manifest of another format, an unknown or old
version, a listed file changed or missing, an edited engine manifest and a malformed record are each refused in one
line that names the file, the key and the command that remakes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sppnet.core.errors import ArtifactError, SppnetError
from sppnet.core.manifest import (
    SCHEMA_VERSION,
    Builder,
    EngineManifest,
    ExportManifest,
    ManifestError,
    ModelCard,
    RunInfo,
    SizeRange,
    Weights,
    content_sha256,
    directory_kind,
    file_record,
    read_engine_manifest,
    read_export_manifest,
    read_run_info,
    write_manifest,
)
from sppnet.core.networks import ModelConfig, get_network
from sppnet.core.preprocess import Preprocess
from sppnet.core.profiles import dynamic_profiles, fixed_profile

REMAKE = {
    "run": "sppnet train --out RUN",
    "onnx": "sppnet export --checkpoint RUN --out DIR",
    "engines": "sppnet build --onnx DIR --out ENGINE_DIR",
}
READERS: dict[str, Callable[..., Any]] = {
    "run": read_run_info,
    "onnx": read_export_manifest,
    "engines": read_engine_manifest,
}
FILE = {"run": "model.json", "onnx": "manifest.json", "engines": "manifest.json"}
WHAT = {"run": "model description", "onnx": "ONNX export manifest", "engines": "engine manifest"}
FORMAT = {"run": "sppnet-model", "onnx": "sppnet-onnx", "engines": "sppnet-engines"}
SIZES = SizeRange(39, 224, 16, (("conv", 7, 2, 1), ("pool", 3, 2, 0), ("conv", 5, 2, 0), ("pool", 3, 2, 0)))
BATCHES = {"opt_batch": 4, "max_batch": 8}


def card(**changes: Any) -> ModelCard:
    values: dict[str, Any] = {
        "network": "zf5_cpu",
        "model": ModelConfig("zf5_cpu", num_classes=3),
        "classes": ("cat", "dog", "fish"),
        "preprocess": Preprocess(short_side=128, crop=112, scale=1 / 64),
        "weights": Weights("ab" * 32, source="/runs/a", trained=True),
    }
    return ModelCard(**(values | changes))


def model_files(directory: Path, suffix: str, **source: Any) -> tuple:
    """A fixed-size and a dynamic model file written into `directory`, and their records."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"m_112x112_fp32.{suffix}").write_bytes(b"fixed model " * 50)
    (directory / f"m_dynamic_fp16.{suffix}").write_bytes(b"dynamic model " * 70)
    fixed = file_record(
        directory / f"m_112x112_fp32.{suffix}",
        kind="fixed",
        scale=(112, 112),
        precision="fp32",
        spp_form="static",
        profiles=(fixed_profile(112, 112, **BATCHES),),
        seconds=0.25,
        **source.get("fixed", {}),
    )
    dynamic = file_record(
        directory / f"m_dynamic_fp16.{suffix}",
        kind="dynamic",
        scale=None,
        precision="fp16",
        spp_form="decomposed",
        profiles=tuple(dynamic_profiles(min_size=39, max_size=224, scales=[(112, 112)], **BATCHES)),
        **source.get("dynamic", {}),
    )
    return fixed, dynamic


def make(kind: str, directory: Path) -> RunInfo | ExportManifest | EngineManifest:
    """A manifest of `kind` written into `directory` with the files it lists; returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "run":
        info = RunInfo(
            card(weights=Weights("cd" * 32, file="model.safetensors")),
            train={"config": {"sizes": [112, 90], "epochs": 2}},
            origin={"caffe": "none"},
        )
        write_manifest(directory, info)
        return info
    if kind == "onnx":
        export = ExportManifest(card(), SIZES, 8, 4, model_files(directory, "onnx"), 17, {"onnx": "1.17"})
        write_manifest(directory, export)
        return export
    source = {
        "fixed": {"source_file": "m_112x112_fp32.onnx", "source_sha256": "01" * 32},
        "dynamic": {"source_file": "m_dynamic_fp16.onnx", "source_sha256": "23" * 32},
    }
    engines = EngineManifest(
        card(),
        SIZES,
        8,
        4,
        model_files(directory, "engine", **source),
        Builder("tensorrt_rtx", "1.7.1.116"),
        "/exports/onnx",
        "45" * 32,
        target={"compute_capabilities": ["8.6"], "and_later": False, "set_by": "build option"},
        workspace_mb=4096,
        timing_cache={"file": None, "reason": "not requested"},
        skipped=({"source_file": "m_dynamic_plugin_fp32.onnx", "reason": "has no plugins"},),
    )
    write_manifest(directory, engines)
    return engines


def raw(directory: Path, kind: str) -> dict[str, Any]:
    return json.loads((directory / FILE[kind]).read_text())


def rewrite(directory: Path, kind: str, record: dict[str, Any], *, rehash: bool = True) -> None:
    """Write `record` as the manifest; an engine manifest gets the hash of its new content (as a rebuild would)."""
    if kind == "engines" and rehash:
        body = {k: v for k, v in record.items() if k != "content_sha256"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        record = body | {"content_sha256": hashlib.sha256(canonical).hexdigest()}
    (directory / FILE[kind]).write_text(json.dumps(record))


def refused(kind: str, directory: Path, *match: str) -> str:
    """The one-line ManifestError reading `directory` raises; it must contain `match` and the remake command."""
    with pytest.raises(ManifestError) as error:
        READERS[kind](directory)
    message = str(error.value)
    assert "\n" not in message, message
    assert REMAKE[kind] in message, message
    for part in match:
        assert part in message, (part, message)
    return message


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["run", "onnx", "engines"])
def test_every_manifest_kind_round_trips_through_its_file(kind: str, tmp_path: Path) -> None:
    written = make(kind, tmp_path)
    assert READERS[kind](tmp_path) == written
    record = raw(tmp_path, kind)
    assert record["format"] == {"run": "sppnet-model", "onnx": "sppnet-onnx", "engines": "sppnet-engines"}[kind]
    assert record["version"] == SCHEMA_VERSION == 2
    assert directory_kind(tmp_path) == kind
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # written atomically


def test_listed_files_carry_their_size_sha256_and_profiles(tmp_path: Path) -> None:
    manifest = make("onnx", tmp_path)
    for entry in manifest.files:
        data = (tmp_path / entry.file).read_bytes()
        assert (entry.bytes, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    fixed, dynamic = raw(tmp_path, "onnx")["files"]
    assert fixed["profiles"] == [{"min": [1, 3, 112, 112], "opt": [4, 3, 112, 112], "max": [8, 3, 112, 112]}]
    assert fixed["scale"] == [112, 112] and dynamic["scale"] is None
    assert len(dynamic["profiles"]) == 2 and manifest.files[1].max_batch == 8


def test_a_card_of_an_imported_network_with_its_own_tensor_names_round_trips(tmp_path: Path) -> None:
    spec = get_network("zf5_cpu").to_json()
    weights = Weights("ef" * 32, file="w.safetensors")
    info = RunInfo(card(network="imported_net", spec=spec, input_name="data", output_name="prob", weights=weights))
    write_manifest(tmp_path, info)
    back = read_run_info(tmp_path)
    assert back == info and (back.card.input_name, back.card.output_name) == ("data", "prob")
    assert back.card.network_spec().to_json() == spec
    record = raw(tmp_path, "run")
    assert record["input"]["name"] == "data" and record["output"] == {"name": "prob", "dtype": "float32", "classes": 3}


def test_the_engine_manifest_carries_the_hash_of_its_own_content(tmp_path: Path) -> None:
    manifest = make("engines", tmp_path)
    record = raw(tmp_path, "engines")
    body = {k: v for k, v in record.items() if k != "content_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert record["content_sha256"] == hashlib.sha256(canonical).hexdigest() == content_sha256(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(record, indent=4, sort_keys=True))  # layout is not content
    assert read_engine_manifest(tmp_path) == manifest


def test_a_version_1_model_json_is_still_read_and_its_weights_load(tmp_path: Path) -> None:
    import torch

    from sppnet.core.models import build_model
    from sppnet.core.runs import load_model, save_trained

    torch.manual_seed(0)
    model = build_model("zf5_cpu", num_classes=3).eval()
    save_trained(tmp_path, model, classes=["a", "b", "c"], preprocess=Preprocess(short_side=128, crop=112))
    digest = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    version_1 = {  # what `save_trained` wrote before the schema was typed (sppnet at commit 1e7befa)
        "format": "sppnet-model",
        "version": 1,
        "network": "zf5_cpu",
        "model": {
            "name": "zf5_cpu",
            "spp": True,
            "num_classes": 3,
            "levels": [6, 3, 2, 1],
            "rule": "adaptive",
            "dropout": 0.5,
            "init_std": 0.01,
            "input_size": None,
        },
        "classes": ["a", "b", "c"],
        "preprocess": {"mean_bgr": [128.0, 128.0, 128.0], "short_side": 128, "crop": 112, "scale": 1.0},
        "weights": {"file": "model.safetensors", "sha256": digest},
        "train": {"config": {"sizes": [112, 90]}},
    }
    (tmp_path / "model.json").write_text(json.dumps(version_1))
    info = read_run_info(tmp_path)
    assert info.card.model == ModelConfig("zf5_cpu", num_classes=3)
    assert (info.card.input_name, info.card.output_name) == ("image", "logits")
    assert info.train == {"config": {"sizes": [112, 90]}} and info.origin == {}
    loaded = load_model(tmp_path)
    x = torch.randn(1, 3, 112, 112)
    assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kind", "version"),
    [("engines", 1), ("engines", 3), ("engines", "2"), ("onnx", 1), ("onnx", 3), ("onnx", None), ("run", 3)],
)
def test_an_unknown_or_old_version_is_refused_with_the_fix(kind: str, version: Any, tmp_path: Path) -> None:
    make(kind, tmp_path)
    record = raw(tmp_path, kind)
    if version is None:
        del record["version"]
    else:
        record["version"] = version
    rewrite(tmp_path, kind, record)
    message = refused(kind, tmp_path, f"version {version!r}, which this sppnet does not read (it reads ")
    assert message.endswith("with this version of sppnet")


@pytest.mark.parametrize(
    ("kind", "other", "what"),
    [
        ("engines", "onnx", "is a 'sppnet-onnx' file"),
        ("onnx", "engines", "is a 'sppnet-engines' file"),
        ("run", "onnx", "is a 'sppnet-onnx' file"),
    ],
)
def test_a_manifest_of_another_format_is_refused(kind: str, other: str, what: str, tmp_path: Path) -> None:
    make(other, tmp_path)
    if kind == "run":  # the other manifest where a run's model.json should be
        (tmp_path / "manifest.json").rename(tmp_path / "model.json")
    refused(kind, tmp_path, what, f"file where a {FORMAT[kind]!r} file ({WHAT[kind]}) belongs")


@pytest.mark.parametrize("kind", ["run", "onnx", "engines"])
def test_a_missing_unreadable_or_non_object_manifest_is_refused(kind: str, tmp_path: Path) -> None:
    refused(kind, tmp_path, f"no {WHAT[kind]} at {tmp_path / FILE[kind]}")
    (tmp_path / FILE[kind]).write_text('{"format": "sppnet-')
    refused(kind, tmp_path, "is unreadable")
    (tmp_path / FILE[kind]).write_text("[1, 2]")
    refused(kind, tmp_path, "is not a JSON object")


@pytest.mark.parametrize("kind", ["onnx", "engines"])
def test_a_changed_truncated_swapped_or_missing_listed_file_is_refused(kind: str, tmp_path: Path) -> None:
    manifest = make(kind, tmp_path)
    fixed, dynamic = (tmp_path / f.file for f in manifest.files)
    original = fixed.read_bytes()

    def damaged(data: bytes, *match: str) -> None:
        fixed.write_bytes(data)
        refused(kind, tmp_path, f"{fixed} does not match {tmp_path / 'manifest.json'}", *match)
        assert READERS[kind](tmp_path, verify=False) == manifest  # the manifest itself is intact

    damaged(original[:-1] + bytes([original[-1] ^ 1]), "the file was changed or truncated")
    damaged(original[: len(original) // 2])
    damaged(dynamic.read_bytes())  # another listed file in its place
    fixed.unlink()
    refused(kind, tmp_path, f"{fixed} is listed in {tmp_path / 'manifest.json'} but missing")
    fixed.write_bytes(original)
    assert READERS[kind](tmp_path) == manifest


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(max_batch=64),
        lambda m: m["files"][1]["profiles"][-1]["max"].__setitem__(2, 4096),  # a wider profile than was built
        lambda m: m.pop("skipped"),
        lambda m: m["builder"].update(version="10.99"),
        lambda m: m.pop("content_sha256"),
    ],
)
def test_an_engine_manifest_edited_after_the_build_is_refused(edit: Callable, tmp_path: Path) -> None:
    make("engines", tmp_path)
    record = raw(tmp_path, "engines")
    edit(record)
    rewrite(tmp_path, "engines", record, rehash=False)
    refused("engines", tmp_path, "was edited after the build (its content hash does not match)")


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """An edit that sets (or, with value DELETE, removes) the key at a dotted path such as files.0.scale."""

    def edit(record: dict) -> None:
        *parents, last = path.split(".")
        target: Any = record
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is DELETE:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return edit


DELETE = object()
MALFORMED = [
    ("opset", DELETE, "manifest.json lacks 'opset'"),
    ("max_batch", "eight", "manifest.json: 'max_batch' is 'eight', not a int"),
    ("max_batch", True, "manifest.json: 'max_batch' is True, not a int"),
    ("classes", ["cat", "dog"], "manifest.json: 'classes' must be 3 names (one per output)"),
    ("model.colour", "red", "manifest.json.model has unknown keys ['colour']"),
    ("model.levels", [6, "3"], "manifest.json.model.levels is [6, '3'], not a list of integers"),
    ("weights.sha256", DELETE, "manifest.json.weights lacks 'sha256'"),
    ("preprocess.crop", 1000, "the model or preprocessing record is invalid"),
    ("sizes.min", 300, "manifest.json.sizes: the size range 300..224 is empty"),
    ("sizes.layers.0", ["conv", 7, 2], "manifest.json.sizes.layers[0] is ['conv', 7, 2], not [conv|pool, kernel"),
    ("files.0", "m.onnx", "manifest.json.files[0] is not a JSON object"),
    ("files.0.kind", "static", "manifest.json.files[0]: kind 'static' is not one of fixed, dynamic"),
    ("files.0.scale", [112], "manifest.json.files[0].scale is [112], not a list of 2 integers"),
    ("files.0.scale", None, "manifest.json.files[0]: a fixed model needs its scale"),
    ("files.0.profiles", [], "manifest.json.files[0]: a model file needs at least one optimisation profile"),
    ("files.0.profiles.0.opt", [4, 3, 112], "manifest.json.files[0]: invalid profile (profile opt must be a list"),
    ("files.0.file", "../m.onnx", "manifest.json.files[0]: file '../m.onnx' is not a plain file name"),
    ("files.1.sha256", 7, "manifest.json.files[1]: 'sha256' is 7, not a str"),
]


@pytest.mark.parametrize(("path", "value", "message"), MALFORMED, ids=[f"{p}={v!r}" for p, v, _ in MALFORMED])
def test_a_malformed_export_record_is_refused_naming_the_key(
    path: str, value: Any, message: str, tmp_path: Path
) -> None:
    make("onnx", tmp_path)
    record = raw(tmp_path, "onnx")
    _set(path, value)(record)
    rewrite(tmp_path, "onnx", record)
    refused("onnx", tmp_path, message)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("builder", DELETE, "manifest.json lacks 'builder'"),
        ("source.dir", DELETE, "manifest.json.source lacks 'dir'"),
        ("workspace_mb", "4 GiB", "manifest.json: 'workspace_mb' is '4 GiB', not a int"),
        ("files.0.source_sha256", 1, "manifest.json.files[0]: 'source_sha256' is 1, not a str"),
    ],
)
def test_a_malformed_engine_record_is_refused_naming_the_key(path: str, value: Any, message: str, tmp_path: Path):
    make("engines", tmp_path)
    record = raw(tmp_path, "engines")
    _set(path, value)(record)
    rewrite(tmp_path, "engines", record)  # re-hashed: the record itself is what is wrong
    refused("engines", tmp_path, message)


def test_a_run_without_its_weights_file_named_is_refused(tmp_path: Path) -> None:
    make("run", tmp_path)
    record = raw(tmp_path, "run")
    del record["weights"]["file"]
    rewrite(tmp_path, "run", record)
    refused("run", tmp_path, "'weights' names no file")


def test_manifest_errors_are_artifact_errors_the_user_can_fix() -> None:
    assert issubclass(ManifestError, ArtifactError) and issubclass(ManifestError, SppnetError)
    assert issubclass(ManifestError, ValueError)  # callers that catch ValueError keep working


# ---------------------------------------------------------------- which kind of directory


def test_directory_kind_names_what_to_pass_for_anything_else(tmp_path: Path) -> None:
    for kind in ("run", "onnx", "engines"):
        make(kind, tmp_path / kind)
        assert directory_kind(tmp_path / kind) == kind
    shutil.copytree(tmp_path / "onnx", tmp_path / "other")
    record = raw(tmp_path / "other", "onnx") | {"format": "sppnet-triton-repository"}
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(record))
    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "empty", tmp_path / "other", tmp_path / "nowhere"):
        with pytest.raises(ManifestError) as error:
            directory_kind(directory)
        message = str(error.value)
        assert message.startswith(f"{directory} is not an engine directory (`sppnet build`), an ONNX export")
        assert message.endswith("or a run (RUN/model.json from `sppnet train`): pass one of those")
    (tmp_path / "other" / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="is unreadable"):
        directory_kind(tmp_path / "other")
