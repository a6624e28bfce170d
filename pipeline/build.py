"""Stage 5, build: the export's engines with the first TensorRT builder installed (TensorRT-RTX builds without a
GPU), or the reason none was built."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.errors import BuildError
from sppnet.core.manifest import ModelFile, read_engine_manifest
from sppnet.export.build import build_engines
from sppnet.export.trt_module import load_backend
from sppnet.pipeline.export import ExportResult


@dataclass(frozen=True)
class BuildResult:
    """The engines built (or why none were), by which builder, and the files the builder skipped."""

    engine_dir: Path | None
    builder: str | None
    files: tuple[ModelFile, ...] = ()
    skipped: tuple[dict[str, Any], ...] = ()
    reason: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        if self.engine_dir is None:
            return {"built": False, "reason": self.reason}
        return {
            "built": True,
            "dir": str(self.engine_dir),
            "builder": self.builder,
            "files": [
                {"file": f.file, "kind": f.kind, "precision": f.precision, "bytes": f.bytes, "seconds": f.seconds}
                for f in self.files
            ],
            "skipped": list(self.skipped),
        }

    def markdown(self) -> str:
        """The report's engines section."""
        lines = ["## Engines", ""]
        if self.engine_dir is None:
            return "\n".join([*lines, f"Not built: {self.reason}", ""])
        lines += [
            f"Built with {self.builder} in `{self.engine_dir}` (built on this machine; running them needs a GPU "
            "the builder targets):",
            "",
            "| engine | kind | precision | SPP | MiB | build s |",
            "|---|---|---|---|---|---|",
        ]
        for f in self.files:
            lines.append(
                f"| {f.file} | {f.kind} | {f.precision} | {f.spp_form} | {f.bytes / 2**20:.1f} | {f.seconds:.1f} |"
            )
        lines += [f"\nSkipped {s['source_file']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines) + "\n"


def build_export(export: ExportResult, out: Path, log: Callable[[str], None] = print) -> BuildResult:
    """Build `out/engines` from the export, or record why no builder is available."""
    try:
        backend = load_backend()
    except BuildError as e:
        log(f"engines not built: {e}")
        return BuildResult(None, None, reason=str(e))
    engine_dir = out / "engines"
    log(f"building engines with {backend.describe()} into {engine_dir}")
    began = time.perf_counter()
    build_engines(export.onnx_dir, engine_dir, progress=log)
    manifest = read_engine_manifest(engine_dir)
    return BuildResult(
        engine_dir,
        manifest.builder.describe(),
        manifest.files,
        manifest.skipped,
        seconds=time.perf_counter() - began,
    )
