"""ONNX Runtime backend: a lazy session loader and the runner that uses it; CPU here, CUDA where installed.

`SessionFromOnnx(path)` is a Polygraphy-style loader: it builds the session when called, so a pipeline is composed
first and loaded once. Every ONNX Runtime session of the project is built here (runtime, parity, GPU check).

On a GPU (onnxruntime-gpu, `pip install 'sppnet[gpu]'`) the CUDA provider is set up for streams of mixed sizes:
cuDNN picks convolution algorithms by its heuristics instead of timing every candidate for every new input shape
(ONNX Runtime's default, EXHAUSTIVE, retunes each shape: a stream of random sizes never leaves the tuning), TF32
is off unless asked for (parity with the CPU: about 1e-6 instead of 5e-4), and calls go through IO binding.
`--device cuda` without a CUDA provider, or with one that fails to load, is refused in one line with the fix.
Unverified here (no GPU): everything behind the CUDA provider.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.errors import BackendError, DeviceUnavailable, InvalidInput, OutOfMemory, one_line
from sppnet.engines.backends.base import Runner, TensorMeta

PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CUDNN_SEARCH = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
GPU_FIX = (
    "install the CUDA 13 build in its place (`pip uninstall -y onnxruntime && pip install 'sppnet[gpu]'`, "
    "i.e. onnxruntime-gpu>=1.31), or pass --device cpu"
)


def available_providers(wanted: Sequence[str] = PROVIDERS) -> list[str]:
    """The wanted execution providers this onnxruntime build has, in order of preference."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in wanted if p in have]


def cuda_provider_options(
    *, device_id: int = 0, tf32: bool = False, cudnn_search: str = "HEURISTIC", prefer_nhwc: bool = False
) -> dict[str, str]:
    """The CUDA provider's options for a stream of mixed sizes (see the module docstring)."""
    if cudnn_search not in CUDNN_SEARCH:
        raise InvalidInput(f"cuDNN algorithm search {cudnn_search!r} is not one of {', '.join(CUDNN_SEARCH)}")
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": cudnn_search,
        "use_tf32": "1" if tf32 else "0",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "prefer_nhwc": "1" if prefer_nhwc else "0",
    }


def cuda_device_id(device: str) -> int:
    """N of "cuda:N" (0 for "cuda"); InvalidInput for anything that is not a CUDA device."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InvalidInput(f"device {device!r} is not cuda or cuda:N")
    return int(index or 0)


def load_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu needs: through torch (its cu13 wheels ship them) when
    installed, else through onnxruntime's own preloader (the nvidia-* wheels)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")  # loads libcudart, cuBLAS and cuDNN into the process
            return
    except ImportError:
        pass
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):  # a missing library shows as the CUDA provider failing to load
            ort.preload_dlls()


def providers_for(device: str, **cuda_options: Any) -> list[Any]:
    """Execution providers (with options) for "cpu" or "cuda[:N]"; DeviceUnavailable where this onnxruntime has
    no CUDA provider."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    device_id = cuda_device_id(device)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceUnavailable(f"onnxruntime {ort.__version__} has no CUDA provider (it is the CPU build): {GPU_FIX}")
    load_cuda_libraries()
    options = cuda_provider_options(device_id=device_id, **cuda_options)
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


class SessionFromOnnx:
    """Lazy loader: an ONNX Runtime session for one file when called.

    Args:
        providers: execution providers in order of preference; overrides `device`.
        device: "cpu" or "cuda[:N]" (None: CUDA if this build has it, then CPU, without insisting on CUDA).
        threads: intra-op threads (0: ONNX Runtime's default).
        tf32, cudnn_search, prefer_nhwc: CUDA provider options (`cuda_provider_options`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[Any] | None = None,
        device: str | None = None,
        threads: int = 0,
        tf32: bool = False,
        cudnn_search: str = "HEURISTIC",
        prefer_nhwc: bool = False,
    ) -> None:
        self.path = Path(path)
        self.providers = list(providers) if providers is not None else None
        self.device, self.threads = device, threads
        self.cuda_options = {"tf32": tf32, "cudnn_search": cudnn_search, "prefer_nhwc": prefer_nhwc}

    def resolve_providers(self) -> list[Any]:
        """The providers the session is created with: explicit ones, the device's, or the best available."""
        if self.providers is not None:
            return self.providers
        if self.device is not None:
            return providers_for(self.device, **self.cuda_options)
        found = available_providers()
        if "CUDAExecutionProvider" in found:
            options = cuda_provider_options(**self.cuda_options)  # type: ignore[arg-type]
            return [("CUDAExecutionProvider", options), *[p for p in found if p != "CUDAExecutionProvider"]]
        return found

    def __call__(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # fp16 nodes fall back to fp32 CPU kernels with a warning each
        options.intra_op_num_threads = self.threads
        providers = self.resolve_providers()
        try:
            session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            first = one_line(e)
            raise BackendError(f"ONNX Runtime cannot load {self.path} ({first}): re-export it") from e
        if self.device is not None and self.device != "cpu" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise DeviceUnavailable(
                f"ONNX Runtime's CUDA provider did not load for {self.path.name} (CUDA 13 and cuDNN 9 libraries not "
                "found, or no GPU): install torch for CUDA 13 or the nvidia-* CUDA 13 wheels, or pass --device cpu"
            )
        return session


class OnnxRuntimeRunner(Runner):
    """Runs one ONNX file with ONNX Runtime; takes a path or a `SessionFromOnnx` loader.

    `io_binding` (default: on when the session runs on CUDA) binds inputs and outputs explicitly; `infer_tensor`
    runs torch tensors already on the session's device without a trip through host memory.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | SessionFromOnnx,
        *,
        io_binding: bool | None = None,
        **loader_options: Any,
    ) -> None:
        super().__init__()
        self.loader = model if isinstance(model, SessionFromOnnx) else SessionFromOnnx(model, **loader_options)
        self.session: Any = None
        self.io_binding = io_binding
        self.on_cuda = False
        self.device_id = 0

    def _activate_impl(self) -> None:
        self.session = self.loader()
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        if self.on_cuda:
            options = self.session.get_provider_options().get("CUDAExecutionProvider", {})
            self.device_id = int(options.get("device_id", 0))
        if self.io_binding is None:
            self.io_binding = self.on_cuda

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        with self._errors():
            if not self.io_binding:
                return dict(zip(names, self.session.run(None, feed), strict=True))
            binding = self.session.io_binding()
            for name, array in feed.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for name in names:
                binding.bind_output(name, "cuda" if self.on_cuda else "cpu", self.device_id)
            self.session.run_with_iobinding(binding)
            return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))

    def infer_tensor(self, x: Any) -> Any:
        """float32 (N, 3, H, W) torch tensor on the session's device -> float32 logits tensor on that device."""
        import torch

        self._check_active()
        (meta,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        x = x.contiguous()
        logits = torch.empty((x.shape[0], self._classes()), dtype=torch.float32, device=x.device)
        kind = "cuda" if x.is_cuda else "cpu"
        index = (x.device.index or 0) if x.is_cuda else 0
        with self._lock, self._errors():
            if x.is_cuda:
                torch.cuda.current_stream(x.device).synchronize()  # ONNX Runtime reads on its own stream
            binding = self.session.io_binding()
            binding.bind_input(meta.name, kind, index, np.float32, tuple(x.shape), x.data_ptr())
            binding.bind_output(out.name, kind, index, np.float32, tuple(logits.shape), logits.data_ptr())
            self.session.run_with_iobinding(binding)
        return logits

    def _classes(self) -> int:
        shape = self.session.get_outputs()[0].shape
        if not isinstance(shape[-1], int):
            raise BackendError(f"{self.loader.path.name} has no fixed number of classes in its output shape {shape}")
        return shape[-1]

    @contextlib.contextmanager
    def _errors(self) -> Any:
        try:
            yield
        except Exception as e:
            message = one_line(e)
            if "Failed to allocate memory" in message or "out of memory" in message.lower():
                raise OutOfMemory(f"ONNX Runtime ran out of memory on {self.loader.path.name}: {message}") from e
            raise BackendError(f"ONNX Runtime failed on {self.loader.path.name}: {message}") from e

    def _inputs_impl(self) -> list[TensorMeta]:
        return [_meta(arg) for arg in self.session.get_inputs()]

    def _outputs_impl(self) -> list[TensorMeta]:
        return [_meta(arg) for arg in self.session.get_outputs()]

    def _deactivate_impl(self) -> None:
        self.session = None


def _meta(arg: Any) -> TensorMeta:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorMeta(arg.name, np.dtype(_DTYPES.get(arg.type, np.float32)), shape)
