"""The typed, versioned manifests of every artifact directory, read and written only here; no torch.

Three directories carry one: a run (`model.json` beside `model.safetensors`: which network the weights are), an
ONNX export and an engine directory (`manifest.json`: every model file with its size, precision, optimisation
profiles and sha256). All three share a `ModelCard` (network, head, classes, preprocessing, weights). Every listed
file carries its sha256, so a reader refuses a file that was changed, truncated or swapped, with the command that
remakes it; an engine manifest also carries the hash of its own content. A manifest of another format or an
unknown version is refused with the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from sppnet.core.atomic import read_json, sha256, sha256_file, write_atomic
from sppnet.core.caffe_shapes import Geometry, feature_map_size
from sppnet.core.errors import ArtifactError
from sppnet.core.networks import ModelConfig, NetworkSpec, get_network
from sppnet.core.preprocess import Preprocess
from sppnet.core.profiles import Profile

SCHEMA_VERSION = 2
RUN_FORMAT = "sppnet-model"
ONNX_FORMAT = "sppnet-onnx"
ENGINE_FORMAT = "sppnet-engines"
MANIFEST = "manifest.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"  # every model's tensors: (N, 3, H, W) in, (N, classes) out
RUN_INFO = "model.json"
RUN_WEIGHTS = "model.safetensors"

FIX = {
    RUN_FORMAT: "retrain the run (`sppnet train --out RUN`) or restore it",
    ONNX_FORMAT: "re-export it with `sppnet export --checkpoint RUN --out DIR`",
    ENGINE_FORMAT: "rebuild it with `sppnet build --onnx DIR --out ENGINE_DIR`",
}
WHAT = {RUN_FORMAT: "model description", ONNX_FORMAT: "ONNX export manifest", ENGINE_FORMAT: "engine manifest"}
# Versions each format is read at: a run's model.json kept its layout from version 1, the directories did not.
READABLE = {RUN_FORMAT: (1, SCHEMA_VERSION), ONNX_FORMAT: (SCHEMA_VERSION,), ENGINE_FORMAT: (SCHEMA_VERSION,)}

Kind = Literal["fixed", "dynamic"]
KINDS: tuple[str, ...] = ("fixed", "dynamic")
DirectoryKind = Literal["run", "onnx", "engines"]


class ManifestError(ArtifactError):
    """A manifest, or a file it lists, is missing, damaged or does not match; the message names the fix."""


# --- records --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """Which weights a directory holds: their sha256, file (runs only) and where they came from."""

    sha256: str
    file: str | None = None
    source: str | None = None
    trained: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class SizeRange:
    """The input sizes a model directory serves, and the conv/pool geometry to conv5 for torch-free arithmetic."""

    min: int
    max: int
    feature_stride: int
    layers: tuple[tuple[str, int, int, int], ...]

    def conv5(self, height: int, width: int) -> tuple[int, int] | None:
        """conv5's (H, W) for an input of height x width, or None where a layer's output would be empty."""
        geometry: Geometry = [tuple(layer) for layer in self.layers]  # type: ignore[misc]
        return feature_map_size(geometry, height, width)


@dataclass(frozen=True)
class ModelCard:
    """What every manifest says about its network: identity, head, classes, preprocessing, weights, tensor names.

    `spec` is the network's layer table as JSON when the network is not a registered one (an imported model);
    None means `network` names an entry of `sppnet.core.networks.NETWORKS`.
    """

    network: str
    model: ModelConfig
    classes: tuple[str, ...]
    preprocess: Preprocess
    weights: Weights
    spec: dict[str, Any] | None = None
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def network_spec(self) -> NetworkSpec:
        """The layer table this card describes: its own `spec` (an imported network) or the registered network's."""
        return NetworkSpec.from_json(self.spec) if self.spec is not None else get_network(self.network)

    @property
    def levels(self) -> tuple[int, ...]:
        return self.model.levels

    @property
    def rule(self) -> str:
        return self.model.rule

    @property
    def spp(self) -> bool:
        return self.model.spp


@dataclass(frozen=True)
class ModelFile:
    """One model file of an export or engine directory: a fixed size or the dynamic model, with its profiles.

    `spp_form` says how the pyramid is written: "static" (fixed sizes), "decomposed" (standard ONNX ops on the
    runtime shape), "plugin" (a custom node for TensorRT's plugin), or another builder's own form. `source_*`
    name the file an engine was built from.
    """

    file: str
    sha256: str
    bytes: int
    kind: Kind
    scale: tuple[int, int] | None
    precision: str
    spp_form: str
    profiles: tuple[Profile, ...]
    seconds: float = 0.0
    source_file: str | None = None
    source_sha256: str | None = None

    @property
    def max_batch(self) -> int:
        return max(p.max_batch for p in self.profiles)


@dataclass(frozen=True)
class RunInfo:
    """A run directory's `model.json`: the card of its weights, how it was trained, or where it was imported from."""

    card: ModelCard
    train: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportManifest:
    """An ONNX export directory: the card, the size range, batch limits and every ONNX file."""

    card: ModelCard
    sizes: SizeRange
    max_batch: int
    opt_batch: int
    files: tuple[ModelFile, ...]
    opset: int
    producer: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Builder:
    """The module that built a directory's engines and its version (tensorrt, tensorrt_rtx, ...)."""

    module: str
    version: str

    def describe(self) -> str:
        return f"{self.module} {self.version}"


@dataclass(frozen=True)
class EngineManifest:
    """An engine directory: the card, what it was built from and by, for which GPUs, and every engine."""

    card: ModelCard
    sizes: SizeRange
    max_batch: int
    opt_batch: int
    files: tuple[ModelFile, ...]
    builder: Builder
    source_dir: str
    source_manifest_sha256: str
    target: dict[str, Any] = field(default_factory=dict)
    workspace_mb: int | None = None
    timing_cache: dict[str, Any] = field(default_factory=dict)
    skipped: tuple[dict[str, Any], ...] = ()


Manifest = ExportManifest | EngineManifest


# --- JSON ---------------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one JSON object of a manifest, raising ManifestError naming the path, key and fix."""

    def __init__(self, record: Any, where: str, fix: str) -> None:
        if not isinstance(record, dict):
            raise ManifestError(f"{where} is not a JSON object: the file is damaged; {fix}")
        self.record, self.where, self.fix = record, where, fix

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, null: bool = False) -> Any:
        if key not in self.record:
            if default is ...:
                raise ManifestError(f"{self.where} lacks {key!r}: the file is damaged or older; {self.fix}")
            return default
        value = self.record[key]
        if value is None and null:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise ManifestError(f"{self.where}: {key!r} is {value!r}, not a {_names(kind)}; {self.fix}")
        return value

    def sub(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), f"{self.where}.{key}", self.fix)

    def items(self, key: str) -> list[_Reader]:
        return [_Reader(item, f"{self.where}.{key}[{i}]", self.fix) for i, item in enumerate(self.get(key, list))]


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _kinds(kind))


def _ints(values: Any, count: int | None, where: str, fix: str) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(type(v) is int for v in values) or (count and len(values) != count):
        size = f"{count} " if count else ""
        raise ManifestError(f"{where} is {values!r}, not a list of {size}integers: the file is damaged; {fix}")
    return tuple(values)


def _card_json(card: ModelCard) -> dict[str, Any]:
    weights = {k: v for k, v in vars(card.weights).items() if v is not None}
    record: dict[str, Any] = {
        "network": card.network,
        "model": {f.name: getattr(card.model, f.name) for f in fields(card.model)},
        "classes": list(card.classes),
        "preprocess": card.preprocess.to_json(),
        "weights": weights,
        "input": {"name": card.input_name, "dtype": "float32", "layout": "NCHW", "channels": 3},
        "output": {"name": card.output_name, "dtype": "float32", "classes": card.num_classes},
    }
    if card.spec is not None:
        record["spec"] = card.spec
    return record


def _card(r: _Reader) -> ModelCard:
    model = r.sub("model")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(model.record) - known)
    if unknown:
        raise ManifestError(f"{model.where} has unknown keys {unknown}: written by a newer sppnet?; {r.fix}")
    values = dict(model.record)
    if "levels" in values:
        values["levels"] = _ints(values["levels"], None, f"{model.where}.levels", r.fix)
    try:
        config = ModelConfig(**values)
        preprocess = Preprocess.from_json(r.get("preprocess", dict))
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{r.where}: the model or preprocessing record is invalid ({e}); {r.fix}") from e
    w = r.sub("weights")
    weights = Weights(
        sha256=w.get("sha256", str),
        file=w.get("file", str, None),
        source=w.get("source", str, None),
        trained=w.get("trained", bool, True),
        seed=w.get("seed", int, None, null=True),
    )
    classes = r.get("classes", list)
    if not all(isinstance(c, str) for c in classes) or len(classes) != config.num_classes:
        raise ManifestError(f"{r.where}: 'classes' must be {config.num_classes} names (one per output); {r.fix}")
    input_name = r.sub("input").get("name", str) if "input" in r.record else INPUT_NAME
    output_name = r.sub("output").get("name", str) if "output" in r.record else OUTPUT_NAME
    return ModelCard(
        network=r.get("network", str),
        model=config,
        classes=tuple(classes),
        preprocess=preprocess,
        weights=weights,
        spec=r.get("spec", dict, None),
        input_name=input_name,
        output_name=output_name,
    )


def sizes_to_json(sizes: SizeRange) -> dict[str, Any]:
    return {
        "min": sizes.min,
        "max": sizes.max,
        "feature_stride": sizes.feature_stride,
        "layers": [list(layer) for layer in sizes.layers],
    }


def sizes_from_json(record: Any, where: str = "sizes", fix: str = FIX[ONNX_FORMAT]) -> SizeRange:
    """Inverse of `sizes_to_json`; ManifestError naming `where` and `fix` for a malformed record."""
    return _sizes(_Reader(record, where, fix))


def _sizes(r: _Reader) -> SizeRange:
    layers = []
    for i, layer in enumerate(r.get("layers", list)):
        if not (isinstance(layer, list) and len(layer) == 4 and layer[0] in ("conv", "pool")):
            raise ManifestError(f"{r.where}.layers[{i}] is {layer!r}, not [conv|pool, kernel, stride, pad]; {r.fix}")
        layers.append((layer[0], *_ints(layer[1:], 3, f"{r.where}.layers[{i}]", r.fix)))
    low, high = r.get("min", int), r.get("max", int)
    if not 1 <= low <= high:
        raise ManifestError(f"{r.where}: the size range {low}..{high} is empty; {r.fix}")
    return SizeRange(low, high, r.get("feature_stride", int), tuple(layers))  # type: ignore[arg-type]


def _file_json(entry: ModelFile) -> dict[str, Any]:
    record = {
        "file": entry.file,
        "sha256": entry.sha256,
        "bytes": entry.bytes,
        "kind": entry.kind,
        "scale": list(entry.scale) if entry.scale else None,
        "precision": entry.precision,
        "spp_form": entry.spp_form,
        "profiles": [p.to_json() for p in entry.profiles],
        "seconds": entry.seconds,
    }
    if entry.source_file is not None:
        record |= {"source_file": entry.source_file, "source_sha256": entry.source_sha256}
    return record


def _file(r: _Reader) -> ModelFile:
    kind = r.get("kind", str)
    if kind not in KINDS:
        raise ManifestError(f"{r.where}: kind {kind!r} is not one of {', '.join(KINDS)}; {r.fix}")
    scale = r.get("scale", list, None, null=True)
    if kind == "fixed" and scale is None:
        raise ManifestError(f"{r.where}: a fixed model needs its scale; {r.fix}")
    try:
        profiles = tuple(Profile.from_json(p) for p in r.get("profiles", list))
    except ValueError as e:
        raise ManifestError(f"{r.where}: invalid profile ({e}); {r.fix}") from e
    if not profiles:
        raise ManifestError(f"{r.where}: a model file needs at least one optimisation profile; {r.fix}")
    name = r.get("file", str)
    if Path(name).name != name:
        raise ManifestError(f"{r.where}: file {name!r} is not a plain file name in the directory; {r.fix}")
    return ModelFile(
        file=name,
        sha256=r.get("sha256", str),
        bytes=r.get("bytes", int),
        kind=kind,
        scale=_ints(scale, 2, f"{r.where}.scale", r.fix) if scale is not None else None,  # type: ignore[arg-type]
        precision=r.get("precision", str),
        spp_form=r.get("spp_form", str),
        profiles=profiles,
        seconds=float(r.get("seconds", (int, float), 0.0)),
        source_file=r.get("source_file", str, None),
        source_sha256=r.get("source_sha256", str, None),
    )


def to_json(manifest: RunInfo | ExportManifest | EngineManifest) -> dict[str, Any]:
    """The JSON object written for a manifest (without an engine manifest's content hash)."""
    if isinstance(manifest, RunInfo):
        return {
            "format": RUN_FORMAT,
            "version": SCHEMA_VERSION,
            **_card_json(manifest.card),
            "train": manifest.train,
            "origin": manifest.origin,
        }
    common = {
        **_card_json(manifest.card),
        "sizes": sizes_to_json(manifest.sizes),
        "max_batch": manifest.max_batch,
        "opt_batch": manifest.opt_batch,
        "files": [_file_json(f) for f in manifest.files],
    }
    if isinstance(manifest, ExportManifest):
        return {
            "format": ONNX_FORMAT,
            "version": SCHEMA_VERSION,
            **common,
            "opset": manifest.opset,
            "producer": manifest.producer,
        }
    return {
        "format": ENGINE_FORMAT,
        "version": SCHEMA_VERSION,
        **common,
        "builder": {"module": manifest.builder.module, "version": manifest.builder.version},
        "source": {"dir": manifest.source_dir, "manifest_sha256": manifest.source_manifest_sha256},
        "target": manifest.target,
        "workspace_mb": manifest.workspace_mb,
        "timing_cache": manifest.timing_cache,
        "skipped": list(manifest.skipped),
    }


def content_sha256(manifest: EngineManifest) -> str:
    """The hash an engine manifest carries of its own content (what `write_manifest` records)."""
    return _content_sha256(json.loads(json.dumps(to_json(manifest))))


def _content_sha256(record: dict[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key != "content_sha256"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


# --- files ----------------------------------------------------------------------------------------------------


def _read(path: Path, fmt: str) -> _Reader:
    fix = FIX[fmt]
    try:
        record = read_json(path, WHAT[fmt], fix)
    except ValueError as e:
        raise ManifestError(str(e)) from None
    found = (record.get("format"), record.get("version"))
    if found[0] != fmt:
        raise ManifestError(f"{path} is a {found[0]!r} file where a {fmt!r} file ({WHAT[fmt]}) belongs: {fix}")
    if found[1] not in READABLE[fmt]:
        raise ManifestError(
            f"{path} is {fmt} version {found[1]!r}, which this sppnet does not read (it reads "
            f"{', '.join(map(str, READABLE[fmt]))}): {fix} with this version of sppnet"
        )
    return _Reader(record, str(path), fix)


def write_manifest(directory: str | os.PathLike[str], manifest: RunInfo | ExportManifest | EngineManifest) -> Path:
    """Write the manifest atomically into `directory` (after every file it lists is in place); returns its path."""
    record = json.loads(json.dumps(to_json(manifest)))  # what a reader sees: tuples become lists
    if isinstance(manifest, EngineManifest):
        record["content_sha256"] = _content_sha256(record)
    path = Path(directory) / (RUN_INFO if isinstance(manifest, RunInfo) else MANIFEST)
    write_atomic(path, (json.dumps(record, indent=1) + "\n").encode())
    return path


def read_run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    """A run's `model.json` (versions 1 and 2); ManifestError naming the path and the fix otherwise."""
    r = _read(Path(run_dir) / RUN_INFO, RUN_FORMAT)
    card = _card(r)
    if card.weights.file is None:
        raise ManifestError(f"{r.where}: 'weights' names no file; {r.fix}")
    return RunInfo(card, r.get("train", dict, {}), r.get("origin", dict, {}))


def _served(r: _Reader) -> dict[str, Any]:
    """What export and engine manifests share: the card, the size range, batch limits and the model files."""
    return {
        "card": _card(r),
        "sizes": _sizes(r.sub("sizes")),
        "max_batch": r.get("max_batch", int),
        "opt_batch": r.get("opt_batch", int),
        "files": tuple(_file(f) for f in r.items("files")),
    }


def read_export_manifest(directory: str | os.PathLike[str], *, verify: bool = True) -> ExportManifest:
    """An ONNX export's manifest; with `verify`, every listed file must exist and match its sha256."""
    directory = Path(directory)
    r = _read(directory / MANIFEST, ONNX_FORMAT)
    manifest = ExportManifest(
        **_served(r),
        opset=r.get("opset", int),
        producer=r.get("producer", dict, {}),
    )
    if verify:
        verify_files(directory, manifest.files, r.fix)
    return manifest


def read_engine_manifest(directory: str | os.PathLike[str], *, verify: bool = True) -> EngineManifest:
    """An engine directory's manifest after checking its content hash; with `verify`, every engine's sha256."""
    directory = Path(directory)
    r = _read(directory / MANIFEST, ENGINE_FORMAT)
    if r.record.get("content_sha256") != _content_sha256(r.record):
        raise ManifestError(f"{r.where} was edited after the build (its content hash does not match): {r.fix}")
    builder, source = r.sub("builder"), r.sub("source")
    manifest = EngineManifest(
        **_served(r),
        builder=Builder(builder.get("module", str), builder.get("version", str)),
        source_dir=source.get("dir", str),
        source_manifest_sha256=source.get("manifest_sha256", str),
        target=r.get("target", dict, {}),
        workspace_mb=r.get("workspace_mb", int, None, null=True),
        timing_cache=r.get("timing_cache", dict, {}),
        skipped=tuple(r.get("skipped", list, [])),
    )
    if verify:
        verify_files(directory, manifest.files, r.fix)
    return manifest


def verify_files(directory: Path, files: Sequence[ModelFile], fix: str) -> None:
    """Check that every listed file exists and matches its sha256."""
    for entry in files:
        verify_file(directory / entry.file, entry.sha256, directory / MANIFEST, fix)


def verify_file(path: Path, digest: str, listed_in: Path, fix: str) -> Path:
    """`path` after checking that it exists and that its sha256 is `digest`; ManifestError naming the fix."""
    if not path.is_file():
        raise ManifestError(f"{path} is listed in {listed_in} but missing: {fix}")
    found = sha256_file(path)
    if found != digest:
        raise ManifestError(
            f"{path} does not match {listed_in} (sha256 {found[:12]}... instead of {digest[:12]}...): "
            f"the file was changed or truncated; {fix}"
        )
    return path


def file_record(path: Path, **values: Any) -> ModelFile:
    """A `ModelFile` for a file just written: its name, size and sha256, and the given fields."""
    return ModelFile(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size, **values)


def directory_kind(directory: str | os.PathLike[str]) -> DirectoryKind:
    """'run', 'onnx' or 'engines' from what the directory holds; ManifestError naming what to pass otherwise."""
    directory = Path(directory)
    if (directory / RUN_INFO).is_file():
        return "run"
    path = directory / MANIFEST
    if path.is_file():
        try:
            fmt = json.loads(path.read_text()).get("format")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise ManifestError(f"{path} is unreadable ({e}): remake the directory with `sppnet export`/`build`") from e
        if fmt == ENGINE_FORMAT:
            return "engines"
        if fmt == ONNX_FORMAT:
            return "onnx"
    raise ManifestError(
        f"{directory} is not an engine directory (`sppnet build`), an ONNX export (`sppnet export`) or a run "
        "(RUN/model.json from `sppnet train`): pass one of those"
    )
