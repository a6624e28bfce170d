"""The one error model: every error a user can cause or fix derives from `SppnetError`.

Each message is one line naming the problem and the fix. The CLI prints these as `sppnet: error: ...` (exit
status 2); anything else is a bug and keeps its traceback. The subclasses say what kind of fix is needed; the
ones that replace a built-in exception also derive from it, so `except ValueError` in callers keeps working.
"""

from __future__ import annotations


class SppnetError(Exception):
    """An error the user can cause or fix; its message is one line naming the problem and the fix."""


class InvalidInput(SppnetError, ValueError):
    """A bad argument, option or value: an unknown name, a size too small, a setting that does not fit."""


class BadImage(InvalidInput):
    """An image that cannot be used (missing, corrupt, truncated, too small, too large, wrong channels)."""


class BadData(InvalidInput):
    """A dataset, annotation or other input file that is malformed or missing."""


class ArtifactError(SppnetError, ValueError):
    """A file sppnet wrote (run, checkpoint, manifest, ONNX, engine) is missing, damaged or does not match."""


class RouteError(InvalidInput):
    """No model takes this image at this size; the message names the ranges and the options."""


class BackendError(SppnetError, RuntimeError):
    """A backend cannot load or run a model for a reason the user can fix (versions, files, settings)."""


class DeviceUnavailable(BackendError):
    """The device a command needs is absent: no GPU, no driver, no CUDA provider."""


class OutOfMemory(BackendError):
    """The device ran out of memory for this batch; the dispatcher retries with smaller batches."""


class BuildError(SppnetError, ValueError):
    """No engine builder is installed, or the builder refused a model."""


def one_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), for per-item error lists."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
