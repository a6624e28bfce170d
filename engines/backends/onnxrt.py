"""ONNX Runtime backend: one session per ONNX file; CPU here, the CUDA provider where it is installed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sppnet.engines.backends.base import OutOfMemory, Runner, RunnerError

PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers(wanted: Sequence[str] = PROVIDERS) -> list[str]:
    """The wanted execution providers this onnxruntime build has, in order of preference."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in wanted if p in have]


class OnnxRuntimeRunner(Runner):
    """Runs one ONNX file with ONNX Runtime; `threads` bounds intra-op threads (0: ONNX Runtime's default)."""

    name = "onnxruntime"

    def __init__(
        self, path: str | os.PathLike[str], *, providers: Sequence[str] | None = None, threads: int = 0
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.providers = list(providers) if providers is not None else available_providers()
        self.threads = threads
        self.session = None

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # fp16 nodes fall back to fp32 CPU kernels with a warning each
        options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise RunnerError(f"ONNX Runtime cannot load {self.path} ({str(e).splitlines()[0]}): re-export it") from e

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        assert self.session is not None
        try:
            outputs = self.session.run(None, feed)
        except Exception as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "Failed to allocate memory" in message or "out of memory" in message.lower():
                raise OutOfMemory(f"ONNX Runtime ran out of memory on {self.path.name}: {message}") from e
            raise RunnerError(f"ONNX Runtime failed on {self.path.name}: {message}") from e
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, outputs, strict=True))

    def _deactivate_impl(self) -> None:
        self.session = None
