"""A Triton Inference Server model repository from an engine directory, with the routing a client must follow.

One model per fixed-size engine, and one per optimisation profile of the dynamic engine: the plan is shared (hard
linked where the filesystem allows) and each model pins its profile with `instance_group.profile`, so its
`max_batch_size` is that profile's. One model over all profiles would let Triton pick the profile by shape, but its
dynamic batcher knows nothing of profiles and can form a batch of large images bigger than the large-image profile
takes (2 where the small-image profile takes 8, in the CPU test build), which no profile serves. The repository is
built in a temporary directory, every config.pbtxt parsed with Triton's own schema (tritonclient), and renamed into
place, so a reader never sees half of one.

TensorRT-RTX engines are not what Triton's TensorRT backend loads (it links full TensorRT, and a plan runs only
under the exact TensorRT version that built it): `write_model_repository` refuses them unless `allow_rtx=True`,
which writes the same layout (to inspect, or to fill with full-TensorRT plans) with that note in the README and in
every config. Nothing here has been served by a Triton server: the configs are checked against Triton's schema.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sppnet.core.atomic import sha256_file, write_atomic
from sppnet.core.errors import InvalidInput
from sppnet.core.manifest import (
    MANIFEST,
    EngineManifest,
    SizeRange,
    content_sha256,
    read_engine_manifest,
    sizes_from_json,
    sizes_to_json,
)
from sppnet.core.profiles import Profile
from sppnet.engines.routing import Served, route_size

REPOSITORY_FORMAT = "sppnet-triton-repository"
ROUTING = "routing.json"
README = "README.txt"
PLAN = "model.plan"
LABELS = "labels.txt"
DEFAULT_QUEUE_DELAY_US = 100
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
REBUILD_FULL = (
    "rebuild the engines with full TensorRT (`sppnet build --builder tensorrt`) on the serving GPU, with the "
    "TensorRT version of the Triton release that will serve them"
)
RTX_NOTE = (
    "these engines were built by TensorRT-RTX, which Triton's TensorRT backend (platform tensorrt_plan, full "
    f"TensorRT) cannot load: this repository shows the layout and routing only; to serve it, {REBUILD_FULL}, "
    "then regenerate it"
)


class RepositoryError(InvalidInput):
    """The repository cannot be written as asked; one line naming the fix."""


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: an engine (and, for the dynamic engine, one of its profiles) and its range."""

    name: str
    engine_file: str
    kind: str
    precision: str
    profile: int
    min_size: tuple[int, int]
    max_size: tuple[int, int]
    opt_batch: int
    max_batch: int

    def covers(self, height: int, width: int) -> bool:
        """Whether an input of height x width is in this model's range."""
        return self.min_size[0] <= height <= self.max_size[0] and self.min_size[1] <= width <= self.max_size[1]

    def describe(self) -> str:
        (h0, w0), (h1, w1) = self.min_size, self.max_size
        size = f"exactly {h0}x{w0}" if self.kind == "fixed" else f"{h0}x{w0} to {h1}x{w1}"
        return f"{size}, batch 1..{self.max_batch}"


def repository_models(manifest: EngineManifest) -> list[TritonModel]:
    """The models for an engine manifest in routing order: fixed sizes first, then the dynamic profiles in order."""
    models = []
    for entry in sorted(manifest.files, key=lambda e: e.kind != "fixed"):
        stem = Path(entry.file).stem
        for index, profile in enumerate(entry.profiles):
            models.append(
                TritonModel(
                    name=stem if entry.kind == "fixed" else f"{stem}_p{index}",
                    engine_file=entry.file,
                    kind=entry.kind,
                    precision=entry.precision,
                    profile=index,
                    min_size=(profile.min[2], profile.min[3]),
                    max_size=(profile.max[2], profile.max[3]),
                    opt_batch=profile.opt[0],
                    max_batch=profile.max[0],
                )
            )
    names = [m.name for m in models]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise RepositoryError(f"engine files would give models of the same name ({', '.join(clashes)}): rebuild them")
    return models


@dataclass(frozen=True)
class Routes:
    """A repository's routing table: its models and the pyramid, so a client routes as sppnet's runtime does."""

    models: tuple[TritonModel, ...]
    levels: tuple[int, ...]
    rule: str
    sizes: SizeRange

    def route(self, height: int, width: int, precision: str) -> TritonModel:
        """The model for an input of height x width in `precision`, by `sppnet.engines.routing.route_size`."""
        mine = [m for m in self.models if m.precision == precision]
        if not mine:
            have = sorted({m.precision for m in self.models})
            raise RepositoryError(f"the repository has no {precision} models (it has {', '.join(have)}): pick one")
        dynamic = [m for m in mine if m.kind == "dynamic"]
        profiles = tuple(_profile(m) for m in sorted(dynamic, key=lambda m: m.profile))
        served = Served(
            {m.min_size: m.engine_file for m in mine if m.kind == "fixed"},
            dynamic[0].engine_file if dynamic else None,
            profiles,
            self.levels,
            self.rule,
            self.sizes,
        )
        chosen = route_size(height, width, served)
        return next(m for m in mine if m.engine_file == chosen.model and m.profile == chosen.profile)


def _profile(model: TritonModel) -> Profile:
    (h0, w0), (h1, w1) = model.min_size, model.max_size
    return Profile((1, 3, h0, w0), (model.opt_batch, 3, h1, w1), (model.max_batch, 3, h1, w1))


def model_config_schema() -> Any:
    """Triton's ModelConfig protobuf class from tritonclient.

    `tritonclient.grpc` refuses to import without its grpc extra (grpcio, which also pins protobuf below 7); the
    schema module itself needs only protobuf, so it is loaded from the installed package when that happens.
    """
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as e:
        spec = importlib.util.find_spec("tritonclient")
        if spec is None or not spec.submodule_search_locations:
            raise RepositoryError(
                f"checking config.pbtxt needs Triton's model config schema ({e}): pip install tritonclient"
            ) from e
        path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
        model_config_pb2 = _load_module("_sppnet_triton_model_config_pb2", path)
    return model_config_pb2.ModelConfig


def _load_module(name: str, path: Path) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise RepositoryError(f"tritonclient has no {path}: reinstall it (pip install --force-reinstall tritonclient)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def parse_model_config(text: str, where: str) -> Any:
    """The ModelConfig message of config.pbtxt `text`; a one-line RepositoryError if Triton's schema refuses it."""
    from google.protobuf import text_format

    config = model_config_schema()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise RepositoryError(f"{where} is not a valid Triton model config ({e}): report this as a bug") from e
    return config


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string for these characters


def model_config_text(
    model: TritonModel,
    manifest: EngineManifest,
    manifest_sha256: str,
    *,
    max_queue_delay_us: int,
    instance_count: int,
) -> str:
    """The config.pbtxt of one model."""
    card, builder = manifest.card, manifest.builder
    height, width = model.min_size if model.kind == "fixed" else (-1, -1)
    preferred = sorted({model.opt_batch, model.max_batch})
    notes = []
    if model.kind == "dynamic":
        notes += [
            f"# Profile {model.profile} of {model.engine_file} only ({model.describe()}).",
            "# Triton picks a plan's optimisation profile by input shape among those an instance lists; this",
            "# model lists one, so max_batch_size is that profile's. Other sizes: the other models (README.txt).",
        ]
    if builder.module == "tensorrt_rtx":
        notes.append("# NOTE: built by TensorRT-RTX; Triton's tensorrt_plan backend cannot load it (README.txt).")
    parameters = {
        "sppnet_manifest_sha256": manifest_sha256,
        "sppnet_content_sha256": content_sha256(manifest),
        "sppnet_engine_file": model.engine_file,
        "sppnet_builder": builder.describe(),
        "sppnet_profile": str(model.profile),
    }
    instance = f"    count: {instance_count}\n    kind: KIND_GPU\n"
    if model.kind == "dynamic":
        instance += f"    profile: [{_quote(str(model.profile))}]\n"
    lines = [
        *notes,
        f"name: {_quote(model.name)}",
        'platform: "tensorrt_plan"',
        f"default_model_filename: {_quote(PLAN)}",
        f"max_batch_size: {model.max_batch}",
        "input [",
        "  {",
        f"    name: {_quote(card.input_name)}",
        f"    data_type: {_triton_type('float32')}",
        "    format: FORMAT_NCHW",
        f"    dims: [3, {height}, {width}]",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {_quote(card.output_name)}",
        f"    data_type: {_triton_type('float32')}",
        f"    dims: [{card.num_classes}]",
        f"    label_filename: {_quote(LABELS)}",
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [{', '.join(map(str, preferred))}]",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        instance.rstrip("\n"),
        "  }",
        "]",
        *(f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}" for k, v in parameters.items()),
    ]
    return "\n".join(lines) + "\n"


def _triton_type(dtype: str) -> str:
    if dtype not in TRITON_TYPES:
        raise RepositoryError(f"no Triton data type for {dtype!r} (supported: {', '.join(TRITON_TYPES)}): re-export")
    return TRITON_TYPES[dtype]


def readme_text(models: list[TritonModel], manifest: EngineManifest, engine_dir: Path) -> str:
    """The repository's README: what it serves, how to run it, and which size goes to which model."""
    card, builder, target = manifest.card, manifest.builder, manifest.target
    lines = [
        f"Triton model repository for sppnet {card.network} ({card.num_classes} classes),",
        f"generated by sppnet.engines.serve_repo from {engine_dir.resolve()}.",
        "",
    ]
    if builder.module == "tensorrt_rtx":
        lines += [f"NOTE: {RTX_NOTE}.", ""]
    targets = target.get("compute_capabilities") or [target.get("set_by", "the building GPU")]
    lines += [
        f"Engines: {builder.describe()}; GPUs: {', '.join(map(str, targets))}"
        + (" and later" if target.get("and_later") else "")
        + ". A plan runs only under that exact TensorRT version.",
        f"Input {card.input_name!r}: float32 (N, 3, H, W), the Caffe preprocessing of the training "
        f"pipeline (BGR, mean {list(card.preprocess.mean_bgr)} subtracted, times "
        f"{card.preprocess.scale}); output {card.output_name!r}: "
        f"(N, {card.num_classes}) logits, class names in each model's {LABELS}.",
        "Serve: tritonserver --model-repository <this directory>",
        "",
        "Routing (what sppnet's runtime does; a client of this repository must do the same): pick a precision,",
        "then send an input of H x W to the first model of that precision whose range takes it. Batch only",
        "inputs of one size, up to the model's batch limit. Sizes outside every range: resize them into one.",
    ]
    for precision in sorted({m.precision for m in models}):
        lines += ["", f"{precision}:"]
        for number, model in enumerate((m for m in models if m.precision == precision), 1):
            lines.append(f"  {number}. {model.describe():34} -> {model.name}")
    lines += ["", f"The same table as JSON: {ROUTING} (read by sppnet.engines.serve_repo.read_routes)."]
    return "\n".join(lines) + "\n"


def _place_plan(source: Path, target: Path) -> str:
    """Hard-link the engine as the model's plan (a rebuild replaces the engine file, never this inode), or copy."""
    try:
        os.link(source, target)
        return "hard link"
    except OSError:
        shutil.copyfile(source, target)
        with open(target, "rb") as f:
            os.fsync(f.fileno())
        return "copy"


def _is_repository(path: Path) -> bool:
    try:
        return json.loads((path / ROUTING).read_text()).get("format") == REPOSITORY_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_model_repository(
    engine_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance_count: int = 1,
    allow_rtx: bool = False,
) -> Path:
    """Write a Triton model repository for a checked engine directory to `out_dir`; returns `out_dir`.

    `out_dir` is replaced whole if it is a repository this function wrote, and refused if it is anything else.
    TensorRT-RTX engines are refused unless `allow_rtx` (see the module docstring).
    """
    if max_queue_delay_us < 0:
        raise RepositoryError(f"max queue delay must be >= 0 microseconds; got {max_queue_delay_us}")
    if instance_count < 1:
        raise RepositoryError(f"instance count must be at least 1; got {instance_count}")
    engines, out = Path(engine_dir), Path(out_dir)
    manifest = read_engine_manifest(engines)
    if manifest.builder.module == "tensorrt_rtx" and not allow_rtx:
        raise RepositoryError(
            f"{engines} holds TensorRT-RTX engines, which Triton's TensorRT backend cannot load: {REBUILD_FULL}, "
            "or pass --allow-rtx (allow_rtx=True) to write the layout anyway"
        )
    if out.exists() and not _is_repository(out):
        raise RepositoryError(
            f"{out} exists and is not an sppnet Triton repository: choose another output or remove it"
        )
    models = repository_models(manifest)
    manifest_sha256 = sha256_file(engines / MANIFEST)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    staging = out.parent / f".{out.name}.{token}.tmp"
    staging.mkdir()
    try:
        _fill(staging, engines, models, manifest, manifest_sha256, max_queue_delay_us, instance_count)
        _swap_in(staging, out, token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _fill(
    staging: Path,
    engines: Path,
    models: list[TritonModel],
    manifest: EngineManifest,
    manifest_sha256: str,
    max_queue_delay_us: int,
    instance_count: int,
) -> None:
    """Write every model directory, the routing table and the README into `staging`."""
    labels = ("\n".join(manifest.card.classes) + "\n").encode()
    placed = {}
    for model in models:
        directory = staging / model.name
        (directory / "1").mkdir(parents=True)
        text = model_config_text(
            model, manifest, manifest_sha256, max_queue_delay_us=max_queue_delay_us, instance_count=instance_count
        )
        parse_model_config(text, f"{model.name}/config.pbtxt")
        write_atomic(directory / "config.pbtxt", text.encode())
        write_atomic(directory / LABELS, labels)
        placed[model.name] = _place_plan(engines / model.engine_file, directory / "1" / PLAN)
    routing = {
        "format": REPOSITORY_FORMAT,
        "version": 2,
        "engine_dir": str(engines.resolve()),
        "engine_manifest_sha256": manifest_sha256,
        "builder": {"module": manifest.builder.module, "version": manifest.builder.version},
        "triton_loadable": manifest.builder.module != "tensorrt_rtx",
        "pyramid": {"levels": list(manifest.card.levels), "rule": manifest.card.rule},
        "sizes": sizes_to_json(manifest.sizes),
        "models": [asdict(m) | {"plan": placed[m.name]} for m in models],
    }
    write_atomic(staging / ROUTING, (json.dumps(routing, indent=1) + "\n").encode())
    write_atomic(staging / README, readme_text(models, manifest, engines).encode())


def _swap_in(staging: Path, out: Path, token: str) -> None:
    """Rename the finished repository into place; an old one is moved aside first and removed after."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.{token}.old"
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def read_routes(repository: str | os.PathLike[str]) -> Routes:
    """The routing table of a repository this module wrote (route with `Routes.route`)."""
    path = Path(repository) / ROUTING
    if not _is_repository(Path(repository)):
        raise RepositoryError(f"{path} is missing or not an sppnet Triton routing table: regenerate the repository")
    record = json.loads(path.read_text())
    fields = set(TritonModel.__dataclass_fields__)
    models = tuple(
        TritonModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items() if k in fields})
        for r in record["models"]
    )
    pyramid = record["pyramid"]
    sizes = sizes_from_json(record["sizes"], f"{path}: sizes", "regenerate the repository")
    return Routes(models, tuple(pyramid["levels"]), pyramid["rule"], sizes)
