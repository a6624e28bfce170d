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

CUDA memory, streams and graphs go through cuda-python (`cuda.bindings.runtime`) when it is importable, so the hot
path needs no torch; otherwise through torch.cuda. Every CUDA call is checked and names the failing call and its
error; a CUDA out-of-memory error is an `OutOfMemory`.

Verified here, without a GPU: the plain logic (compatibility, buffer sizes, profile selection, graph keys, cache
paths, CUDA status checks), the refusals that happen before a GPU is touched (including TensorRT-RTX's own refusal
to deserialise without a CUDA driver), and the runner's control flow against a fake TensorRT module and a numpy
fake of CUDA (buffers, one context per profile, graph reuse, cleanup, the cache file). Needs a GPU, and is
unverified until one runs it
(`python -m sppnet.engines.gpu_check`): engine deserialisation and JIT, context and profile binding, buffer
transfers, graph capture and replay (manual and TensorRT-RTX's), the runtime cache round trip, the torch.cuda
fallback, out-of-memory mapping, and whether TensorRT-RTX accepts a given GPU (Hopper, 9.0, is not in its list).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.atomic import sha256, write_atomic
from sppnet.engines.backends.base import OutOfMemory, Runner, RunnerError
from sppnet.export.manifest import ENGINE_FORMAT, FIX
from sppnet.export.profiles import Profile
from sppnet.export.trt_builder import Backend, BuildError, _logger, _recording, _summary, load_backend

REBUILD = "rebuild with `sppnet build --onnx DIR --out ENGINE_DIR` on/for this machine"
CUDA_APIS = ("cuda-python", "torch")
RUNTIME_CACHE_SUFFIX = ".runtime_cache"
_OOM_WORDS = ("outofmemory", "cudaerrormemoryallocation", "insufficient_gpu_memory")


# ---------------------------------------------------------------- plain logic (tested on the CPU)


def parse_capability(text: str) -> tuple[int, int]:
    """Parse "8.6" as (8, 6); a ValueError for anything else."""
    major, dot, minor = str(text).partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise ValueError(f"compute capability {text!r} is not of the form MAJOR.MINOR (e.g. 8.6)")
    return int(major), int(minor)


def check_engine_compatibility(
    manifest: dict[str, Any], module_name: str, module_version: str, gpu_capability: str | None
) -> None:
    """Refuse engines built by another builder module or version, or for GPUs that exclude `gpu_capability`.

    `gpu_capability` None skips the GPU check (no GPU known). Full TensorRT records no targets (an engine is for
    the GPU model that built it, which TensorRT itself checks when it deserialises), so only versions are checked.
    """
    builder = manifest.get("builder")
    if not isinstance(builder, dict) or not {"module", "version"} <= builder.keys():
        raise ValueError(f"the engine manifest does not say which builder made the engines: {REBUILD}")
    built_by = f"{builder['module']} {builder['version']}"
    here = f"{module_name} {module_version}"
    if builder["module"] != module_name or str(builder["version"]) != str(module_version):
        raise ValueError(f"the engines were built by {built_by} but this runtime has {here}: {REBUILD}")
    if gpu_capability is None:
        return
    have = parse_capability(gpu_capability)
    target = manifest.get("target")
    if not isinstance(target, dict) or "compute_capabilities" not in target:
        raise ValueError(f"the engine manifest records no target GPUs: {REBUILD}")
    listed = target["compute_capabilities"]
    if listed is None:
        return
    wanted = [parse_capability(c) for c in listed]
    and_later = bool(target.get("and_later"))
    if have in wanted or (and_later and wanted and have >= min(wanted)):
        return
    targets = ", ".join(listed) + (" and later" if and_later else "")
    raise ValueError(
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
        raise ValueError(f"an engine needs at least one output class; got {classes}")
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
    """`requested` if that profile takes `shape`; otherwise a RunnerError naming a profile that does, or the fix."""
    if not 0 <= requested < len(profiles):
        raise RunnerError(
            f"profile {requested} does not exist: this engine has profiles 0..{len(profiles) - 1}; route with "
            "sppnet.export.profiles.profile_for"
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
    raise RunnerError(
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


def check_cuda(result: Any, call: str) -> Any:
    """The value(s) of a cuda-python call `(error, *values)`; RunnerError (OutOfMemory) naming the call and error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        name = getattr(error, "name", None) or f"CUDA error {int(error)}"
        if name == "cudaErrorMemoryAllocation":
            raise OutOfMemory(f"CUDA {call} failed with {name}: use smaller batches or free GPU memory")
        raise RunnerError(f"CUDA {call} failed with {name}: check the GPU and its driver (nvidia-smi)")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def failure(what: str, messages: Sequence[str]) -> RunnerError:
    """A RunnerError for a TensorRT call that failed, with what TensorRT logged; OutOfMemory if it says so."""
    text = f"{what}: {_summary(messages)}"
    squeezed = text.lower().replace(" ", "")
    if any(word in squeezed for word in _OOM_WORDS):
        return OutOfMemory(f"{text} (use smaller batches or free GPU memory)")
    return RunnerError(text)


def describe_validity(module: Any, validity: Any, diagnostics: int) -> str:
    """TensorRT-RTX's `get_engine_validity` answer in words: the validity and each diagnostic flag set."""
    flags = [name for name, value in module.EngineInvalidityDiagnostics.__members__.items() if diagnostics & int(value)]
    return f"{getattr(validity, 'name', validity)} ({', '.join(flags) or 'no diagnostics'})"


def deserialize_engine(backend: Backend, data: bytes, name: str) -> tuple[Any, Any, str]:
    """The runtime, the engine and the module's validity verdict (TensorRT-RTX only, else "not checked") for
    serialised `data`; a RunnerError with TensorRT's own words if it refuses."""
    trt = backend.trt
    verdict = "not checked"
    with _recording(backend) as recording:
        runtime = trt.Runtime(_logger(backend))
        if runtime is None:
            raise failure(f"{backend.describe()} could not create a runtime for {name}", recording.errors())
        if hasattr(runtime, "get_engine_validity"):
            validity, diagnostics = runtime.get_engine_validity(data)
            verdict = describe_validity(trt, validity, int(diagnostics))
            if validity == trt.EngineValidity.INVALID:
                raise failure(f"{backend.describe()} refuses {name} on this machine [{verdict}]", recording.errors())
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise failure(f"{backend.describe()} could not deserialise {name}", recording.errors())
    return runtime, engine, verdict


# ---------------------------------------------------------------- CUDA: two thin implementations


class CudaPython:
    """CUDA through cuda-python's runtime bindings: every call checked by name."""

    name = "cuda-python"

    def __init__(self, device: int) -> None:
        from cuda.bindings import runtime

        self.rt = runtime
        self.device = device
        self.make_current()

    def make_current(self) -> None:
        """Make the device current in the calling thread (a batcher's worker thread is not the activating one)."""
        self.call("cudaSetDevice", self.device)

    def call(self, function: str, *args: Any) -> Any:
        return check_cuda(getattr(self.rt, function)(*args), function)

    def capability(self) -> str:
        attr = self.rt.cudaDeviceAttr
        major = self.call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMajor, self.device)
        minor = self.call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMinor, self.device)
        return f"{major}.{minor}"

    def device_name(self) -> str:
        name = self.call("cudaGetDeviceProperties", self.device).name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def create_stream(self) -> int:
        return int(self.call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking))

    def destroy_stream(self, stream: int) -> None:
        self.call("cudaStreamDestroy", stream)

    def synchronize(self, stream: int) -> None:
        self.call("cudaStreamSynchronize", stream)

    def alloc_device(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", nbytes))

    def free_device(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def alloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        ptr = int(self.call("cudaMallocHost", nbytes))
        return ptr, np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))

    def free_host(self, ptr: int) -> None:
        self.call("cudaFreeHost", ptr)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def capture(self, stream: int, enqueue: Callable[[], None]) -> Any:
        # Thread-local mode: other threads (other runners) may keep making CUDA calls while this one captures.
        self.call("cudaStreamBeginCapture", stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            enqueue()
        except BaseException:
            # Ends the failed capture; its status is the invalidated capture's, a consequence of the error raised.
            _, graph = self.rt.cudaStreamEndCapture(stream)
            if graph is not None and int(graph):
                self.call("cudaGraphDestroy", graph)
            raise
        graph = self.call("cudaStreamEndCapture", stream)
        try:
            return self.call("cudaGraphInstantiate", graph, 0)
        finally:
            self.call("cudaGraphDestroy", graph)

    def launch(self, graph: Any, stream: int) -> None:
        self.call("cudaGraphLaunch", graph, stream)

    def destroy_graph(self, graph: Any) -> None:
        self.call("cudaGraphExecDestroy", graph)


class CudaTorch:
    """CUDA through torch.cuda (when cuda-python is absent); buffers are torch tensors looked up by address.

    Freed buffers return to torch's caching allocator and streams to its pool, as torch manages them.
    """

    name = "torch"

    def __init__(self, device: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RunnerError(
                f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False): run on a GPU "
                "machine with a CUDA build of torch, or install cuda-python"
            )
        self.torch = torch
        self.device = torch.device("cuda", device)
        self._streams: dict[int, Any] = {}
        self._tensors: dict[int, Any] = {}
        self._graphs: dict[int, Any] = {}

    def make_current(self) -> None:
        self.call("set_device", self.torch.cuda.set_device, self.device)

    def call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except RunnerError:
            raise
        except self.torch.cuda.OutOfMemoryError as e:
            raise OutOfMemory(f"CUDA {what} ran out of memory (torch: {_first_line(e)}): use smaller batches") from e
        except RuntimeError as e:
            raise RunnerError(f"CUDA {what} failed (torch: {_first_line(e)}): check the GPU and its driver") from e

    def capability(self) -> str:
        major, minor = self.call("get_device_capability", self.torch.cuda.get_device_capability, self.device)
        return f"{major}.{minor}"

    def device_name(self) -> str:
        return str(self.call("get_device_name", self.torch.cuda.get_device_name, self.device))

    def create_stream(self) -> int:
        stream = self.call("Stream", self.torch.cuda.Stream, self.device)
        self._streams[stream.cuda_stream] = stream
        return int(stream.cuda_stream)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(stream)

    def synchronize(self, stream: int) -> None:
        self.call("stream synchronize", self._streams[stream].synchronize)

    def _keep(self, tensor: Any) -> int:
        self._tensors[tensor.data_ptr()] = tensor
        return int(tensor.data_ptr())

    def alloc_device(self, nbytes: int) -> int:
        torch = self.torch
        tensor = self.call(f"alloc {nbytes} bytes", lambda: torch.empty(nbytes, dtype=torch.uint8, device=self.device))
        return self._keep(tensor)

    def free_device(self, ptr: int) -> None:
        self._tensors.pop(ptr)

    def alloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        torch = self.torch
        tensor = self.call(
            f"pinned alloc {nbytes} bytes", lambda: torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        )
        return self._keep(tensor), tensor.numpy()

    def free_host(self, ptr: int) -> None:
        self._tensors.pop(ptr)

    def _copy(self, what: str, dst: int, src: int, nbytes: int, stream: int) -> None:
        with self.torch.cuda.stream(self._streams[stream]):
            self.call(what, self._tensors[dst][:nbytes].copy_, self._tensors[src][:nbytes], True)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._copy("host-to-device copy", dst, src, nbytes, stream)

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._copy("device-to-host copy", dst, src, nbytes, stream)

    def capture(self, stream: int, enqueue: Callable[[], None]) -> int:
        graph = self.torch.cuda.CUDAGraph()
        capturing = self.torch.cuda.graph(graph, stream=self._streams[stream], capture_error_mode="thread_local")
        self.call("graph capture", lambda: _run_in(capturing, enqueue))
        self._graphs[id(graph)] = graph
        return id(graph)

    def launch(self, graph: int, stream: int) -> None:
        with self.torch.cuda.stream(self._streams[stream]):
            self.call("graph launch", self._graphs[graph].replay)

    def destroy_graph(self, graph: int) -> None:
        self.call("graph reset", self._graphs.pop(graph).reset)


def _run_in(context: Any, function: Callable[[], None]) -> None:
    with context:
        function()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_cuda(name: str | None, device: int) -> CudaPython | CudaTorch:
    """The CUDA API `name` ("cuda-python" or "torch"), or None: cuda-python if importable, else torch."""
    if name is not None and name not in CUDA_APIS:
        raise RunnerError(f"unknown CUDA API {name!r}: choose one of {', '.join(CUDA_APIS)}")
    if name in (None, "cuda-python"):
        try:
            import cuda.bindings.runtime  # noqa: F401
        except ImportError as e:
            if name is not None:
                raise RunnerError(f"cuda-python is not importable ({e}): pip install cuda-python") from e
        else:
            return CudaPython(device)
    try:
        return CudaTorch(device)
    except ImportError as e:
        raise RunnerError(
            "the TensorRT backend needs cuda-python or torch for CUDA memory and streams: pip install cuda-python"
        ) from e


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
    """Runs one engine of a checked engine directory (`check_engine_dir`'s manifest and the file's entry).

    Args:
        path: the engine file (`engine_dir / entry["file"]`).
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
        manifest: dict[str, Any],
        entry: dict[str, Any],
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
        self.profiles = [Profile.from_json(p) for p in entry["profiles"]]
        self.input_name = str(manifest["input"]["name"])
        self.output_name = str(manifest["output"]["name"])
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
        builder = self.manifest.get("builder") or {}
        try:
            backend = load_backend(builder.get("module"))
        except BuildError as e:
            raise RunnerError(f"cannot run {name}: {e}") from e
        self._backend, trt = backend, backend.trt
        cuda = load_cuda(self.cuda_api, self.device)
        self._cuda = cuda
        capability = cuda.capability()
        self.info.update(module=backend.name, version=backend.version, cuda_api=cuda.name, capability=capability)
        try:
            check_engine_compatibility(self.manifest, backend.name, backend.version, capability)
        except ValueError as e:
            raise RunnerError(f"{self.path}: {e}") from e

        self._stream = cuda.create_stream()
        self._stack.callback(cuda.destroy_stream, self._stream)
        self._runtime, self._engine, self.info["validity"] = deserialize_engine(backend, data, name)
        self._stack.callback(self._drop_engine)
        self._check_engine_io(trt)
        self._graph_mode = graph_mode(backend.name, self.entry["kind"], self.cuda_graphs)
        self.info["graphs"] = self._graph_mode
        cache = self._open_runtime_cache(trt) if backend.is_rtx else None
        classes = int(self.manifest["output"]["classes"])
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
            raise RunnerError(f"cannot read the engine {self.path} ({e}): {FIX[ENGINE_FORMAT]}") from e
        if sha256(data) != self.entry.get("sha256"):
            raise RunnerError(f"{self.path} does not match its manifest (sha256 differs): {FIX[ENGINE_FORMAT]}")
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
            raise RunnerError(
                f"{name} has inputs {inputs} and outputs {outputs}, not [{self.input_name!r}] and "
                f"[{self.output_name!r}] as its manifest says: {FIX[ENGINE_FORMAT]}"
            )
        if engine.num_optimization_profiles != len(self.profiles):
            raise RunnerError(
                f"{name} has {engine.num_optimization_profiles} optimisation profiles, its manifest "
                f"{len(self.profiles)}: {FIX[ENGINE_FORMAT]}"
            )
        for index, profile in enumerate(self.profiles):
            built = tuple(tuple(dims) for dims in engine.get_tensor_profile_shape(self.input_name, index))
            if built != (profile.min, profile.opt, profile.max):
                raise RunnerError(
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
            raise RunnerError(f"{self._backend.describe()} could not create a runtime cache for {self.path.name}")
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
            raise RunnerError(
                f"cannot write the runtime cache {self.cache_path} ({e}): pass runtime_cache=False or a writable path"
            ) from e

    def _make_slot(self, backend: Backend, index: int, profile: Profile, plan: BufferPlan, cache: Any) -> _Slot:
        trt, cuda, name = backend.trt, self._cuda, self.path.name
        assert cuda is not None
        with _recording(backend) as recording:
            if backend.is_rtx:
                config = self._engine.create_runtime_config()
                if cache is not None and not config.set_runtime_cache(cache):
                    raise failure(f"{backend.describe()} refused the runtime cache for {name}", recording.errors())
                if self._graph_mode == "tensorrt_rtx":
                    config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
                context = self._engine.create_execution_context(config)
            else:
                context = self._engine.create_execution_context()
            if context is None:
                raise failure(f"{backend.describe()} could not create a context for {name}", recording.errors())
            if not context.set_optimization_profile_async(index, self._stream):
                raise failure(f"{name}: selecting optimisation profile {index} failed", recording.errors())
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
                raise RunnerError(f"{name}: binding {tensor!r} of profile {index} failed: {FIX[ENGINE_FORMAT]}")
        return _Slot(context, profile, plan, buffers[0], buffers[1], *hosts[0], *hosts[1])

    def _input(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if set(feed) != {self.input_name}:
            raise RunnerError(f"{self.path.name} takes one input {self.input_name!r}; got {sorted(feed)}")
        x = feed[self.input_name]
        if x.dtype != self._dtypes[0] or x.ndim != 4:
            raise RunnerError(
                f"{self.path.name} takes {self._dtypes[0]} (N, C, H, W) input; got {x.dtype} of shape {x.shape}"
            )
        return np.ascontiguousarray(x)

    def _enqueue(self, slot: _Slot) -> None:
        assert self._backend is not None
        with _recording(self._backend) as recording:
            if not slot.context.execute_async_v3(self._stream):
                raise failure(f"{self.path.name}: execute_async_v3 failed", recording.errors())

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        cuda, x = self._cuda, self._input(feed)
        assert cuda is not None
        cuda.make_current()
        index = select_profile(self.profiles, profile, x.shape)
        slot = self._slots[index]
        slot.host_in[: x.nbytes] = x.reshape(-1).view(np.uint8)
        cuda.copy_to_device(slot.device_in, slot.host_in_ptr, x.nbytes, self._stream)
        if not slot.context.set_input_shape(self.input_name, x.shape):
            raise RunnerError(f"{self.path.name}: profile {index} refused input shape {x.shape}")
        out_shape = tuple(slot.context.get_tensor_shape(self.output_name))
        if out_shape != (x.shape[0], slot.plan.output_shape[1]):
            raise RunnerError(
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
