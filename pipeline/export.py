"""Stage 4, export: the first multi-size SPP run to ONNX (training scales + the dynamic model), and every file
checked against PyTorch in ONNX Runtime (`sppnet.engines.parity`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.manifest import ModelFile, read_export_manifest
from sppnet.engines.compare import summarise
from sppnet.engines.parity import check_export
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_from_run


@dataclass(frozen=True)
class ExportResult:
    """The export directory, its files, and each file's agreement with PyTorch."""

    run_dir: Path
    onnx_dir: Path
    seconds: float
    files: tuple[ModelFile, ...]
    parity: tuple[dict[str, Any], ...]

    @property
    def ok(self) -> bool:
        return all(row["ok"] for row in self.parity)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "onnx_dir": str(self.onnx_dir),
            "export_seconds": self.seconds,
            "onnx_files": [
                {"file": f.file, "kind": f.kind, "precision": f.precision, "spp_form": f.spp_form, "bytes": f.bytes}
                for f in self.files
            ],
            "parity": list(self.parity),
        }

    def markdown(self) -> str:
        """The report's export section."""
        lines = [
            "## Export",
            "",
            f"Run `{self.run_dir}` exported to `{self.onnx_dir}` in {self.seconds:.1f} s.",
            "",
            "ONNX Runtime (CPU) against PyTorch; relative error = max |difference| / max |PyTorch logit|:",
            "",
            "| file | sizes | max abs | max rel | tolerance | top-1 agreement |",
            "|---|---|---|---|---|---|",
        ]
        for s in self.parity:
            lines.append(
                f"| {s['file']} | {s['sizes']} | {s['max_abs']:.3g} | {s['max_rel']:.3g} | {s['tolerance']:.0e} | "
                f"{100 * s['top1_agree']:.1f}% |"
            )
        return "\n".join(lines) + "\n"


def export_run(
    run_dir: Path,
    out: Path,
    *,
    parity_sizes: int,
    config: ExportConfig | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export `run_dir` to `out/onnx` and compare every file with the run's PyTorch model."""
    source = source_from_run(run_dir)
    onnx_dir = out / "onnx"
    began = time.perf_counter()
    log(f"exporting {run_dir} to {onnx_dir}")
    export_onnx(source, onnx_dir, config or ExportConfig())
    seconds = time.perf_counter() - began
    parity = tuple(summarise(check_export(source.model, onnx_dir, dynamic_count=parity_sizes)))
    return ExportResult(run_dir, onnx_dir, seconds, read_export_manifest(onnx_dir).files, parity)
