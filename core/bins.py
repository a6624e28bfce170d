"""Bin boundaries of one spatial-pyramid level along one axis: the single source of truth for SPP.

Every other piece (the PyTorch layer, window pooling, ONNX graphs, the plugin kernel) derives its bins from
`spp_bins`. The three rules are PAPER.md section 2. A fourth family, "pools@...", is a pyramid a Caffe file writes
as Pooling layers (the SPP-net release's head): their exact windows at the map lengths the file was made for,
adaptive bins at every other length (`pools_rule`).
"""

from __future__ import annotations

import re
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
    """Raise a ValueError naming the valid rules when `rule` is not one of them (or a valid "pools@" rule)."""
    if isinstance(rule, str) and rule.startswith(POOLS_PREFIX):
        parse_pools_rule(rule)
    elif rule not in RULES:
        raise InvalidInput(f"unknown SPP rule {rule!r}: choose one of {', '.join(RULES)}")


POOLS_PREFIX = "pools@"
_POOL = r"(\d+)=k(\d+)s(\d+)(?:p(\d+))?"
_POOLS_RULE = re.compile(rf"^pools@(\d+(?:,\d+)*):({_POOL}(?:,{_POOL})*)$")


@dataclass(frozen=True)
class FilePools:
    """A parsed "pools@" rule: at an axis length in `lengths`, level n is the Caffe max pool `pools[n]`
    (kernel, stride, pad) exactly as the file wrote it; at any other length it takes the adaptive bins."""

    lengths: tuple[int, ...]
    pools: tuple[tuple[int, int, int, int], ...]  # (n, kernel, stride, pad), in the rule's order

    def pool(self, n: int) -> tuple[int, int, int] | None:
        return next(((k, s, p) for m, k, s, p in self.pools if m == n), None)


def pools_rule(lengths: Sequence[int], pools: Sequence[tuple[int, int, int, int]]) -> str:
    """The rule string of a file's pyramid: `lengths` the map lengths it was made for, `pools` its
    (n, kernel, stride, pad) per level; e.g. the release's "pools@13:1=k13s13,2=k7s7,3=k5s4,6=k3s2". Validated."""
    body = ",".join(f"{n}=k{k}s{s}" + (f"p{p}" if p else "") for n, k, s, p in pools)
    rule = f"{POOLS_PREFIX}{','.join(str(a) for a in sorted(set(lengths)))}:{body}"
    parse_pools_rule(rule)
    return rule


@lru_cache(maxsize=256)
def parse_pools_rule(rule: str) -> FilePools:
    """The lengths and pools of a "pools@" rule; InvalidInput naming what is wrong with it."""
    match = _POOLS_RULE.match(rule)
    if match is None:
        raise InvalidInput(
            f"malformed SPP rule {rule!r}: write pools@A[,A...]:n=kKsS[pP],... (e.g. pools@13:2=k7s7,1=k13s13)"
        )
    lengths = tuple(int(a) for a in match.group(1).split(","))
    pools = []
    for item in match.group(2).split(","):
        n, k, s, p = (int(v) if v else 0 for v in re.fullmatch(_POOL, item).groups())  # type: ignore[union-attr]
        pools.append((n, k, s, p))
    levels = [n for n, *_ in pools]
    if len(set(levels)) != len(levels) or min(levels) < 1:
        raise InvalidInput(f"SPP rule {rule!r}: each level needs one pool and levels must be >= 1")
    for n, k, s, p in pools:
        for a in lengths:
            if not (p < k and 1 <= s <= k and a >= 1 and caffe_pool_size(a, k, s, p) == n and a + 2 * p >= k):
                raise InvalidInput(
                    f"SPP rule {rule!r}: the pool k{k} s{s} p{p} does not give {n} windows on a map of {a} "
                    "(or pads past its kernel): fix the rule or the file's pooling"
                )
    return FilePools(lengths, tuple(pools))


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
    if rule.startswith(POOLS_PREFIX):
        return _file_bins(a, n, parse_pools_rule(rule), where)
    return _caffe_bins(a, n, where)


def _file_bins(a: int, n: int, file: FilePools, where: str) -> tuple[Bin, ...]:
    if a not in file.lengths:
        return _bins(a, n, "adaptive")
    pool = file.pool(n)
    if pool is None:
        raise InvalidInput(f"{where}: the file's pyramid has no pool for level {n}; use its levels")
    kernel, stride, pad = pool
    return tuple((max(i * stride - pad, 0), min(i * stride - pad + kernel, a)) for i in range(n))


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
