"""One interface for every backend (Polygraphy's runner pattern): activate, infer, deactivate.

A runner wraps one model file (an engine, an ONNX file, the PyTorch reference) and maps input names to arrays and
back. The public methods check state and call the `_impl` methods, the only thing a backend overrides. Errors are
`sppnet.core.errors.BackendError` (and its `OutOfMemory`, `DeviceUnavailable`), each naming the fix.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from sppnet.core.errors import BackendError


@dataclass(frozen=True)
class TensorMeta:
    """One input or output of a model: its name, dtype and shape (None where the axis is dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def check_feed(runner: str, meta: TensorMeta, array: np.ndarray) -> None:
    """Refuse an input whose dtype, rank or fixed dimensions differ from the model's, naming what it takes."""
    shape = getattr(array, "shape", None)
    fits = (
        isinstance(array, np.ndarray)
        and array.dtype == meta.dtype
        and len(array.shape) == len(meta.shape)
        and all(want is None or want == got for want, got in zip(meta.shape, array.shape, strict=True))
    )
    if not fits:
        takes = "x".join("N" if d is None else str(d) for d in meta.shape)
        got = f"{getattr(array, 'dtype', type(array).__name__)} {shape}"
        raise BackendError(f"{runner} input {meta.name!r} takes {meta.dtype} ({takes}); got {got}: convert it first")


class Runner(ABC):
    """Runs one model: `infer({"image": (N, 3, H, W) float32})` -> `{"logits": (N, classes) float32}`.

    `infer` may be called from several threads: a lock serialises calls into the backend, whose contexts and
    buffers are not shared-safe. `profile` selects a dynamic engine's optimisation profile (ignored by backends
    without profiles). `inputs()` and `outputs()` describe the model once it is active.
    """

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self._lock = threading.Lock()

    def activate(self) -> Runner:
        """Load the model and allocate what it needs; idempotent."""
        with self._lock:
            if not self.is_active:
                self._activate_impl()
                self.is_active = True
        return self

    def infer(self, feed: dict[str, np.ndarray], profile: int = 0) -> dict[str, np.ndarray]:
        """Run one batch; the runner must be active and the feed must hold exactly the model's inputs."""
        self._check_active()
        inputs = self.inputs()
        expected = [meta.name for meta in inputs]
        if sorted(feed) != sorted(expected):
            raise BackendError(f"{self.name} takes inputs {expected}; got {sorted(feed)}: feed the model's input names")
        for meta in inputs:
            check_feed(self.name, meta, feed[meta.name])
        with self._lock:
            return self._infer_impl(feed, profile)

    def inputs(self) -> list[TensorMeta]:
        """The model's inputs; the runner must be active."""
        self._check_active()
        return self._inputs_impl()

    def outputs(self) -> list[TensorMeta]:
        """The model's outputs; the runner must be active."""
        self._check_active()
        return self._outputs_impl()

    def deactivate(self) -> None:
        """Free what `activate` allocated; idempotent."""
        with self._lock:
            if self.is_active:
                self._deactivate_impl()
                self.is_active = False

    def _check_active(self) -> None:
        if not self.is_active:
            raise BackendError(f"{self.name} is not active: call activate() or use it as a context manager")

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    @abstractmethod
    def _activate_impl(self) -> None: ...

    @abstractmethod
    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _inputs_impl(self) -> list[TensorMeta]: ...

    @abstractmethod
    def _outputs_impl(self) -> list[TensorMeta]: ...

    @abstractmethod
    def _deactivate_impl(self) -> None: ...
