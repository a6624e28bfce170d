"""Manifests of an ONNX export directory and of an engine directory: written atomically, read back and verified.

Both are JSON beside the files they list. Every listed file carries its sha256, so a reader can refuse a file that
was changed, truncated or swapped, with a message that says how to rebuild it. No torch here: the runtime reads
engine manifests on its hot path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sppnet.core.atomic import read_json, sha256_file, write_atomic

MANIFEST = "manifest.json"
ONNX_FORMAT = "sppnet-onnx"
ENGINE_FORMAT = "sppnet-engines"
VERSION = 1

FIX = {
    ONNX_FORMAT: "re-export it with `sppnet export --checkpoint RUN --out DIR`",
    ENGINE_FORMAT: "rebuild it with `sppnet build --onnx DIR --out ENGINE_DIR`",
}
WHAT = {ONNX_FORMAT: "ONNX export manifest", ENGINE_FORMAT: "engine manifest"}


class ManifestError(ValueError):
    """A manifest or a file it lists is missing, damaged or does not match; the message names the fix."""


def file_entry(path: Path, **fields: Any) -> dict[str, Any]:
    """One listed file: its name (relative to the manifest), size, sha256 and the given fields."""
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path), **fields}


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write `directory/manifest.json` atomically (after every file it lists is in place)."""
    path = Path(directory) / MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=1) + "\n").encode())
    return path


def read_manifest(directory: str | os.PathLike[str], fmt: str, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of `directory` in format `fmt`; with `verify`, every listed file must exist and match its hash."""
    directory = Path(directory)
    path = directory / MANIFEST
    fix = FIX[fmt]
    try:
        manifest = read_json(path, WHAT[fmt], fix)
    except ValueError as e:
        raise ManifestError(str(e)) from e
    if manifest.get("format") != fmt or manifest.get("version") != VERSION:
        found = f"{manifest.get('format')!r} version {manifest.get('version')!r}"
        raise ManifestError(f"{path} is {found}, not an {fmt} version {VERSION} manifest: {fix}")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and {"file", "sha256"} <= f.keys() for f in files):
        raise ManifestError(f"{path} has no valid 'files' list: the manifest is damaged; {fix}")
    if verify:
        for entry in files:
            verify_file(directory, entry, fix)
    return manifest


def verify_file(directory: Path, entry: dict[str, Any], fix: str) -> Path:
    """The path of a listed file after checking that it exists and that its sha256 matches the manifest."""
    path = directory / entry["file"]
    if not path.is_file():
        raise ManifestError(f"{path} is listed in {directory / MANIFEST} but missing: {fix}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ManifestError(
            f"{path} does not match its manifest (sha256 {digest[:12]}... instead of {entry['sha256'][:12]}...): "
            f"the file was changed or truncated; {fix}"
        )
    return path
