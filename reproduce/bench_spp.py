"""`sppnet bench spp`: our SPP forward+backward against the per-bin loop and a single max-pool, side by side.

The three candidates run interleaved in one process on the same input, so the ratios hold even on a shared,
noisy machine where absolute times drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sppnet.core.bins import DEFAULT_LEVELS
from sppnet.core.spp import spatial_pyramid_pool, spp_naive


@dataclass(frozen=True)
class SppBenchRow:
    """Median forward+backward milliseconds of each candidate at one conv5 size, and their ratios."""

    size: str
    rule: str
    spp_ms: float
    naive_ms: float
    maxpool_ms: float
    torch_adaptive_ms: float | None

    @property
    def naive_over_spp(self) -> float:
        return self.naive_ms / self.spp_ms

    @property
    def spp_over_maxpool(self) -> float:
        return self.spp_ms / self.maxpool_ms

    def to_json(self) -> dict[str, object]:
        ratios = {"naive_over_spp": self.naive_over_spp, "spp_over_maxpool": self.spp_over_maxpool}
        if self.torch_adaptive_ms is not None:
            ratios["spp_over_torch_adaptive"] = self.spp_ms / self.torch_adaptive_ms
        return asdict(self) | ratios


def _fwd_bwd_ms(fn: Callable[[Tensor], Tensor], x: Tensor) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    fn(x).sum().backward()
    return (time.perf_counter() - start) * 1e3


def bench_spp(
    sizes: Sequence[tuple[int, int]] = ((13, 13), (10, 10)),
    batch: int = 32,
    channels: int = 256,
    levels: Sequence[int] = DEFAULT_LEVELS,
    rule: str = "adaptive",
    repeats: int = 20,
    seed: int = 0,
) -> list[SppBenchRow]:
    """Time SPP, the per-bin loop and one 3x3/s2 max-pool (ZF-5's no-SPP pool5) on (batch, channels, H, W).

    For the adaptive rule, torch's native adaptive_max_pool2d per level (the same bins) is timed as well.
    """
    torch.manual_seed(seed)
    candidates: dict[str, Callable[[Tensor], Tensor]] = {
        "spp": lambda x: spatial_pyramid_pool(x, levels, rule),
        "naive": lambda x: spp_naive(x, levels, rule),
        "maxpool": lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
    }
    if rule == "adaptive":
        candidates["torch_adaptive"] = lambda x: torch.cat(
            [F.adaptive_max_pool2d(x, n).flatten(1) for n in levels], dim=1
        )
    rows = []
    for height, width in sizes:
        x = torch.randn(batch, channels, height, width)
        for fn in candidates.values():  # warm-up: caches, allocator
            _fwd_bwd_ms(fn, x)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, fn in candidates.items():
                times[name].append(_fwd_bwd_ms(fn, x))
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append(
            SppBenchRow(f"{height}x{width}", rule, med["spp"], med["naive"], med["maxpool"], med.get("torch_adaptive"))
        )
    return rows


def _ratio(num: float, den: float | None) -> str:
    return "-" if den is None else f"{num / den:.2f}x"


def format_rows(rows: Sequence[SppBenchRow], batch: int, channels: int, levels: Sequence[int]) -> str:
    """A table of medians and ratios."""
    lines = [
        f"SPP forward+backward, batch {batch} x {channels} channels, levels {tuple(levels)} "
        "(median ms; ratios from the same run)",
        f"{'conv5':>7} {'rule':>9} {'spp':>9} {'naive loop':>11} {'max-pool':>9} "
        f"{'naive/spp':>10} {'spp/max-pool':>13} {'spp/torch-adaptive':>19}",
    ]
    for r in rows:
        lines.append(
            f"{r.size:>7} {r.rule:>9} {r.spp_ms:>9.2f} {r.naive_ms:>11.2f} {r.maxpool_ms:>9.2f} "
            f"{r.naive_over_spp:>9.1f}x {r.spp_over_maxpool:>12.2f}x {_ratio(r.spp_ms, r.torch_adaptive_ms):>19}"
        )
    return "\n".join(lines)
