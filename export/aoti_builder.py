"""Compiled PyTorch engines: torch.export + AOTInductor packages, one per fixed scale and one dynamic, built ahead
of time so that serving needs no compile step; the engine kind for GPUs TensorRT cannot run on (Hopper here).

Built from an ONNX export directory: the same scales, size range, batch limits and profiles, and the run its
weights came from (verified by sha256 against the export's manifest). Each package is the branch-free
`TorchForm` (masked pyramid, padded Caffe pooling) in fp32, fp16 or bf16, channels_last, traced with symbolic
batch (and H, W for the dynamic one), compiled for the device it is built on, then run against eager PyTorch fp32
at sizes the example input did not have before it is kept. Packages are written atomically, `verify.json` with
the measured errors next, the `EngineManifest` (builder torch_aoti and this torch's version, target device) last.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppnet.core.atomic import sha256_file, write_atomic
from sppnet.core.errors import BuildError, InvalidInput, OutOfMemory, one_line
from sppnet.core.layers import CaffePool2d
from sppnet.core.manifest import (
    MANIFEST,
    Builder,
    EngineManifest,
    ExportManifest,
    file_record,
    read_export_manifest,
    write_manifest,
)
from sppnet.core.models import SPPNet
from sppnet.core.profiles import Profile
from sppnet.export.onnx_export import source_of_export
from sppnet.export.torch_form import DTYPES, TorchForm

BUILDER = "torch_aoti"
PRECISIONS = tuple(DTYPES)
KINDS = ("fixed", "dynamic")
SPP_FORM = "masked"
VERIFY_FILE = "verify.json"
# The runtime comparator's tolerances (sppnet.engines.compare.TOLERANCE), restated here: export sits below engines.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


@dataclass(frozen=True)
class Job:
    """One package to build: kind, scale (fixed) and precision, with the profiles the export gave that model."""

    kind: str
    scale: tuple[int, int] | None
    precision: str
    profiles: tuple[Profile, ...]

    @property
    def file(self) -> str:
        where = f"{self.scale[0]}x{self.scale[1]}" if self.scale else "dynamic"
        return f"{where}_{self.precision}.pt2"


def default_device() -> str:
    """The device packages are built for when none is named: the GPU if torch sees one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def target_of(device: str, *, vectorize: bool = True) -> dict[str, Any]:
    """What a package is compiled for, as the manifest records it and the runner checks it."""
    record: dict[str, Any] = {"device": device.split(":")[0], "machine": platform.machine()}
    if record["device"] == "cuda":
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        record |= {"name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}
        record |= {"cuda": torch.version.cuda}
    else:
        record |= {"isa": torch.backends.cpu.get_cpu_capability() if vectorize else "scalar"}
    return record


def check_device(device: str) -> str:
    """`device` if torch can build for it here; InvalidInput naming the fix otherwise."""
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise InvalidInput(f"device {device!r} is not cpu or cuda: AOTInductor packages are built for one of those")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(
            f"--device {device}: torch {torch.__version__} sees no CUDA GPU here; build on the GPU machine the "
            "engines will run on (AOTInductor compiles for the GPU it sees), or build for the cpu"
        )
    return device


def check_symbolic(model: SPPNet) -> None:
    """Refuse a dynamic package of a network whose pooling works out its windows from the input size in Python
    (an imported Caffe pool with padding, AVE or a size-dependent clip): torch.export would fix them at the example
    size, and AOTInductor does not check that guard, so the package would be silently wrong at other sizes."""
    for name, layer in model.features.named_children():
        if isinstance(layer, CaffePool2d) and not layer.global_pooling:
            raise InvalidInput(
                f"{model.spec.name}'s pool {name} ({layer.extra_repr()}) computes its windows from the input size: "
                "a dynamic package cannot hold it exactly; build fixed sizes only (--kind fixed)"
            )


def plan_jobs(
    manifest: ExportManifest,
    precisions: Sequence[str],
    kinds: Sequence[str],
    scales: Iterable[tuple[int, int]] | None = None,
) -> list[Job]:
    """The packages to build: every fixed scale of the export (or those of `scales`), and its dynamic model, in
    each precision."""
    wanted = None if scales is None else {tuple(s) for s in scales}
    fixed: dict[tuple[int, int], tuple[Profile, ...]] = {}
    dynamic: tuple[Profile, ...] | None = None
    for entry in manifest.files:
        if entry.kind == "fixed" and entry.scale is not None and (wanted is None or entry.scale in wanted):
            fixed.setdefault(entry.scale, entry.profiles)
        elif entry.kind == "dynamic" and dynamic is None:
            dynamic = entry.profiles
    jobs = [Job("fixed", s, p, profiles) for s, profiles in fixed.items() for p in precisions if "fixed" in kinds]
    if dynamic is not None and "dynamic" in kinds:
        jobs += [Job("dynamic", None, p, dynamic) for p in precisions]
    return jobs


def _size_oblivious() -> contextlib.AbstractContextManager[Any]:
    """Trace sizes without specialising on 0 or 1: a conv5 side of 1 must not become a guard nobody checks."""
    import torch.fx.experimental._config as fx_config

    if hasattr(fx_config, "backed_size_oblivious"):
        return fx_config.patch(backed_size_oblivious=True)
    return contextlib.nullcontext()


def _example_and_dims(job: Job, device: str) -> tuple[torch.Tensor, dict[int, Any]]:
    """An example input at the first profile's tuned size and the symbolic dimensions of the package's input."""
    from torch.export import Dim

    profiles = job.profiles
    max_batch = max(p.max_batch for p in profiles)
    opt = profiles[0].opt
    dims: dict[int, Any] = {}
    if max_batch > 1:  # an example batch of 2: a batch of 1 would be specialised
        dims[0] = Dim("batch", min=1, max=max_batch)
    if job.kind == "dynamic":
        dims[2] = Dim("height", min=min(p.min[2] for p in profiles), max=max(p.max[2] for p in profiles))
        dims[3] = Dim("width", min=min(p.min[3] for p in profiles), max=max(p.max[3] for p in profiles))
    example = torch.randn(min(2, max_batch), 3, opt[2], opt[3], device=device)
    return example, dims


@contextlib.contextmanager
def _without_torch_deprecations() -> Iterator[None]:
    """torch 2.13 warns about its own pytree internals (`LeafSpec`) while exporting and packaging: not ours to fix,
    and three lines of it per package bury the build's own output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated", category=FutureWarning)
        yield


def export_program(form: TorchForm, job: Job, device: str) -> Any:
    """The `ExportedProgram` of one package: symbolic batch, and symbolic H and W for the dynamic model."""
    example, dims = _example_and_dims(job, device)
    try:
        with torch.no_grad(), _size_oblivious(), _without_torch_deprecations():
            return torch.export.export(form, (example,), dynamic_shapes=(dims,), strict=False)
    except Exception as e:  # torch.export raises several internal types; all mean this graph cannot be exported
        first = one_line(e)
        raise BuildError(
            f"{job.file}: torch.export failed ({type(e).__name__}: {first}): report it with this torch"
        ) from e


def compile_package(program: Any, path: Path, *, vectorize: bool = True) -> float:
    """Compile an exported program into an AOTInductor package at `path` atomically; returns the seconds taken.

    `vectorize=False` (CPU only) compiles scalar C++ kernels: several times faster to build with dynamic sizes,
    slower to run; for tests and quick checks.
    """
    configs = {} if vectorize else {"cpp.simdlen": 1}
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")
    start = time.perf_counter()
    try:
        with _without_torch_deprecations():
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
        os.replace(tmp, path)
    except Exception as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        first = one_line(e)
        raise BuildError(f"{path.name}: AOTInductor could not compile it ({type(e).__name__}: {first})") from e
    return time.perf_counter() - start


def verify_sizes(job: Job, count: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(batch, height, width) to check a package at: a fixed one at batch 1 and its max; a dynamic one at the
    corners of its range, an odd size off the feature stride and random odd heights, never the example's size."""
    max_batch = max(p.max_batch for p in job.profiles)
    if job.scale is not None:
        return list(dict.fromkeys([(1, *job.scale), (max_batch, *job.scale)]))
    lo_h, lo_w = min(p.min[2] for p in job.profiles), min(p.min[3] for p in job.profiles)
    hi_h, hi_w = max(p.max[2] for p in job.profiles), max(p.max[3] for p in job.profiles)
    sizes = [(lo_h, lo_w), (hi_h, hi_w), (lo_h, hi_w), (hi_h, lo_w), (min(lo_h + 1, hi_h), min(lo_w + 3, hi_w))]
    rng = np.random.default_rng(seed)
    for _ in range(max(count - len(sizes), 0)):
        sizes.append((min(int(rng.integers(lo_h, hi_h + 1)) | 1, hi_h), int(rng.integers(lo_w, hi_w + 1))))
    example = tuple(job.profiles[0].opt[2:])
    kept = [s for s in dict.fromkeys(sizes) if s != example]
    return [(min(1 + i % 2, max_batch), h, w) for i, (h, w) in enumerate(kept)]


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matrix products while inside (PyTorch turns it on for cuDNN by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def verify_package(
    path: Path, model: SPPNet, job: Job, device: str, *, input_scale: float, count: int = 8, seed: int = 0
) -> list[dict[str, Any]]:
    """Run the package against eager PyTorch fp32 (the original model) at `verify_sizes`; BuildError past tolerance."""
    index = torch.device(device).index
    try:
        runner = torch._inductor.aoti_load_package(str(path), device_index=-1 if index is None else index)
    except Exception as e:  # torch raises several internal types when a fresh package will not load
        raise BuildError(f"{path.name}: the package just built does not load ({one_line(e)})") from e
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for batch, height, width in verify_sizes(job, count, seed):
        x = (torch.randn(batch, 3, height, width, generator=generator) * 60.0 * input_scale).to(device)
        try:
            with torch.no_grad(), full_fp32():
                got = runner(x).double().cpu()
                want = model(x).double().cpu()
        except torch.OutOfMemoryError as e:
            raise OutOfMemory(f"{path.name}: no memory to check it at {batch}x3x{height}x{width}: {one_line(e)}") from e
        except RuntimeError as e:
            raise BuildError(f"{path.name} failed at {batch}x3x{height}x{width} ({one_line(e)})") from e
        error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
        agree = float((got.argmax(1) == want.argmax(1)).double().mean())
        rows.append({"batch": batch, "size": [height, width], "max_rel": error, "top1_agree": agree})
        if not error <= TOLERANCE[job.precision]:
            raise BuildError(
                f"{path.name} differs from eager PyTorch at {batch}x3x{height}x{width} (relative error {error:.3g}, "
                f"tolerance {TOLERANCE[job.precision]:g}): the package is not kept; report it with this torch"
            )
    return rows


def _choices(
    values: Iterable[str] | None, allowed: Sequence[str], default: Sequence[str], what: str
) -> tuple[str, ...]:
    chosen = tuple(default if values is None else values)
    unknown = sorted(set(chosen) - set(allowed))
    if unknown or not chosen:
        raise InvalidInput(f"{what} {unknown or 'none'} not recognised: choose from {', '.join(allowed)}")
    return chosen


def build_aoti_engines(
    onnx_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    precisions: Iterable[str] | None = None,
    kinds: Iterable[str] | None = None,
    scales: Iterable[tuple[int, int]] | None = None,
    device: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    channels_last: bool = True,
    vectorize: bool = True,
    verify: int = 8,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build AOTInductor packages for an ONNX export's scales and dynamic range; returns the engine manifest's path.

    Args:
        precisions: subset of fp32, fp16, bf16 (default: the export's own precisions).
        kinds: subset of fixed, dynamic (default both).
        scales: the fixed scales to build, (height, width) each (default: all of the export's).
        device: "cuda" or "cpu" (default: the GPU if torch sees one); packages run only on that kind of device.
        checkpoint: the run the export came from, when its manifest does not say (as `sppnet parity`).
        vectorize: CPU only; False builds scalar kernels (faster builds, slower packages).
        verify: sizes each dynamic package is checked at against eager PyTorch before it is kept.
    """
    onnx_dir, out = Path(onnx_dir), Path(out_dir)
    if out.resolve() == onnx_dir.resolve():
        raise InvalidInput(f"the engine directory {out} is the ONNX directory: choose another --out")
    device = check_device(device or default_device())
    manifest = read_export_manifest(onnx_dir, verify=True)
    exported = tuple(p for p in dict.fromkeys(f.precision for f in manifest.files) if p in PRECISIONS)
    precisions = _choices(precisions, PRECISIONS, exported or ("fp32",), "precisions")
    kinds = _choices(kinds, KINDS, KINDS, "kinds")
    scales = None if scales is None else [(int(h), int(w)) for h, w in scales]
    jobs = plan_jobs(manifest, precisions, kinds, scales)
    if not jobs:
        raise InvalidInput(
            f"nothing to build from {onnx_dir}: it has no {' or '.join(kinds)} models"
            + (f" at {', '.join(f'{h}x{w}' for h, w in scales)}" if scales is not None else "")
        )
    source = source_of_export(onnx_dir, checkpoint)  # the run's weights, checked against the export's sha256
    if any(job.kind == "dynamic" for job in jobs):
        check_symbolic(source.model)
    model = source.model.eval().to(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted rebuild must not leave the old manifest listing files
    entries, checks = [], {}
    for number, job in enumerate(jobs, 1):
        name = f"{manifest.card.network}_{job.file}"
        if progress:
            progress(f"[{number}/{len(jobs)}] compiling {name} for {device} with torch {torch.__version__}")
        start = time.perf_counter()
        form = TorchForm(source.model, job.precision, channels_last).to(device)
        path = out / name
        compile_package(export_program(form, job, device), path, vectorize=vectorize)
        seconds = time.perf_counter() - start
        try:
            scale = manifest.card.preprocess.scale
            checks[name] = verify_package(path, model, job, device, input_scale=scale, count=verify)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        spp_form = SPP_FORM if manifest.card.spp else "baseline"
        entries.append(
            file_record(
                path,
                kind=job.kind,
                scale=job.scale,
                precision=job.precision,
                spp_form=spp_form,
                profiles=job.profiles,
                seconds=round(seconds, 3),
            )
        )
        if progress:
            worst = max(row["max_rel"] for row in checks[name])
            progress(
                f"{name}: {entries[-1].bytes / 2**20:.1f} MiB in {seconds:.1f} s; worst error vs eager {worst:.2g}"
            )
    record = {"tolerance": TOLERANCE, "reference": "eager PyTorch fp32 (the run's model)", "packages": checks}
    write_atomic(out / VERIFY_FILE, (json.dumps(record, indent=1) + "\n").encode())
    target = target_of(device, vectorize=vectorize) | {"channels_last": channels_last}
    engine_manifest = EngineManifest(
        card=manifest.card,
        sizes=manifest.sizes,
        max_batch=manifest.max_batch,
        opt_batch=manifest.opt_batch,
        files=tuple(entries),
        builder=Builder(BUILDER, torch.__version__),
        source_dir=str(onnx_dir.resolve()),
        source_manifest_sha256=sha256_file(onnx_dir / MANIFEST),
        target=target,
    )
    return write_manifest(out, engine_manifest)
