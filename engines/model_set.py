"""What the runtime serves: the fixed-size models and the dynamic model of one directory, in one precision.

Three directory kinds: an engine directory (`sppnet build`), an ONNX export (`sppnet export`, ONNX Runtime) and a
run (`RUN/model.json`, the PyTorch reference). Each is read through its typed manifest (`sppnet.core.manifest`),
files verified by sha256 before anything is loaded. No torch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sppnet.core.errors import InvalidInput
from sppnet.core.manifest import (
    DirectoryKind,
    EngineManifest,
    ExportManifest,
    ModelCard,
    ModelFile,
    RunInfo,
    SizeRange,
    directory_kind,
    read_engine_manifest,
    read_export_manifest,
    read_run_info,
)
from sppnet.core.networks import feature_stride, geometry, min_input_size
from sppnet.core.profiles import Profile, fixed_profile

# The PyTorch reference takes any size; this bounds what the runtime sends it.
REFERENCE_MAX_SIZE = 2048
REFERENCE_BATCH = 32
RUN_PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Served:
    """What a set of models serves, as routing needs it: the fixed sizes, the dynamic model's profiles, the pyramid.

    Built from a `ModelSet` by the runtime and from a Triton repository's routing table by its clients, so both
    route the same way.
    """

    fixed: dict[tuple[int, int], str]
    dynamic: str | None
    profiles: tuple[Profile, ...]
    levels: tuple[int, ...]
    rule: str
    sizes: SizeRange

    @classmethod
    def of(cls, models: ModelSet) -> Served:
        """What `models` serve (`ModelSet.served` keeps it)."""
        dynamic = models.dynamic
        return cls(
            {scale: f.file for scale, f in models.fixed.items()},
            dynamic.file if dynamic else None,
            dynamic.profiles if dynamic else (),
            models.card.levels,
            models.card.rule,
            models.sizes,
        )


@dataclass(frozen=True)
class ModelSet:
    """The models of one directory in one precision, with the card and size range every route needs."""

    directory: Path
    kind: DirectoryKind
    manifest: EngineManifest | ExportManifest | RunInfo
    files: tuple[ModelFile, ...]
    precision: str
    sizes: SizeRange

    @property
    def card(self) -> ModelCard:
        return self.manifest.card

    @cached_property
    def fixed(self) -> dict[tuple[int, int], ModelFile]:
        """Fixed-size models by (height, width)."""
        return {f.scale: f for f in self.files if f.kind == "fixed" and f.scale is not None}

    @cached_property
    def dynamic(self) -> ModelFile | None:
        return next((f for f in self.files if f.kind == "dynamic"), None)

    @cached_property
    def served(self) -> Served:
        """What routing needs, computed once: every image is routed against it."""
        return Served.of(self)

    def path(self, model: ModelFile) -> Path:
        """Where a model's file lies."""
        return self.directory / model.file

    def max_batch(self, route_model: str, profile: int) -> int:
        """The largest batch a route's model takes in its profile."""
        return self._by_file[route_model].profiles[profile].max_batch

    @cached_property
    def _by_file(self) -> dict[str, ModelFile]:
        return {f.file: f for f in self.files}


def load_model_set(directory: str | os.PathLike[str], precision: str = "fp32") -> ModelSet:
    """The verified models of `directory` in `precision`."""
    directory = Path(directory)
    kind = directory_kind(directory)
    if kind == "run":
        return _run_set(directory, precision)
    manifest: EngineManifest | ExportManifest
    if kind == "engines":
        manifest = read_engine_manifest(directory)
        files = manifest.files
    else:
        manifest = read_export_manifest(directory)
        files = tuple(f for f in manifest.files if f.spp_form != "plugin")  # ONNX Runtime has no plugin
    available = sorted({f.precision for f in files})
    chosen = tuple(f for f in files if f.precision == precision)
    if not chosen:
        raise InvalidInput(
            f"{directory} has no {precision} models (it has {', '.join(available) or 'none'}): pass "
            f"--precision {available[0] if available else 'fp32'} or export/build {precision}"
        )
    return ModelSet(directory, kind, manifest, chosen, precision, manifest.sizes)


def _run_set(directory: Path, precision: str) -> ModelSet:
    """A run as a model set: one PyTorch model, dynamic from the network's smallest input (fixed for no-SPP)."""
    if precision not in RUN_PRECISIONS:
        raise InvalidInput(f"a run runs in {', '.join(RUN_PRECISIONS)}, not {precision}: pass one of those")
    info = read_run_info(directory)
    card, spec = info.card, info.card.network_spec()
    smallest = min_input_size(spec)
    batches = {"opt_batch": REFERENCE_BATCH, "max_batch": REFERENCE_BATCH}
    if card.spp:
        scale, kind = None, "dynamic"
        low = fixed_profile(smallest, smallest, **batches)
        profile = Profile(low.min, low.opt, (REFERENCE_BATCH, 3, REFERENCE_MAX_SIZE, REFERENCE_MAX_SIZE))
    else:  # the no-SPP baseline takes its training size only
        size = card.model.input_size or spec.input_size
        scale, kind = (size, size), "fixed"
        profile = fixed_profile(size, size, **batches)
    weights = directory / (card.weights.file or "")
    model = ModelFile(
        file=weights.name,
        sha256=card.weights.sha256,
        bytes=weights.stat().st_size if weights.is_file() else 0,
        kind=kind,  # type: ignore[arg-type]
        scale=scale,
        precision=precision,
        spp_form="pytorch",
        profiles=(profile,),
    )
    sizes = SizeRange(smallest, REFERENCE_MAX_SIZE, feature_stride(spec), tuple(tuple(g) for g in geometry(spec)))
    return ModelSet(directory, "run", info, (model,), precision, sizes)  # type: ignore[arg-type]
