"""The main job's deployment stage: export a trained run, check ONNX Runtime against PyTorch, build the engines
where a builder is installed, and add what was measured to the report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sppnet.core.atomic import write_atomic
from sppnet.engines.parity import check_export, summarise
from sppnet.export.manifest import ONNX_FORMAT, read_manifest
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_from_run


def deploy_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: ExportConfig | None = None,
    parity_sizes: int = 20,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export `run_dir` to `out/onnx`, compare it with PyTorch, build `out/engines`; returns what was measured."""
    from sppnet.export.build import build_engines
    from sppnet.export.trt_builder import BuildError, load_backend

    out = Path(out)
    source = source_from_run(run_dir)
    began = time.perf_counter()
    log(f"exporting {run_dir} to {out / 'onnx'}")
    export_onnx(source, out / "onnx", config or ExportConfig())
    exported = time.perf_counter() - began
    summary = summarise(check_export(source.model, out / "onnx", dynamic_count=parity_sizes))
    files = read_manifest(out / "onnx", ONNX_FORMAT)["files"]
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "onnx_dir": str(out / "onnx"),
        "export_seconds": exported,
        "onnx_files": [{k: f[k] for k in ("file", "kind", "scale", "precision", "spp_form", "bytes")} for f in files],
        "parity": summary,
    }
    try:
        backend = load_backend()
    except BuildError as e:
        result["engines"] = {"built": False, "reason": str(e)}
        log(f"engines not built: {e}")
    else:
        log(f"building engines with {backend.describe()} into {out / 'engines'}")
        manifest_path = build_engines(out / "onnx", out / "engines", progress=log)
        manifest = json.loads(manifest_path.read_text())
        result["engines"] = {
            "built": True,
            "dir": str(out / "engines"),
            "builder": manifest["builder"],
            "files": [
                {k: f.get(k) for k in ("file", "kind", "scale", "precision", "spp_form", "bytes", "build_seconds")}
                for f in manifest["files"]
            ],
            "skipped": manifest.get("skipped", []),
        }
    write_atomic(out / "deploy.json", (json.dumps(result, indent=1) + "\n").encode())
    return result


def deploy_markdown(result: dict[str, Any]) -> str:
    """The report's export section: files, parity against PyTorch, engines."""
    lines = [
        "## Export and engines",
        "",
        f"Run `{result['run_dir']}` exported to `{result['onnx_dir']}` in {result['export_seconds']:.1f} s.",
        "",
        "ONNX Runtime (CPU) against PyTorch; relative error = max |difference| / max |PyTorch logit|:",
        "",
        "| file | sizes | max abs | max rel | tolerance | top-1 agreement |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["parity"]:
        lines.append(
            f"| {s['file']} | {s['sizes']} | {s['max_abs']:.3g} | {s['max_rel']:.3g} | {s['tolerance']:.0e} | "
            f"{100 * s['top1_agree']:.1f}% |"
        )
    engines = result["engines"]
    lines.append("")
    if not engines["built"]:
        lines.append(f"Engines: not built ({engines['reason']}).")
        return "\n".join(lines) + "\n"
    builder = engines["builder"]
    lines += [
        f"Engines built with {builder.get('module')} {builder.get('version')} in `{engines['dir']}` "
        "(built on this machine; running them needs a GPU):",
        "",
        "| engine | kind | precision | SPP | MiB | build s |",
        "|---|---|---|---|---|---|",
    ]
    for f in engines["files"]:
        lines.append(
            f"| {f['file']} | {f['kind']} | {f['precision']} | {f['spp_form']} | {f['bytes'] / 2**20:.1f} | "
            f"{f['build_seconds']:.1f} |"
        )
    for skipped in engines["skipped"]:
        lines.append(f"\nSkipped {skipped.get('onnx_file')}: {skipped.get('reason')}")
    return "\n".join(lines) + "\n"


def add_to_report(report: str | os.PathLike[str], section: str) -> None:
    """Append (or replace) the export section of a markdown report, atomically."""
    path = Path(report)
    text = path.read_text()
    head = section.splitlines()[0]
    if head in text:
        text = text[: text.index(head)].rstrip() + "\n"
    write_atomic(path, (text.rstrip() + "\n\n" + section).encode())
