"""ONNX Runtime against PyTorch: every file of an export, with stated tolerances and measured errors.

The comparator is separate from the runners: `run_onnx` runs a file, `compare` scores two outputs, `check_export`
drives both over every fixed model at its scale and the dynamic models at many sizes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppnet.core.bins import can_bin
from sppnet.core.caffe_shapes import feature_map_size
from sppnet.core.models import SPPNet
from sppnet.core.networks import geometry
from sppnet.export.manifest import ONNX_FORMAT, read_manifest

# Max |onnx - torch| over the largest |torch logit| of the batch. fp32: summation order only. fp16: weights and
# activations rounded to 11 bits through 8 layers.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


@dataclass(frozen=True)
class ParityRow:
    """One comparison: a file at one input size."""

    file: str
    precision: str
    size: tuple[int, int]
    batch: int
    max_abs: float
    max_rel: float
    top1_agree: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def compare(file: str, precision: str, size: tuple[int, int], got: np.ndarray, want: np.ndarray) -> ParityRow:
    """Errors of `got` against the reference `want` (N, classes) and their top-1 agreement."""
    diff = float(np.abs(got.astype(np.float64) - want).max())
    scale = max(float(np.abs(want).max()), 1e-12)
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    return ParityRow(file, precision, size, len(want), diff, diff / scale, agree, TOLERANCE[precision])


def onnx_session(path: str | os.PathLike[str]) -> Any:
    """An ONNX Runtime CPU session for one file (warnings off: fp16 nodes fall back to fp32 kernels on CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_images(rng: np.random.Generator, batch: int, height: int, width: int, scale: float) -> np.ndarray:
    """Inputs shaped like preprocessed images: mean-subtracted pixels (std ~60 grey levels) times the input scale."""
    return (rng.normal(0.0, 60.0, (batch, 3, height, width)) * scale).astype(np.float32)


def dynamic_sizes(model: SPPNet, smallest: int, largest: int, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Edge sizes (the smallest, extreme aspect ratios, sizes off the feature stride) and random ones in range,
    keeping only sizes whose conv5 map every level of the model's rule can bin."""
    rng = np.random.default_rng(seed)
    edges = [(smallest, smallest), (smallest, largest), (largest, smallest), (smallest + 1, smallest + 3)]
    edges += [(largest, largest)] if largest <= 2 * smallest + 200 else []
    sizes = list(edges)
    while len(sizes) < count + len(edges):
        sizes.append((int(rng.integers(smallest, largest + 1)), int(rng.integers(smallest, largest + 1))))
    return [s for s in dict.fromkeys(sizes) if _binnable(model, s)]


def _binnable(model: SPPNet, size: tuple[int, int]) -> bool:
    conv5 = feature_map_size(geometry(model.spec), *size)
    return conv5 is not None and can_bin(*conv5, model.config.levels, model.config.rule)


def check_export(
    model: SPPNet,
    onnx_dir: str | os.PathLike[str],
    *,
    dynamic_count: int = 50,
    dynamic_max: int | None = None,
    batch: int = 2,
    seed: int = 0,
    images: Sequence[np.ndarray] | None = None,
) -> list[ParityRow]:
    """Compare every runnable file of an export with the PyTorch model (the plugin form needs TensorRT: skipped).

    Fixed files run at their scale with `batch` images; dynamic files at `dynamic_count` sizes, one image each.
    """
    directory = Path(onnx_dir)
    manifest = read_manifest(directory, ONNX_FORMAT)
    rng = np.random.default_rng(seed)
    scale = float(manifest["preprocess"].get("scale", 1.0))
    largest = min(manifest["sizes"]["max"], dynamic_max or manifest["sizes"]["max"])
    sizes = dynamic_sizes(model, manifest["sizes"]["min"], largest, dynamic_count, seed)
    model = model.eval()
    rows = []
    for entry in manifest["files"]:
        if entry["spp_form"] == "plugin":
            continue
        session = onnx_session(directory / entry["file"])
        cases = [tuple(entry["scale"])] if entry["kind"] == "fixed" else sizes
        for h, w in cases:
            x = random_images(rng, batch if entry["kind"] == "fixed" else 1, h, w, scale)
            with torch.inference_mode():
                want = model(torch.from_numpy(x)).double().numpy()
            got = session.run(None, {manifest["input"]["name"]: x})[0]
            rows.append(compare(entry["file"], entry["precision"], (h, w), got, want))
    return rows


def summarise(rows: Sequence[ParityRow]) -> list[dict[str, Any]]:
    """Per file: sizes checked, worst absolute and relative error, top-1 agreement, tolerance and verdict."""
    out = []
    for file in dict.fromkeys(r.file for r in rows):
        mine = [r for r in rows if r.file == file]
        out.append(
            {
                "file": file,
                "precision": mine[0].precision,
                "sizes": len(mine),
                "max_abs": max(r.max_abs for r in mine),
                "max_rel": max(r.max_rel for r in mine),
                "top1_agree": float(np.mean([r.top1_agree for r in mine])),
                "tolerance": mine[0].tolerance,
                "ok": all(r.ok for r in mine),
            }
        )
    return out


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as an aligned text table."""
    lines = [f"{'file':44} {'sizes':>5} {'max abs':>10} {'max rel':>10} {'tol':>7} {'top-1 agree':>11}  ok"]
    for s in summary:
        lines.append(
            f"{s['file']:44} {s['sizes']:5d} {s['max_abs']:10.3g} {s['max_rel']:10.3g} {s['tolerance']:7.0e} "
            f"{100 * s['top1_agree']:10.1f}%  {'yes' if s['ok'] else 'NO'}"
        )
    return "\n".join(lines)
