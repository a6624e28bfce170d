"""The exact dynamic SPP in torch ops, in the masked form the dynamic ONNX graph uses: exportable with symbolic H, W.

`spatial_pyramid_pool` picks max-pools from Python integers of the map size, and adaptive pooling's lowering
specialises on the example's size without a guard AOTInductor checks (pytorch/pytorch#150364), so a package
compiled from either is silently wrong at other sizes. Here every bin edge is computed from the runtime size with
integer tensor arithmetic (the formulas of `sppnet.core.bins`), each bin is a [start, end) mask, and a level is a
masked max over rows, then over columns: max is exact, so the result equals `spatial_pyramid_pool` bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sppnet.core.bins import DEFAULT_LEVELS, POOLS_PREFIX, check_levels, check_rule, parse_pools_rule, spp_bins


def bin_edges(a: int | torch.SymInt, n: int, rule: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """(start, end) int64 tensors of shape (n,) for an axis of length `a` (an int or a symbolic size)."""
    i = torch.arange(n, device=device, dtype=torch.int64)
    if rule.startswith(POOLS_PREFIX):  # a Caffe file's windows where `a` is a length it was made for, else adaptive
        start, end = bin_edges(a, n, "adaptive", device)
        for length in parse_pools_rule(rule).lengths:
            bins = torch.tensor(spp_bins(length, n, rule), device=device, dtype=torch.int64)
            here = torch.full_like(start, 1) * a == length
            start, end = torch.where(here, bins[:, 0], start), torch.where(here, bins[:, 1], end)
        return start, end
    if rule == "adaptive":  # floor(i a / n), ceil((i + 1) a / n)
        return torch.div(i * a, n, rounding_mode="floor"), -torch.div(-(i + 1) * a, n, rounding_mode="floor")
    if rule == "window":  # start i * floor(a / n), window ceil(a / n)
        start = i * (a // n)
        return start, start + (a + n - 1) // n
    # caffe: kernel = stride = ceil(a / n), pad = (kernel n - a + 1) // 2, windows clipped to the map
    kernel = (a + n - 1) // n
    raw = i * kernel - (kernel * n - a + 1) // 2
    return raw.clamp(min=0), torch.minimum(raw + kernel, torch.full_like(raw, 1) * a)


def bin_masks(a: int | torch.SymInt, n: int, rule: str, device: torch.device) -> Tensor:
    """(n, a) bool: mask[i, r] is True where position r lies in bin i."""
    start, end = bin_edges(a, n, rule, device)
    positions = torch.arange(a, device=device, dtype=torch.int64)
    return (positions >= start[:, None]) & (positions < end[:, None])


def masked_level(x: Tensor, n: int, rule: str) -> Tensor:
    """One level: (N, C, H, W) -> (N, C, n, n), a masked max over rows, then over columns."""
    if n == 1:
        return x.amax(dim=(2, 3), keepdim=True)
    height, width = x.shape[2], x.shape[3]
    fill = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    rows = bin_masks(height, n, rule, x.device)  # (n, H)
    cols = bin_masks(width, n, rule, x.device)  # (n, W)
    # (N, C, 1, H, W) masked by (n, H, 1) -> max over H -> (N, C, n, W)
    by_rows = torch.where(rows[:, :, None], x[:, :, None], fill).amax(dim=3)
    # (N, C, n, 1, W) masked by (n, W) -> max over W -> (N, C, n, n)
    return torch.where(cols, by_rows[:, :, :, None], fill).amax(dim=4)


def masked_spp(x: Tensor, levels: Sequence[int] = DEFAULT_LEVELS, rule: str = "adaptive") -> Tensor:
    """SPP of whole maps: (N, C, H, W) -> (N, C * sum(n^2)) in Caffe's order, for H and W known only at run time.

    Equal to `spatial_pyramid_pool` wherever the rule can bin the map; where it cannot (the window and caffe rules
    at some sizes) the result is meaningless, and the runtime refuses those sizes before they reach a model.
    """
    check_rule(rule)
    return torch.cat([masked_level(x, n, rule).flatten(1) for n in check_levels(levels)], dim=1)


class MaskedSPP(nn.Module):
    """SPP layer in the masked form: the drop-in for `SpatialPyramidPooling` in exported and compiled models."""

    def __init__(self, levels: Sequence[int] = DEFAULT_LEVELS, rule: str = "adaptive") -> None:
        super().__init__()
        check_rule(rule)
        self.levels, self.rule = check_levels(levels), rule

    def forward(self, x: Tensor) -> Tensor:
        return masked_spp(x, self.levels, self.rule)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, rule={self.rule!r}"
