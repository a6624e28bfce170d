"""Files that are whole or absent: atomic writes, sha256 and JSON reading with one-line errors; no torch.

Shared by checkpoints, exports, engine builds and the runtime (which must not import torch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sppnet.core.errors import ArtifactError


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), where it is skipped.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write the file under; on success it is fsynced and renamed to `path`,
    on failure removed. For files another library writes (safetensors' `save_file` streams a large model)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a fsynced temporary file in the same directory and a rename."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def sha256(data: bytes) -> str:
    """The hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object file, or a one-line ValueError naming `what`, the path and `fix`."""
    if not path.is_file():
        raise ArtifactError(f"no {what} at {path}: {fix}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{what} {path} is unreadable ({e}): {fix}") from e
    if not isinstance(record, dict):
        raise ArtifactError(f"{what} {path} is not a JSON object: {fix}")
    return record
