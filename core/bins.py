"""Bin boundaries of one spatial-pyramid level along one axis: the single source of truth for SPP.

Every other piece (the PyTorch layer, window pooling, ONNX graphs, the plugin kernel) derives its bins from
`spp_bins`. The three rules are PAPER.md section 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from sppnet.core.caffe_shapes import caffe_pool_size
from sppnet.core.errors import InvalidInput

Rule = Literal["adaptive", "window", "caffe"]
RULES: tuple[str, ...] = get_args(Rule)

Bin = tuple[int, int]


def check_rule(rule: str) -> None:
    """Raise a ValueError naming the valid rules when `rule` is not one of them."""
    if rule not in RULES:
        raise InvalidInput(f"unknown SPP rule {rule!r}: choose one of {', '.join(RULES)}")


def spp_bins(a: int, n: int, rule: str = "adaptive") -> list[Bin]:
    """The n half-open intervals [start, end) that level n pools along an axis of length a.

    Raises ValueError (naming a, n, the rule and the reason) where the rule cannot give n non-empty bins.
    """
    check_rule(rule)
    return list(_bins(int(a), int(n), rule))


@lru_cache(maxsize=4096)
def _bins(a: int, n: int, rule: str) -> tuple[Bin, ...]:
    where = f"spp_bins(a={a}, n={n}, rule={rule!r})"
    if a < 1 or n < 1:
        raise InvalidInput(f"{where}: the axis length a and the bin count n must both be >= 1")
    if rule == "adaptive":
        # Paper Appendix / the release's pooling mex / torch AdaptiveMaxPool2d.
        return tuple(((i * a) // n, -((-(i + 1) * a) // n)) for i in range(n))
    if rule == "window":
        return _window_bins(a, n, where)
    return _caffe_bins(a, n, where)


def _window_bins(a: int, n: int, where: str) -> tuple[Bin, ...]:
    # Paper Sec. 2.3 text: win = ceil(a/n), stride = floor(a/n), no padding, Caffe ceil-mode window count.
    win, stride = -(-a // n), a // n
    if stride == 0:
        raise InvalidInput(f"{where}: the window rule needs a >= n (stride floor(a/n) is 0); use rule='adaptive'")
    count = caffe_pool_size(a, win, stride)
    if count != n:
        raise InvalidInput(
            f"{where}: the window rule (win {win}, stride {stride}) gives {count} bins, not {n}, because "
            f"a mod n = {a % n} is not 0 or 1; use rule='adaptive'"
        )
    return tuple((i * stride, i * stride + win) for i in range(n))


def _caffe_bins(a: int, n: int, where: str) -> tuple[Bin, ...]:
    # BVLC spp_layer.cpp GetPoolingParam: kernel = ceil(a/n), stride = kernel, pad = (kernel*n - a + 1) / 2,
    # then a ceil-mode PoolingLayer whose MAX windows are clipped to the map.
    kernel = -(-a // n)
    pad = (kernel * n - a + 1) // 2
    if pad >= kernel:
        raise InvalidInput(
            f"{where}: Caffe aborts here (pooling pad {pad} >= kernel {kernel}, CHECK_LT in PoolingLayer); "
            "use a larger map or rule='adaptive'"
        )
    pooled = caffe_pool_size(a, kernel, kernel, pad)
    bins = tuple((max(j * kernel - pad, 0), min(j * kernel - pad + kernel, a)) for j in range(pooled))
    if pooled != n or any(end <= start for start, end in bins):
        raise InvalidInput(f"{where}: Caffe's pooling gives {pooled} windows here, not {n} non-empty ones")
    return bins


def check_pyramid(height: int, width: int, levels: Sequence[int], rule: str = "adaptive") -> None:
    """Raise `spp_bins`' ValueError if any level cannot bin a height x width map under the rule."""
    for n in levels:
        spp_bins(height, n, rule)
        spp_bins(width, n, rule)


def can_bin(height: int, width: int, levels: Sequence[int], rule: str = "adaptive") -> bool:
    """Whether every level can bin a height x width map under the rule (always, for adaptive)."""
    try:
        check_pyramid(height, width, levels, rule)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class UniformPooling:
    """One axis of a level expressed as a single max-pool: pad with -inf, then kernel/stride windows."""

    kernel: int
    stride: int
    pad_before: int
    pad_after: int


@lru_cache(maxsize=4096)
def uniform_pooling(a: int, n: int, rule: str) -> UniformPooling | None:
    """The single max-pool equal to `spp_bins(a, n, rule)`, or None where the bins are not evenly spaced.

    Derived from the bins themselves (not from the rule), so it is exact for any rule: the first bin may be
    clipped by padding on the left, the last on the right, every other bin must be a full kernel apart.
    """
    bins = _bins(a, n, rule)
    kernel = max(end - start for start, end in bins)
    pad_before = kernel - (bins[0][1] - bins[0][0])
    stride = bins[1][0] + pad_before if n > 1 else kernel
    if stride < 1:
        return None
    windows = [(i * stride - pad_before, i * stride - pad_before + kernel) for i in range(n)]
    if any((max(s, 0), min(e, a)) != b for (s, e), b in zip(windows, bins, strict=True)):
        return None
    return UniformPooling(kernel, stride, pad_before, max(windows[-1][1] - a, 0))


DEFAULT_LEVELS: tuple[int, ...] = (6, 3, 2, 1)


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """Validate a pyramid: a non-empty sequence of bin counts >= 1."""
    levels = tuple(int(n) for n in levels)
    if not levels or any(n < 1 for n in levels):
        raise InvalidInput(f"SPP levels must be a non-empty list of bin counts >= 1; got {levels}")
    return levels


def spp_output_dim(channels: int, levels: Sequence[int]) -> int:
    """Length of the pooled vector: C * sum(n^2)."""
    return channels * sum(n * n for n in check_levels(levels))
