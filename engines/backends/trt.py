"""TensorRT backend: one engine file of an engine directory behind the Runner interface, for full TensorRT or
TensorRT-RTX (the module that built the engines, per the manifest; the same API family).

Per engine: one execution context per optimisation profile (each bound to its profile once, with
`set_optimization_profile_async`), one non-blocking CUDA stream, and pinned host and device buffers allocated once
at each profile's max shape and bound with `set_tensor_address`. Each call sets the input shape, enqueues with
`execute_async_v3` (its result checked) and copies back. Fixed-size engines replay a CUDA graph per batch size,
captured on first use: by this runner under full TensorRT; under TensorRT-RTX by its own whole-graph capture
(`IRuntimeConfig.cuda_graph_strategy`), because our engines are built without its REQUIRE_USER_ALLOCATION flag
(which manual stream capture needs) and its JIT swaps in shape-specialised kernels after the first runs.
TensorRT-RTX compiles kernels on the GPU at first use; its runtime cache keeps them in a file beside the engine
(`<engine stem>.runtime_cache`, written atomically on deactivate) so later processes skip the compile.

CUDA memory, streams and graphs go through `backends/cuda.py` (cuda-python when importable, so the hot path needs
no torch; otherwise torch.cuda): every call checked, out of memory an `OutOfMemory`, no usable GPU a
`DeviceUnavailable` (one line, the fix included).

Verified here, without a GPU: the plain logic (compatibility, buffer sizes, profile selection, graph keys, cache
paths, CUDA status checks), the refusals that happen before a GPU is touched (including TensorRT-RTX's own refusal
to deserialise without a CUDA driver), and the runner's control flow against a fake TensorRT module and a numpy
fake of CUDA (buffers, one context per profile, graph reuse, cleanup, the cache file). Needs a GPU, and is
unverified until one runs it
(`python -m sppnet.engines.gpu_check`): engine deserialisation and JIT, context and profile binding, buffer
transfers, graph capture and replay (manual and TensorRT-RTX's), the runtime cache round trip, the torch.cuda
fallback and out-of-memory mapping. TensorRT-RTX refuses Hopper (compute capability 9.0; tried on an H200), so
those GPUs run the compiled PyTorch or ONNX Runtime CUDA engines instead.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.atomic import sha256, write_atomic
from sppnet.core.errors import BackendError, BuildError, InvalidInput, OutOfMemory
from sppnet.core.manifest import ENGINE_FORMAT, FIX, EngineManifest, ModelFile
from sppnet.core.profiles import Profile
from sppnet.engines.backends.base import Runner, TensorMeta
from sppnet.engines.backends.cuda import CudaPython, CudaTorch, load_cuda
from sppnet.export.trt_module import Backend, load_backend, logger, recording, summary

REBUILD = "rebuild with `sppnet build --onnx DIR --out ENGINE_DIR` on/for this machine"
RUNTIME_CACHE_SUFFIX = ".runtime_cache"
_OOM_WORDS = ("outofmemory", "cudaerrormemoryallocation", "insufficient_gpu_memory")


# ---------------------------------------------------------------- plain logic (tested on the CPU)


def parse_capability(text: str) -> tuple[int, int]:
    """Parse "8.6" as (8, 6); InvalidInput for anything else."""
    major, dot, minor = str(text).partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise InvalidInput(f"compute capability {text!r} is not of the form MAJOR.MINOR (e.g. 8.6)")
    return int(major), int(minor)


def check_engine_compatibility(
    manifest: EngineManifest, module_name: str, module_version: str, gpu_capability: str | None
) -> None:
    """Refuse engines built by another builder module or version, or for GPUs that exclude `gpu_capability`.

    `gpu_capability` None skips the GPU check (no GPU known). Full TensorRT records no targets (an engine is for
    the GPU model that built it, which TensorRT itself checks when it deserialises), so only versions are checked.
    """
    built_by, here = manifest.builder.describe(), f"{module_name} {module_version}"
    if manifest.builder.module != module_name or manifest.builder.version != str(module_version):
        raise BackendError(f"the engines were built by {built_by} but this runtime has {here}: {REBUILD}")
    if gpu_capability is None:
        return
    have = parse_capability(gpu_capability)
    if "compute_capabilities" not in manifest.target:
        raise BackendError(f"the engine manifest records no target GPUs: {REBUILD}")
    listed = manifest.target["compute_capabilities"]
    if listed is None:
        return
    wanted = [parse_capability(c) for c in listed]
    and_later = bool(manifest.target.get("and_later"))
    if have in wanted or (and_later and wanted and have >= min(wanted)):
        return
    targets = ", ".join(listed) + (" and later" if and_later else "")
    raise BackendError(
        f"the engines target compute capability {targets} but this GPU is {gpu_capability}: {REBUILD} "
        f"(TensorRT-RTX: add --compute-capability {gpu_capability})"
    )


@dataclass(frozen=True)
class BufferPlan:
    """The input and output buffers one profile needs at its max shape."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_bytes: int
    output_bytes: int


def buffer_plan(profile: Profile, classes: int, *, input_itemsize: int = 4, output_itemsize: int = 4) -> BufferPlan:
    """Buffers for `profile`: the input at its max (N, C, H, W), the output at (max N, classes)."""
    if classes < 1:
        raise InvalidInput(f"an engine needs at least one output class; got {classes}")
    output_shape = (profile.max[0], classes)
    return BufferPlan(
        profile.max,
        output_shape,
        int(np.prod(profile.max)) * input_itemsize,
        int(np.prod(output_shape)) * output_itemsize,
    )


def fits(profile: Profile, shape: Sequence[int]) -> bool:
    """Whether an (N, C, H, W) shape lies within `profile` on every axis."""
    return len(shape) == 4 and all(lo <= d <= hi for lo, d, hi in zip(profile.min, shape, profile.max, strict=True))


def select_profile(profiles: Sequence[Profile], requested: int, shape: Sequence[int]) -> int:
    """`requested` if that profile takes `shape`; otherwise a BackendError naming a profile that does, or the fix."""
    if not 0 <= requested < len(profiles):
        raise BackendError(
            f"profile {requested} does not exist: this engine has profiles 0..{len(profiles) - 1}; route with "
            "sppnet.core.profiles.profile_for"
        )
    if fits(profiles[requested], shape):
        return requested
    shape = tuple(shape)
    others = [i for i, p in enumerate(profiles) if fits(p, shape)]
    if others:
        hint = f"profile {others[0]} ({profiles[others[0]].describe()}) takes it: pass profile={others[0]}"
    else:
        biggest = max((p.max_batch for p in profiles if p.covers(*shape[2:4])), default=0) if len(shape) == 4 else 0
        hint = (
            f"split the batch to at most {biggest}"
            if biggest
            else "resize the input into a profile's range, or re-export and rebuild with a wider range"
        )
    raise BackendError(
        f"an input of shape {shape} is outside profile {requested} ({profiles[requested].describe()}, "
        f"channels {profiles[requested].min[1]}): {hint}"
    )


def graph_mode(module_name: str, kind: str, enabled: bool) -> str:
    """How CUDA graphs run for one engine: "manual" (this runner captures), "tensorrt_rtx" (its own), or "off"."""
    if not enabled or kind != "fixed":
        return "off"
    return "tensorrt_rtx" if module_name == "tensorrt_rtx" else "manual"


def graph_key(mode: str, profile: int, shape: Sequence[int]) -> tuple[int, int] | None:
    """The cache key of the graph serving `shape` on `profile` (one per batch size), or None: enqueue directly."""
    return (profile, int(shape[0])) if mode == "manual" else None


def runtime_cache_path(engine_path: Path, option: bool | str | os.PathLike[str]) -> Path | None:
    """The runtime cache file: True -> `<engine stem>.runtime_cache` beside the engine, False -> none, or a path."""
    if option is False:
        return None
    if option is True:
        return engine_path.with_name(engine_path.stem + RUNTIME_CACHE_SUFFIX)
    return Path(option)


def failure(what: str, messages: Sequence[str]) -> BackendError:
    """A BackendError for a TensorRT call that failed, with what TensorRT logged; OutOfMemory if it says so."""
    text = f"{what}: {summary(messages)}"
    squeezed = text.lower().replace(" ", "")
    if any(word in squeezed for word in _OOM_WORDS):
        return OutOfMemory(f"{text} (use smaller batches or free GPU memory)")
    return BackendError(text)


def describe_validity(module: Any, validity: Any, diagnostics: int) -> str:
    """TensorRT-RTX's `get_engine_validity` answer in words: the validity and each diagnostic flag set."""
    flags = [name for name, value in module.EngineInvalidityDiagnostics.__members__.items() if diagnostics & int(value)]
    return f"{getattr(validity, 'name', validity)} ({', '.join(flags) or 'no diagnostics'})"


def deserialize_engine(backend: Backend, data: bytes, name: str) -> tuple[Any, Any, str]:
    """The runtime, the engine and the module's validity verdict (TensorRT-RTX only, else "not checked") for
    serialised `data`; a BackendError with TensorRT's own words if it refuses."""
    trt = backend.trt
    verdict = "not checked"
    with recording(backend) as log:
        runtime = trt.Runtime(logger(backend))
        if runtime is None:
            raise failure(f"{backend.describe()} could not create a runtime for {name}", log.errors())
        if hasattr(runtime, "get_engine_validity"):
            validity, diagnostics = runtime.get_engine_validity(data)
            verdict = describe_validity(trt, validity, int(diagnostics))
            if validity == trt.EngineValidity.INVALID:
                raise failure(f"{backend.describe()} refuses {name} on this machine [{verdict}]", log.errors())
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise failure(f"{backend.describe()} could not deserialise {name}", log.errors())
    return runtime, engine, verdict


# ---------------------------------------------------------------- the runner


@dataclass
class _Slot:
    """One optimisation profile: its execution context and its buffers (bound to the context once)."""

    context: Any
    profile: Profile
    plan: BufferPlan
    device_in: int
    device_out: int
    host_in_ptr: int
    host_in: np.ndarray
    host_out_ptr: int
    host_out: np.ndarray


class TensorRTRunner(Runner):
    """Runs one engine of a checked engine directory (`read_engine_manifest`'s manifest and the file's entry).

    Args:
        path: the engine file (`engine_dir / entry.file`).
        manifest, entry: the engine manifest and this engine's entry in it.
        device: the CUDA device index.
        cuda_api: "cuda-python", "torch", or None (cuda-python if importable).
        cuda_graphs: replay CUDA graphs for fixed-size engines (see the module docstring).
        runtime_cache: TensorRT-RTX's kernel cache: True (beside the engine), False, or a file path.
    """

    name = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        manifest: EngineManifest,
        entry: ModelFile,
        *,
        device: int = 0,
        cuda_api: str | None = None,
        cuda_graphs: bool = True,
        runtime_cache: bool | str | os.PathLike[str] = True,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.manifest, self.entry = manifest, entry
        self.device, self.cuda_api, self.cuda_graphs = device, cuda_api, cuda_graphs
        self.cache_path = runtime_cache_path(self.path, runtime_cache)
        self.profiles = list(entry.profiles)
        self.input_name = manifest.card.input_name
        self.output_name = manifest.card.output_name
        self.info: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._cuda: CudaPython | CudaTorch | None = None
        self._stack = contextlib.ExitStack()
        self._stream = 0
        self._slots: list[_Slot] = []
        self._graphs: dict[tuple[int, int], Any] = {}
        self._graph_mode = "off"
        self._engine: Any = None
        self._runtime: Any = None
        self._backend: Backend | None = None
        self._dtypes: tuple[np.dtype, np.dtype] = (np.dtype(np.float32), np.dtype(np.float32))

    def _activate_impl(self) -> None:
        self.info = {}
        start = time.perf_counter()
        try:
            self._load()
        except BaseException:
            self._release()  # frees what was made before the failure, then the failure propagates
            raise
        self.info["activate_seconds"] = round(time.perf_counter() - start, 3)

    def _load(self) -> None:
        name = self.path.name
        data = self._read_engine()
        try:
            backend = load_backend(self.manifest.builder.module)
        except BuildError as e:
            raise BackendError(f"cannot run {name}: {e}") from e
        self._backend, trt = backend, backend.trt
        cuda = load_cuda(self.cuda_api, self.device)
        self._cuda = cuda
        capability = cuda.capability()
        self.info.update(module=backend.name, version=backend.version, cuda_api=cuda.name, capability=capability)
        try:
            check_engine_compatibility(self.manifest, backend.name, backend.version, capability)
        except BackendError as e:
            raise BackendError(f"{self.path}: {e}") from e

        self._stream = cuda.create_stream()
        self._stack.callback(cuda.destroy_stream, self._stream)
        self._runtime, self._engine, self.info["validity"] = deserialize_engine(backend, data, name)
        self._stack.callback(self._drop_engine)
        self._check_engine_io(trt)
        self._graph_mode = graph_mode(backend.name, self.entry.kind, self.cuda_graphs)
        self.info["graphs"] = self._graph_mode
        cache = self._open_runtime_cache(trt) if backend.is_rtx else None
        classes = self.manifest.card.num_classes
        self._stack.callback(self._slots.clear)
        for index, profile in enumerate(self.profiles):
            plan = buffer_plan(
                profile, classes, input_itemsize=self._dtypes[0].itemsize, output_itemsize=self._dtypes[1].itemsize
            )
            self._slots.append(self._make_slot(backend, index, profile, plan, cache))
        cuda.synchronize(self._stream)
        if cache is not None:  # saved on deactivate only: a failed activation leaves the file as it was
            self._stack.callback(self._save_runtime_cache, cache)

    def _read_engine(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise BackendError(f"cannot read the engine {self.path} ({e}): {FIX[ENGINE_FORMAT]}") from e
        if sha256(data) != self.entry.sha256:
            raise BackendError(f"{self.path} does not match its manifest (sha256 differs): {FIX[ENGINE_FORMAT]}")
        return data

    def _drop_engine(self) -> None:
        self._engine = None
        self._runtime = None

    def _check_engine_io(self, trt: Any) -> None:
        engine, name = self._engine, self.path.name
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [self.input_name] or outputs != [self.output_name]:
            raise BackendError(
                f"{name} has inputs {inputs} and outputs {outputs}, not [{self.input_name!r}] and "
                f"[{self.output_name!r}] as its manifest says: {FIX[ENGINE_FORMAT]}"
            )
        if engine.num_optimization_profiles != len(self.profiles):
            raise BackendError(
                f"{name} has {engine.num_optimization_profiles} optimisation profiles, its manifest "
                f"{len(self.profiles)}: {FIX[ENGINE_FORMAT]}"
            )
        for index, profile in enumerate(self.profiles):
            built = tuple(tuple(dims) for dims in engine.get_tensor_profile_shape(self.input_name, index))
            if built != (profile.min, profile.opt, profile.max):
                raise BackendError(
                    f"{name} profile {index} is {built}, its manifest says {profile.describe()}: {FIX[ENGINE_FORMAT]}"
                )
        self._dtypes = (
            np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name))),
            np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name))),
        )

    def _open_runtime_cache(self, trt: Any) -> Any:
        """TensorRT-RTX's runtime cache, loaded from its file when one is there and this GPU can use it."""
        if self.cache_path is None:
            self.info["runtime_cache"] = "off"
            return None
        config = self._engine.create_runtime_config()
        cache = config.create_runtime_cache() if config is not None else None
        if cache is None:
            raise BackendError(f"{self._backend.describe()} could not create a runtime cache for {self.path.name}")
        status = "new"
        if self.cache_path.is_file():
            blob = self.cache_path.read_bytes()
            # False means another GPU, driver or TensorRT-RTX version made it: it is replaced on deactivate.
            status = f"loaded {len(blob)} bytes" if cache.deserialize(blob) else "rejected (made elsewhere); replaced"
        self.info["runtime_cache"] = f"{self.cache_path}: {status}"
        return cache

    def _save_runtime_cache(self, cache: Any) -> None:
        assert self.cache_path is not None
        data = bytes(cache.serialize())
        try:
            write_atomic(self.cache_path, data)
        except OSError as e:
            raise BackendError(
                f"cannot write the runtime cache {self.cache_path} ({e}): pass runtime_cache=False or a writable path"
            ) from e

    def _make_slot(self, backend: Backend, index: int, profile: Profile, plan: BufferPlan, cache: Any) -> _Slot:
        trt, cuda, name = backend.trt, self._cuda, self.path.name
        assert cuda is not None
        with recording(backend) as log:
            if backend.is_rtx:
                config = self._engine.create_runtime_config()
                if cache is not None and not config.set_runtime_cache(cache):
                    raise failure(f"{backend.describe()} refused the runtime cache for {name}", log.errors())
                if self._graph_mode == "tensorrt_rtx":
                    config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
                context = self._engine.create_execution_context(config)
            else:
                context = self._engine.create_execution_context()
            if context is None:
                raise failure(f"{backend.describe()} could not create a context for {name}", log.errors())
            if not context.set_optimization_profile_async(index, self._stream):
                raise failure(f"{name}: selecting optimisation profile {index} failed", log.errors())
        buffers = []
        for nbytes in (plan.input_bytes, plan.output_bytes):
            ptr = cuda.alloc_device(nbytes)
            self._stack.callback(cuda.free_device, ptr)
            buffers.append(ptr)
        hosts = []
        for nbytes in (plan.input_bytes, plan.output_bytes):
            ptr, array = cuda.alloc_host(nbytes)
            self._stack.callback(cuda.free_host, ptr)
            hosts.append((ptr, array))
        for tensor, ptr in ((self.input_name, buffers[0]), (self.output_name, buffers[1])):
            if not context.set_tensor_address(tensor, ptr):
                raise BackendError(f"{name}: binding {tensor!r} of profile {index} failed: {FIX[ENGINE_FORMAT]}")
        return _Slot(context, profile, plan, buffers[0], buffers[1], *hosts[0], *hosts[1])

    def _inputs_impl(self) -> list[TensorMeta]:
        fixed = self.entry.scale if self.entry.kind == "fixed" else (None, None)
        return [TensorMeta(self.input_name, self._dtypes[0], (None, 3, *fixed))]

    def _outputs_impl(self) -> list[TensorMeta]:
        return [TensorMeta(self.output_name, self._dtypes[1], (None, self.manifest.card.num_classes))]

    def _input(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        x = feed[self.input_name]
        if x.dtype != self._dtypes[0] or x.ndim != 4:
            raise BackendError(
                f"{self.path.name} takes {self._dtypes[0]} (N, C, H, W) input; got {x.dtype} of shape {x.shape}"
            )
        return np.ascontiguousarray(x)

    def _enqueue(self, slot: _Slot) -> None:
        assert self._backend is not None
        with recording(self._backend) as log:
            if not slot.context.execute_async_v3(self._stream):
                raise failure(f"{self.path.name}: execute_async_v3 failed", log.errors())

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        cuda, x = self._cuda, self._input(feed)
        assert cuda is not None
        cuda.make_current()
        index = select_profile(self.profiles, profile, x.shape)
        slot = self._slots[index]
        slot.host_in[: x.nbytes] = x.reshape(-1).view(np.uint8)
        cuda.copy_to_device(slot.device_in, slot.host_in_ptr, x.nbytes, self._stream)
        if not slot.context.set_input_shape(self.input_name, x.shape):
            raise BackendError(f"{self.path.name}: profile {index} refused input shape {x.shape}")
        out_shape = tuple(slot.context.get_tensor_shape(self.output_name))
        if out_shape != (x.shape[0], slot.plan.output_shape[1]):
            raise BackendError(
                f"{self.path.name} gives output {out_shape}, not ({x.shape[0]}, classes): {FIX[ENGINE_FORMAT]}"
            )
        key = graph_key(self._graph_mode, index, x.shape)
        if key is None:
            self._enqueue(slot)
        elif key in self._graphs:
            cuda.launch(self._graphs[key], self._stream)
        else:
            self._enqueue(slot)  # the first run flushes TensorRT's deferred updates; then capture for later calls
            self._capture(key, slot)
        out_bytes = int(np.prod(out_shape)) * self._dtypes[1].itemsize
        cuda.copy_to_host(slot.host_out_ptr, slot.device_out, out_bytes, self._stream)
        cuda.synchronize(self._stream)
        logits = slot.host_out[:out_bytes].view(self._dtypes[1]).reshape(out_shape).copy()
        return {self.output_name: logits}

    def _capture(self, key: tuple[int, int], slot: _Slot) -> None:
        cuda = self._cuda
        assert cuda is not None
        capturable = getattr(slot.context, "is_stream_capturable", None)
        if capturable is not None and not capturable(self._stream):
            self._graph_mode = "off"
            self.info["graphs"] = f"off ({self.path.name}'s context cannot be stream-captured)"
            return
        graph = cuda.capture(self._stream, lambda: self._enqueue(slot))
        self._stack.callback(cuda.destroy_graph, graph)
        self._graphs[key] = graph

    def _release(self) -> None:
        try:
            self._stack.close()  # graphs, buffers, contexts, the cache save, the engine, the stream: newest first
        finally:
            info = self.info
            self._reset()
            self.info = info

    def _deactivate_impl(self) -> None:
        try:
            if self._cuda is not None and self._stream:
                self._cuda.make_current()
                self._cuda.synchronize(self._stream)
        finally:
            self._release()
