"""One interface for every backend (Polygraphy's runner pattern): activate, infer, deactivate.

A runner wraps one model file (an engine, an ONNX file, or the PyTorch reference) and maps input names to arrays
and back. The public methods check state and call the `_impl` methods, the only thing a backend overrides.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from types import TracebackType

import numpy as np


class RunnerError(RuntimeError):
    """A backend failed to load or run; the message names the component and the fix."""


class OutOfMemory(RunnerError):
    """The device ran out of memory for this batch; the dispatcher retries with smaller batches."""


class Runner(ABC):
    """Runs one model: `infer({"image": (N, 3, H, W) float32})` -> `{"logits": (N, classes) float32}`.

    `infer` may be called from several threads: a lock serialises calls into the backend, whose contexts and
    buffers are not shared-safe. `profile` selects a dynamic engine's optimisation profile (ignored by backends
    without profiles).
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
        """Run one batch; the runner must be active."""
        if not self.is_active:
            raise RunnerError(f"{self.name} is not active: call activate() or use it as a context manager")
        with self._lock:
            return self._infer_impl(feed, profile)

    def deactivate(self) -> None:
        """Free what `activate` allocated; idempotent."""
        with self._lock:
            if self.is_active:
                self._deactivate_impl()
                self.is_active = False

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
    def _deactivate_impl(self) -> None: ...
