"""`sppnet build`: engines from an ONNX export directory, and the engine manifest the runtime checks.

One engine per fixed-size model and the dynamic engine(s): the plugin form where full TensorRT and the sppnet
plugin are available, else the decomposed form (TensorRT-RTX has no plugins). Every ONNX file is verified (hash,
onnx.checker, inputs and outputs) before a builder sees it; engines are written atomically and the manifest last,
so an interrupted build leaves no partial engine and no manifest. No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.atomic import sha256_file, write_atomic
from sppnet.core.errors import BuildError, InvalidInput, one_line
from sppnet.core.manifest import (
    FIX,
    MANIFEST,
    ONNX_FORMAT,
    Builder,
    EngineManifest,
    ExportManifest,
    ManifestError,
    ModelFile,
    file_record,
    read_export_manifest,
    write_manifest,
)
from sppnet.export.trt_builder import EngineFromNetwork, NetworkFromOnnx, target_capabilities
from sppnet.export.trt_module import Backend, load_backend

PRECISIONS = ("fp32", "fp16")
KINDS = ("fixed", "dynamic")
DEFAULT_WORKSPACE_MB = 4096
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class Job:
    """One engine to build: the ONNX file it comes from and the engine file's name."""

    entry: ModelFile
    engine_file: str


def _choices(values: Iterable[str] | None, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if values is None:
        return tuple(allowed)
    chosen = tuple(values)
    unknown = sorted(set(chosen) - set(allowed))
    if unknown or not chosen:
        raise InvalidInput(f"{what} {unknown or 'none'} not recognised: choose from {', '.join(allowed)}")
    return chosen


def plugin_status() -> tuple[bool, str]:
    """Whether the sppnet SPP plugin is registered with full TensorRT, and if not, why."""
    try:
        from .trt_plugin import register_spp_plugin
    except ImportError as e:
        return False, f"the sppnet SPP plugin cannot be imported ({e})"
    try:
        registered = register_spp_plugin()
    except BuildError as e:  # e.g. a TensorRT without tensorrt.plugin
        return False, f"the sppnet SPP plugin could not be registered ({e})"
    if not registered:
        return False, "the sppnet SPP plugin could not be registered with TensorRT"
    return True, "registered"


def plan_builds(
    manifest: ExportManifest,
    backend: Backend,
    *,
    precisions: Sequence[str],
    kinds: Sequence[str],
    plugin: Callable[[], tuple[bool, str]] = plugin_status,
) -> tuple[list[Job], list[dict[str, Any]]]:
    """The engines to build from an ONNX manifest with this backend, and the files skipped with their reasons."""
    wanted = [e for e in manifest.files if e.precision in precisions and e.kind in kinds]
    skipped = [
        {**_identity(e), "reason": f"not requested (precisions {', '.join(precisions)}; kinds {', '.join(kinds)})"}
        for e in manifest.files
        if e not in wanted
    ]
    plugin_ok, plugin_why = False, ""
    if any(e.spp_form == "plugin" for e in wanted):
        if backend.supports_plugins:
            plugin_ok, plugin_why = plugin()
        else:
            plugin_why = (
                f"{backend.describe()} has no plugins, so it cannot build the custom SpatialPyramidPooling node "
                "(its ONNX parser must never see it); the decomposed dynamic engine serves the same sizes"
            )
    plugin_precisions = {e.precision for e in wanted if e.spp_form == "plugin"} if plugin_ok else set()
    jobs = []
    for entry in wanted:
        if entry.spp_form == "plugin" and not plugin_ok:
            skipped.append({**_identity(entry), "reason": plugin_why})
        elif entry.spp_form == "decomposed" and entry.precision in plugin_precisions:
            skipped.append({**_identity(entry), "reason": "the plugin form of the same precision is built instead"})
        else:
            jobs.append(Job(entry, Path(entry.file).stem + ".engine"))
    return jobs, skipped


def _identity(entry: ModelFile) -> dict[str, Any]:
    scale = list(entry.scale) if entry.scale else None
    return {"kind": entry.kind, "scale": scale, "precision": entry.precision, "spp_form": entry.spp_form} | {
        "source_file": entry.file
    }


def check_onnx_file(path: Path, entry: ModelFile, manifest: ExportManifest) -> None:
    """Refuse, in one line, an ONNX file that does not load, fails onnx.checker or has the wrong inputs/outputs."""
    import onnx

    fix = FIX[ONNX_FORMAT]
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, onnx ValidationError, OSError: all mean a bad file
        reason = one_line(e)
        raise ManifestError(f"{path} is not a valid ONNX model ({type(e).__name__}: {reason}): {fix}") from e
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    input_name, output_name = manifest.card.input_name, manifest.card.output_name
    if [i.name for i in inputs] != [input_name] or [o.name for o in graph.output] != [output_name]:
        raise ManifestError(
            f"{path} has inputs {[i.name for i in inputs]} and outputs {[o.name for o in graph.output]}, not "
            f"[{input_name!r}] and [{output_name!r}] as its manifest says: {fix}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    fixed = entry.kind == "fixed" and entry.scale is not None
    spatial_ok = dims[2:] == list(entry.scale) if fixed else all(isinstance(d, str) for d in dims[2:])  # type: ignore[arg-type]
    if len(dims) != 4 or dims[1] != 3 or not spatial_ok:
        expected = f"[N, 3, {', '.join(map(str, entry.scale))}]" if fixed else "[N, 3, H, W] with symbolic H and W"  # type: ignore[arg-type]
        raise ManifestError(f"{path} takes input {dims}, not {expected} as its {entry.kind} entry says: {fix}")


def _relative(path: Path, directory: Path) -> str:
    try:
        return str(path.resolve().relative_to(directory.resolve()))
    except ValueError:
        return str(path.resolve())


def build_engines(
    onnx_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    precisions: Iterable[str] | None = None,
    kinds: Iterable[str] | None = None,
    workspace_mb: int | None = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike[str] | None = None,
    compute_capabilities: Sequence[str] | None = None,
    builder: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build the engines of an ONNX export directory into `out_dir`; returns the engine manifest's path.

    Args:
        precisions, kinds: subsets of ("fp32", "fp16") and ("fixed", "dynamic"); None builds all.
        workspace_mb: scratch memory the builder's tactics may use (None: the builder's default).
        timing_cache: the timing cache file (default `out_dir/timing.cache`; full TensorRT only).
        compute_capabilities: TensorRT-RTX targets such as ("8.6", "12.0"); None keeps its defaults.
        builder: "tensorrt" or "tensorrt_rtx"; None takes the first importable.
    """
    precisions = _choices(precisions, PRECISIONS, "precisions")
    kinds = _choices(kinds, KINDS, "kinds")
    if workspace_mb is not None and workspace_mb < 1:
        raise InvalidInput(f"workspace must be at least 1 MiB; got {workspace_mb}")
    onnx_dir, out = Path(onnx_dir), Path(out_dir)
    if out.resolve() == onnx_dir.resolve():
        raise InvalidInput(f"the engine directory {out} is the ONNX directory: choose another --out")
    manifest = read_export_manifest(onnx_dir, verify=True)
    onnx_manifest_sha256 = sha256_file(onnx_dir / MANIFEST)
    backend = load_backend(builder)
    if compute_capabilities is not None:
        target_capabilities(backend, compute_capabilities)  # refuse unknown targets before anything is built
    jobs, skipped = plan_builds(manifest, backend, precisions=precisions, kinds=kinds)
    if not jobs:
        reasons = "; ".join(f"{s['source_file']}: {s['reason']}" for s in skipped) or "the manifest lists no files"
        raise InvalidInput(f"nothing to build from {onnx_dir} with {backend.describe()} ({reasons})")
    for job in jobs:
        check_onnx_file(onnx_dir / job.entry.file, job.entry, manifest)

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted rebuild must not leave the old manifest listing engines
    cache_path = Path(timing_cache) if timing_cache is not None else out / TIMING_CACHE
    entries, cache_records = [], []
    for number, job in enumerate(jobs, 1):
        if progress:
            progress(f"[{number}/{len(jobs)}] building {job.engine_file} with {backend.describe()}")
        built = EngineFromNetwork(
            NetworkFromOnnx(onnx_dir / job.entry.file, backend=backend),
            profiles=job.entry.profiles,
            workspace_mb=workspace_mb,
            timing_cache=cache_path,
            compute_capabilities=compute_capabilities,
        )()
        path = out / job.engine_file
        write_atomic(path, built.data)
        cache_records.append(built.timing_cache)
        source = job.entry
        entries.append(
            file_record(
                path,
                kind=source.kind,
                scale=source.scale,
                precision=source.precision,
                spp_form=source.spp_form,
                profiles=source.profiles,
                seconds=round(built.seconds, 3),
                source_file=source.file,
                source_sha256=source.sha256,
            )
        )
        if progress:
            progress(f"{job.engine_file}: {len(built.data) / 2**20:.1f} MiB in {built.seconds:.1f} s")
    for record in skipped:
        if progress:
            progress(f"skipped {record['source_file']}: {record['reason']}")

    cache = dict(cache_records[0])
    if cache.get("file") is not None:
        cache.update(file=_relative(cache_path, out), saved_bytes=cache_records[-1].get("saved_bytes"))
    engine_manifest = EngineManifest(
        card=manifest.card,
        sizes=manifest.sizes,
        max_batch=manifest.max_batch,
        opt_batch=manifest.opt_batch,
        files=tuple(entries),
        builder=Builder(**built.builder),
        source_dir=str(onnx_dir.resolve()),
        source_manifest_sha256=onnx_manifest_sha256,
        target=built.target,
        workspace_mb=workspace_mb,
        timing_cache=cache,
        skipped=tuple(skipped),
    )
    return write_manifest(out, engine_manifest)
