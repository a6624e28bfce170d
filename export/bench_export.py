"""`sppnet bench export`: export and engine-build time per file, and file sizes, for the networks asked for."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sppnet.core.manifest import ModelFile, read_engine_manifest, read_export_manifest
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_untrained


@dataclass(frozen=True)
class ExportRow:
    """One ONNX file and the engine built from it (engine fields None where none was built)."""

    network: str
    file: str
    kind: str
    precision: str
    spp_form: str
    onnx_mib: float
    export_s: float
    engine_mib: float | None
    build_s: float | None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bench_export(
    networks: Sequence[str],
    out_dir: str | Path,
    *,
    config: ExportConfig | None = None,
    build: bool = True,
    keep: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[ExportRow]:
    """Export each network (Caffe-initialised weights: timing does not depend on training) and build its engines."""
    from sppnet.export.build import build_engines

    rows = []
    for network in networks:
        base = Path(out_dir) / network
        onnx_dir, engine_dir = base / "onnx", base / "engines"
        export_onnx(source_untrained(network), onnx_dir, config or ExportConfig(), progress=log)
        engines: dict[str, ModelFile] = {}
        skipped: dict[str, str] = {}
        if build:
            manifest = read_engine_manifest(build_engines(onnx_dir, engine_dir, progress=log).parent, verify=False)
            engines = {f.source_file or "": f for f in manifest.files}
            skipped = {s["source_file"]: s["reason"] for s in manifest.skipped}
        for f in read_export_manifest(onnx_dir, verify=False).files:
            engine = engines.get(f.file)
            rows.append(
                ExportRow(
                    network,
                    f.file,
                    f.kind,
                    f.precision,
                    f.spp_form,
                    f.bytes / 2**20,
                    f.seconds,
                    engine.bytes / 2**20 if engine else None,
                    engine.seconds if engine else None,
                    "" if engine or not build else skipped.get(f.file, "not built").split(", so")[0],
                )
            )
        if not keep:
            shutil.rmtree(base)
    return rows


def format_rows(rows: Sequence[ExportRow], builder: str) -> str:
    """A table: per file its export time and size, and the engine's build time and size."""
    lines = [
        f"export and engine build per file (engines by {builder}; times in seconds, sizes in MiB)",
        f"{'file':42} {'onnx MiB':>9} {'export s':>9} {'engine MiB':>11} {'build s':>8}  note",
    ]
    for r in rows:
        engine = f"{r.engine_mib:11.1f} {r.build_s:8.1f}" if r.engine_mib is not None else f"{'-':>11} {'-':>8}"
        lines.append(f"{r.file:42} {r.onnx_mib:9.1f} {r.export_s:9.2f} {engine}  {r.note[:60]}")
    built = [r for r in rows if r.build_s is not None]
    if built:
        total_export = sum(r.export_s for r in built)
        total_build = sum(r.build_s for r in built)  # type: ignore[misc]
        lines.append(
            f"built {len(built)} engines: build/export time ratio {total_build / max(total_export, 1e-9):.1f}x, "
            f"engine/onnx size ratio {sum(r.engine_mib for r in built) / sum(r.onnx_mib for r in built):.2f}x"  # type: ignore[misc]
        )
    return "\n".join(lines)
