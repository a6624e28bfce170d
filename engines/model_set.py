"""What the runtime serves: the fixed-size models and the dynamic model of one directory, in one precision.

Three directory kinds: an engine directory (`sppnet build`, TensorRT), an ONNX export (`sppnet export`, ONNX
Runtime) and a training run (`RUN/model.json`, the PyTorch reference). Each carries the network's classes and
preprocessing; manifests and file hashes are verified before anything is loaded. No torch here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.preprocess import Preprocess
from sppnet.export.build import check_engine_dir, engine_profiles, profiles_for
from sppnet.export.manifest import ENGINE_FORMAT, MANIFEST, ONNX_FORMAT, read_manifest
from sppnet.export.profiles import Profile, fixed_profile

KINDS = ("engines", "onnx", "run")
# The PyTorch reference takes any size; this bounds what the runtime sends it.
REFERENCE_MAX_SIZE = 2048


@dataclass(frozen=True)
class ModelFile:
    """One model the runtime can route to: a fixed size or the dynamic one, with its optimisation profiles."""

    name: str
    path: Path
    kind: str  # "fixed" or "dynamic"
    scale: tuple[int, int] | None
    precision: str
    profiles: tuple[Profile, ...]
    entry: dict[str, Any]

    @property
    def max_batch(self) -> int:
        return max(p.max_batch for p in self.profiles)


@dataclass(frozen=True)
class ModelSet:
    """The models of one directory in one precision, with what every route needs to know."""

    directory: Path
    kind: str  # "engines", "onnx" or "run"
    manifest: dict[str, Any]
    files: tuple[ModelFile, ...]
    precision: str

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_json(self.manifest["preprocess"])

    @property
    def network(self) -> str:
        return str(self.manifest["network"])

    @property
    def input_name(self) -> str:
        return str(self.manifest["input"]["name"])

    @property
    def output_name(self) -> str:
        return str(self.manifest["output"]["name"])

    @property
    def spp(self) -> dict[str, Any]:
        return dict(self.manifest["spp"])

    @property
    def fixed(self) -> dict[tuple[int, int], ModelFile]:
        """Fixed-size models by (height, width)."""
        return {f.scale: f for f in self.files if f.kind == "fixed" and f.scale is not None}

    @property
    def dynamic(self) -> ModelFile | None:
        return next((f for f in self.files if f.kind == "dynamic"), None)


def directory_kind(directory: Path) -> str:
    """'engines', 'onnx' or 'run' from what the directory holds; ValueError naming what to pass otherwise."""
    if (directory / "model.json").is_file():
        return "run"
    path = directory / MANIFEST
    if path.is_file():
        try:
            fmt = json.loads(path.read_text()).get("format")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{path} is unreadable ({e}): rebuild the directory with `sppnet export`/`build`") from e
        if fmt == ENGINE_FORMAT:
            return "engines"
        if fmt == ONNX_FORMAT:
            return "onnx"
    raise ValueError(
        f"{directory} is not an engine directory (`sppnet build`), an ONNX export (`sppnet export`) or a training "
        "run (RUN/model.json): pass one of those"
    )


def load_model_set(directory: str | os.PathLike[str], precision: str = "fp32") -> ModelSet:
    """The verified models of `directory` in `precision` (the run directory's reference is fp32 only)."""
    directory = Path(directory)
    kind = directory_kind(directory)
    if kind == "run":
        return _run_set(directory)
    if kind == "engines":
        manifest = check_engine_dir(directory)
        entries = manifest["files"]
        files = [_file(directory, e, tuple(engine_profiles(e))) for e in entries]
    else:
        manifest = read_manifest(directory, ONNX_FORMAT)
        entries = [e for e in manifest["files"] if e["spp_form"] != "plugin"]  # ONNX Runtime has no plugin
        files = [_file(directory, e, tuple(profiles_for(manifest, e))) for e in entries]
    available = sorted({f.precision for f in files})
    chosen = tuple(f for f in files if f.precision == precision)
    if not chosen:
        raise ValueError(
            f"{directory} has no {precision} models (it has {', '.join(available) or 'none'}): pass "
            f"--precision {available[0] if available else 'fp32'} or export/build {precision}"
        )
    return ModelSet(directory, kind, manifest, chosen, precision)


def _file(directory: Path, entry: dict[str, Any], profiles: tuple[Profile, ...]) -> ModelFile:
    scale = tuple(entry["scale"]) if entry.get("scale") else None
    path = directory / entry["file"]
    return ModelFile(entry["file"], path, entry["kind"], scale, entry["precision"], profiles, entry)


def _run_set(directory: Path) -> ModelSet:
    """A training run as a model set: one dynamic model (PyTorch) from the network's smallest input upward."""
    from sppnet.core.networks import geometry, get_network, min_input_size
    from sppnet.core.runs import read_model_info

    info = read_model_info(directory)
    config = info["model"]
    spec = get_network(info["network"])
    smallest, batch = min_input_size(spec), 32
    if config["spp"]:
        scale, kind = None, "dynamic"
        profile = fixed_profile(smallest, smallest, opt_batch=batch, max_batch=batch)
        profile = Profile(profile.min, profile.opt, (batch, 3, REFERENCE_MAX_SIZE, REFERENCE_MAX_SIZE))
    else:  # the no-SPP baseline takes its training size only
        size = config.get("input_size") or spec.input_size
        scale, kind = (size, size), "fixed"
        profile = fixed_profile(size, size, opt_batch=batch, max_batch=batch)
    manifest = {
        "network": info["network"],
        "classes": info["classes"],
        "preprocess": info["preprocess"],
        "input": {"name": "image"},
        "output": {"name": "logits", "classes": config["num_classes"]},
        "spp": {"levels": config["levels"], "rule": config["rule"], "enabled": config["spp"]},
        "sizes": {"min": smallest, "max": REFERENCE_MAX_SIZE, "layers": geometry(spec)},
        "weights": info["weights"],
    }
    entry = {"file": "model.safetensors", "kind": kind, "scale": scale, "precision": "fp32"}
    model = ModelFile("torch", directory, kind, scale, "fp32", (profile,), entry)
    return ModelSet(directory, "run", manifest, (model,), "fp32")
