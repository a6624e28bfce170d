"""CUDA memory, streams and graphs for the runtime's GPU backends, in one place: two thin implementations.

`CudaPython` goes through cuda-python's runtime bindings (no torch on the hot path), `CudaTorch` through torch.cuda
where cuda-python is absent. Both own nothing implicitly: callers free what they allocate. Every call is checked
and names the failing call and its error; out of memory is an `OutOfMemory`, no usable GPU a `DeviceUnavailable`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np

from sppnet.core.errors import BackendError, DeviceUnavailable, OutOfMemory, one_line

CUDA_APIS = ("cuda-python", "torch")
NO_GPU_FIX = (
    "run on a machine with an NVIDIA GPU and its driver (nvidia-smi must list it), or serve the ONNX export on the "
    "CPU (`sppnet infer IMAGE --engines ONNX_DIR`)"
)
# CUDA runtime errors that mean there is no usable GPU here, not that a call went wrong.
_NO_DEVICE = frozenset(
    {
        "cudaErrorInsufficientDriver",
        "cudaErrorNoDevice",
        "cudaErrorInvalidDevice",
        "cudaErrorDevicesUnavailable",
        "cudaErrorSystemDriverMismatch",
        "cudaErrorCompatNotSupportedOnDevice",
        "cudaErrorStubLibrary",
    }
)


def check_cuda(result: Any, call: str) -> Any:
    """The value(s) of a cuda-python call `(error, *values)`; BackendError (OutOfMemory) naming the call and error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        name = getattr(error, "name", None) or f"CUDA error {int(error)}"
        if name == "cudaErrorMemoryAllocation":
            raise OutOfMemory(f"CUDA {call} failed with {name}: use smaller batches or free GPU memory")
        if name in _NO_DEVICE:
            raise DeviceUnavailable(f"no usable CUDA GPU (CUDA {call} failed with {name}): {NO_GPU_FIX}")
        raise BackendError(f"CUDA {call} failed with {name}: check the GPU and its driver (nvidia-smi)")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


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
            raise DeviceUnavailable(
                f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False): {NO_GPU_FIX}"
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
        except BackendError:
            raise
        except self.torch.cuda.OutOfMemoryError as e:
            raise OutOfMemory(f"CUDA {what} ran out of memory (torch: {one_line(e)}): use smaller batches") from e
        except RuntimeError as e:
            raise BackendError(f"CUDA {what} failed (torch: {one_line(e)}): check the GPU and its driver") from e

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


def load_cuda(name: str | None, device: int) -> CudaPython | CudaTorch:
    """The CUDA API `name` ("cuda-python" or "torch"), or None: cuda-python if importable, else torch."""
    if name is not None and name not in CUDA_APIS:
        raise BackendError(f"unknown CUDA API {name!r}: choose one of {', '.join(CUDA_APIS)}")
    if name in (None, "cuda-python"):
        try:
            import cuda.bindings.runtime  # noqa: F401
        except ImportError as e:
            if name is not None:
                raise BackendError(f"cuda-python is not importable ({e}): pip install cuda-python") from e
        else:
            return CudaPython(device)
    try:
        return CudaTorch(device)
    except ImportError as e:
        raise BackendError(
            "the TensorRT backend needs cuda-python or torch for CUDA memory and streams: pip install cuda-python"
        ) from e
