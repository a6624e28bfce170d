"""Which TensorRT module runs here, and what it logs: shared by the engine builder and the runtime's runner.

Full `tensorrt` first (plugins, timing cache; needs a GPU to build), then `tensorrt_rtx` (TensorRT for RTX: builds
on a machine without a GPU, has no plugins). TensorRT keeps the first logger a process registers, so there is one
logger per module; each `recording(backend)` block collects, for itself, the errors logged while it is open, so
concurrent builds and runners never see or drop each other's messages. No torch, no onnx here.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sppnet.core.errors import BuildError

MODULES = ("tensorrt", "tensorrt_rtx")
INSTALL_HINT = (
    "install TensorRT-RTX with `pip install tensorrt-rtx-cu13` (or the project's extra: `pip install -e .[trt-rtx]`)"
)
MAX_MESSAGES = 3


@dataclass(frozen=True)
class Backend:
    """The TensorRT module that builds or runs engines, and what it can do."""

    trt: ModuleType

    @property
    def name(self) -> str:
        return self.trt.__name__

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def supports_plugins(self) -> bool:
        """Full TensorRT runs custom-op plugins; TensorRT-RTX has none."""
        return not self.is_rtx

    @property
    def supports_timing_cache(self) -> bool:
        return not self.is_rtx

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def load_backend(name: str | None = None) -> Backend:
    """The module `name`, or the first importable of `tensorrt`, `tensorrt_rtx`; else a BuildError naming the fix."""
    if name is not None and name not in MODULES:
        raise BuildError(f"unknown TensorRT builder {name!r}: choose one of {', '.join(MODULES)}")
    tried = []
    for candidate in (name,) if name else MODULES:
        try:
            module = importlib.import_module(candidate)
        except (ImportError, OSError) as e:  # OSError: a wheel whose shared libraries fail to load
            tried.append(f"{candidate} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'missing'})")
            continue
        if not hasattr(module, "Builder"):  # e.g. the PyPI `tensorrt` placeholder without its vendor wheel
            tried.append(f"{candidate} (no Builder: an incomplete install)")
            continue
        return Backend(module)
    raise BuildError(f"no TensorRT builder could be imported (tried {'; '.join(tried)}): {INSTALL_HINT}")


class Recording:
    """The error messages a module logged while this recording was open, as one-line strings."""

    def __init__(self, error_severity: Any) -> None:
        self.error_severity = error_severity
        self.lines: list[str] = []

    def add(self, severity: Any, message: str) -> None:
        line = " ".join(message.split())
        if severity <= self.error_severity and line not in self.lines:
            self.lines.append(line)

    def errors(self) -> list[str]:
        return list(self.lines)


_LOGGERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def logger(backend: Backend) -> Any:
    """The module's one logger: it hands every message to each recording open at that moment."""
    with _LOCK:
        if backend.name not in _LOGGERS:
            trt = backend.trt

            class Recorder(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.open: set[Recording] = set()
                    self.lock = threading.Lock()

                def log(self, severity: Any, msg: str) -> None:
                    with self.lock:
                        listeners = list(self.open)
                    for recording in listeners:
                        recording.add(severity, msg)

            _LOGGERS[backend.name] = Recorder()
        return _LOGGERS[backend.name]


@contextmanager
def recording(backend: Backend) -> Iterator[Recording]:
    """Collect the errors the module logs inside the block (a message logged by another thread's work while the
    block is open is collected too: TensorRT's logger does not say which call logged it)."""
    recorder = logger(backend)
    current = Recording(backend.trt.ILogger.Severity.ERROR)
    with recorder.lock:
        recorder.open.add(current)
    try:
        yield current
    finally:
        with recorder.lock:
            recorder.open.discard(current)


def summary(messages: Sequence[str]) -> str:
    """Up to three messages joined on one line, with a count of the rest."""
    if not messages:
        return "no message"
    more = f" (+{len(messages) - MAX_MESSAGES} more)" if len(messages) > MAX_MESSAGES else ""
    return " | ".join(messages[:MAX_MESSAGES]) + more
