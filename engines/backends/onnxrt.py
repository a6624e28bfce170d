"""ONNX Runtime backend: a lazy session loader and the runner that uses it; CPU here, CUDA where installed.

`SessionFromOnnx(path)` is a Polygraphy-style loader: it builds the session when called, so a pipeline is composed
first and loaded once. Every ONNX Runtime session of the project is built here (runtime, parity, GPU check).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.errors import BackendError, OutOfMemory
from sppnet.engines.backends.base import Runner, TensorMeta

PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def available_providers(wanted: Sequence[str] = PROVIDERS) -> list[str]:
    """The wanted execution providers this onnxruntime build has, in order of preference."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in wanted if p in have]


class SessionFromOnnx:
    """Lazy loader: an ONNX Runtime session for one file when called.

    Args:
        providers: execution providers in order of preference (default: CUDA if this build has it, then CPU).
        threads: intra-op threads (0: ONNX Runtime's default).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, providers: Sequence[str] | None = None, threads: int = 0
    ) -> None:
        self.path = Path(path)
        self.providers = list(providers) if providers is not None else None
        self.threads = threads

    def __call__(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # fp16 nodes fall back to fp32 CPU kernels with a warning each
        options.intra_op_num_threads = self.threads
        providers = self.providers if self.providers is not None else available_providers()
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"ONNX Runtime cannot load {self.path} ({first}): re-export it") from e


class OnnxRuntimeRunner(Runner):
    """Runs one ONNX file with ONNX Runtime; takes a path or a `SessionFromOnnx` loader."""

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike[str] | SessionFromOnnx, **loader_options: Any) -> None:
        super().__init__()
        self.loader = model if isinstance(model, SessionFromOnnx) else SessionFromOnnx(model, **loader_options)
        self.session: Any = None

    def _activate_impl(self) -> None:
        self.session = self.loader()

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, feed)
        except Exception as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "Failed to allocate memory" in message or "out of memory" in message.lower():
                raise OutOfMemory(f"ONNX Runtime ran out of memory on {self.loader.path.name}: {message}") from e
            raise BackendError(f"ONNX Runtime failed on {self.loader.path.name}: {message}") from e
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, outputs, strict=True))

    def _inputs_impl(self) -> list[TensorMeta]:
        return [_meta(arg) for arg in self.session.get_inputs()]

    def _outputs_impl(self) -> list[TensorMeta]:
        return [_meta(arg) for arg in self.session.get_outputs()]

    def _deactivate_impl(self) -> None:
        self.session = None


def _meta(arg: Any) -> TensorMeta:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorMeta(arg.name, np.dtype(_DTYPES.get(arg.type, np.float32)), shape)
