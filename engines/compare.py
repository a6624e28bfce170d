"""The one comparator: a backend's outputs against a reference's, with stated tolerances and measured errors.

Used by `sppnet parity` (ONNX Runtime vs PyTorch), the main job's serve check (the runtime vs PyTorch) and the GPU
check (every engine vs PyTorch and ONNX Runtime CPU). Relative error = max |got - want| over the largest |want|
of the batch; top-1 agreement is the second figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# fp32: summation order only. fp16 / bf16: weights and activations rounded to 11 / 8 bits through 8 layers.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


@dataclass(frozen=True)
class Comparison:
    """One comparison: a model (or case) at one input size, its errors, agreement and verdict."""

    name: str
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


def compare(
    got: np.ndarray,
    want: np.ndarray,
    *,
    name: str,
    precision: str,
    size: tuple[int, int],
    tolerance: float | None = None,
) -> Comparison:
    """Errors of `got` against the reference `want`, both (N, classes), and their top-1 agreement."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"compare: {name} gave shape {got.shape}, the reference {want.shape}")
    diff = float(np.abs(got - want).max())
    scale = max(float(np.abs(want).max()), 1e-12)
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    limit = TOLERANCE[precision] if tolerance is None else tolerance
    return Comparison(name, precision, size, len(want), diff, diff / scale, agree, limit)


def summarise(rows: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Per name: sizes checked, worst absolute and relative error, mean top-1 agreement, tolerance and verdict."""
    out = []
    for name in dict.fromkeys(r.name for r in rows):
        mine = [r for r in rows if r.name == name]
        out.append(
            {
                "file": name,
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
    """A summary as an aligned text table."""
    lines = [f"{'file':44} {'sizes':>5} {'max abs':>10} {'max rel':>10} {'tol':>7} {'top-1 agree':>11}  ok"]
    for s in summary:
        lines.append(
            f"{s['file']:44} {s['sizes']:5d} {s['max_abs']:10.3g} {s['max_rel']:10.3g} {s['tolerance']:7.0e} "
            f"{100 * s['top1_agree']:10.1f}%  {'yes' if s['ok'] else 'NO'}"
        )
    return "\n".join(lines)
