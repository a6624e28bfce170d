"""Spatial pyramid pooling over whole feature maps and over windows of them, vectorised and exact.

Output order is Caffe's (PAPER.md section 2): per level in the given order, (C, n, n) row-major, levels
concatenated. Each level pools H and W independently. Where a level's bins are evenly spaced it is one max-pool;
elsewhere rows and then columns are gathered into padded bins and reduced with one `max` each.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sppnet.core.bins import DEFAULT_LEVELS, check_levels, check_rule, spp_bins, spp_output_dim, uniform_pooling
from sppnet.core.errors import InvalidInput

# torch.compile traces through the caches of the bin functions (pure functions of ints, so that is exact) and warns
# once per function that it did; the warning names these two files only.
warnings.filterwarnings(
    "ignore", message=r"Dynamo detected a call to a `functools.lru_cache`-wrapped function at '(spp|bins)\.py"
)

_CACHE_ELEMENTS = 1 << 21  # gathered lookups per chunk of the inference path of `pool_windows`


def check_maps(x: Tensor, what: str) -> None:
    """Refuse anything but a 4-D (N, C, H, W) tensor with at least one cell, naming `what` and the fix."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InvalidInput(f"{what} expects a 4-D (N, C, H, W) tensor; got {shape}: add a batch dimension")
    if min(x.shape[1:]) < 1:
        raise InvalidInput(
            f"{what} got an empty feature map of shape {tuple(x.shape)}: the input image is "
            "too small for the network (conv5 has no cells)"
        )


@lru_cache(maxsize=4096)
def _bin_index(a: int, n: int, rule: str) -> Tensor:
    """(n, L) row indices of each bin, short bins padded by repeating their last index (max is unchanged)."""
    bins = spp_bins(a, n, rule)
    width = max(end - start for start, end in bins)
    rows = [[min(start + j, end - 1) for j in range(width)] for start, end in bins]
    # Cached across calls: an inference-mode tensor here would break every later forward that needs autograd.
    with torch.inference_mode(False):
        return torch.tensor(rows, dtype=torch.long)


def _max_over_bins(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """Max of `x` over each padded bin of `index` (n, L) along `dim`; the bin axis replaces `dim`."""
    n, width = index.shape
    gathered = x.index_select(dim, index.to(x.device).flatten())
    shape = (*x.shape[:dim], n, width, *x.shape[dim + 1 :])
    return gathered.view(shape).max(dim + 1).values


def _pool_axis(x: Tensor, dim: int, n: int, rule: str) -> Tensor:
    a = x.shape[dim]
    plan = uniform_pooling(a, n, rule)
    if plan is None:
        return _max_over_bins(x, dim, _bin_index(a, n, rule))
    pads = (0, 0, plan.pad_before, plan.pad_after) if dim == 2 else (plan.pad_before, plan.pad_after, 0, 0)
    if plan.pad_before or plan.pad_after:
        x = F.pad(x, pads, value=float("-inf"))
    kernel = (plan.kernel, 1) if dim == 2 else (1, plan.kernel)
    stride = (plan.stride, 1) if dim == 2 else (1, plan.stride)
    return F.max_pool2d(x, kernel, stride)


def pool_level(x: Tensor, n: int, rule: str = "adaptive") -> Tensor:
    """One pyramid level: (N, C, H, W) -> (N, C, n, n), exact for the rule's bins on each axis."""
    height, width = x.shape[-2:]
    rows, cols = uniform_pooling(height, n, rule), uniform_pooling(width, n, rule)
    if rows is None or cols is None:
        return _pool_axis(_pool_axis(x, 2, n, rule), 3, n, rule)
    if rows.pad_before or rows.pad_after or cols.pad_before or cols.pad_after:
        pads = (cols.pad_before, cols.pad_after, rows.pad_before, rows.pad_after)
        x = F.pad(x, pads, value=float("-inf"))
    return F.max_pool2d(x, (rows.kernel, cols.kernel), (rows.stride, cols.stride))


def spatial_pyramid_pool(x: Tensor, levels: Sequence[int] = DEFAULT_LEVELS, rule: str = "adaptive") -> Tensor:
    """SPP of whole maps: (N, C, H, W) -> (N, C * sum(n^2)) in Caffe's order."""
    check_rule(rule)
    levels = check_levels(levels)
    check_maps(x, "spatial_pyramid_pool")
    return torch.cat([pool_level(x, n, rule).flatten(1) for n in levels], dim=1)


def _window_bin_index(sizes: Tensor, n: int, rule: str) -> Tensor:
    """(K, n, L) bin offsets, relative to each window's origin, for windows of the given extents."""
    unique = sorted(set(sizes.tolist()))
    tables = {a: _bin_index(a, n, rule) for a in unique}
    width = max(t.shape[1] for t in tables.values())
    padded = torch.stack(
        [torch.cat([t, t[:, -1:].expand(n, width - t.shape[1])], dim=1) for t in (tables[a] for a in unique)]
    )
    lookup = torch.full((max(unique) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(unique)] = torch.arange(len(unique))
    return padded[lookup[sizes]]


def pool_windows(
    maps: Tensor,
    boxes: Tensor,
    levels: Sequence[int] = DEFAULT_LEVELS,
    rule: str = "adaptive",
    image_index: Tensor | None = None,
    max_elements: int = 1 << 24,
) -> Tensor:
    """SPP of K windows of feature maps: -> (K, C * sum(n^2)), the same vector as SPP of each cropped window.

    Args:
        maps: (N, C, H, W) feature maps.
        boxes: (K, 4) integer windows (x0, y0, x1, y1) in feature-map cells, half-open: columns [x0, x1),
            rows [y0, y1).
        image_index: (K,) which map each window is on; all on map 0 when None.
        max_elements: windows are processed in chunks whose gathered intermediate stays under this many elements.

    Without autograd (inference, detection) bins are answered from a sparse max table, bit-exact and far faster
    than the gather path used when `maps` needs a gradient; the table holds N*C*H*W times about
    log2(H) * log2(W) elements (36x the maps at a 43x57 conv5).
    """
    check_rule(rule)
    levels = check_levels(levels)
    check_maps(maps, "pool_windows")
    boxes, image_index = _check_boxes(maps, boxes, image_index)
    if boxes.shape[0] == 0:
        return maps.new_zeros((0, spp_output_dim(maps.shape[1], levels)))
    if not (torch.is_grad_enabled() and maps.requires_grad):
        return _pool_windows_by_table(maps, boxes, image_index, levels, rule, max_elements)
    # Training: gather each bin's cells so the gradient goes to one maximum per bin.
    # Channels last, flattened: row b*H*W + y*W + x of `cells` is the C-vector of cell (y, x) on map b.
    num, channels, height, width = maps.shape
    cells = maps.permute(0, 2, 3, 1).reshape(num * height * width, channels)
    origin = image_index * (height * width) + boxes[:, 1] * width + boxes[:, 0]
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # A level's padded row bins cover at most H + 2n rows of the window, each `span` columns wide.
    per_window = channels * (int(box_h.max()) + 2 * max(levels)) * int(box_w.max())
    chunk = max(1, max_elements // max(per_window, 1))
    outputs = []
    for lo in range(0, boxes.shape[0], chunk):
        part = slice(lo, lo + chunk)
        pooled = [_pool_window_level(cells, width, origin[part], box_w[part], box_h[part], n, rule) for n in levels]
        outputs.append(torch.cat(pooled, dim=1))
    return torch.cat(outputs, dim=0)


def _pool_window_level(
    cells: Tensor, map_width: int, origin: Tensor, box_w: Tensor, box_h: Tensor, n: int, rule: str
) -> Tensor:
    """One level for a chunk of windows: gather each row bin over the window's columns, max; then columns."""
    k = origin.shape[0]
    channels = cells.shape[1]
    device = cells.device
    rows = _window_bin_index(box_h, n, rule).to(device)  # (K, n, Lr)
    cols = _window_bin_index(box_w, n, rule).to(device)  # (K, n, Lc)
    span = int(box_w.max())
    # Columns past a narrower window's right edge repeat its last column, so they never change a max.
    col_offsets = torch.minimum(torch.arange(span, device=device)[None, :], (box_w.to(device) - 1)[:, None])
    flat = (
        origin.to(device)[:, None, None, None] + rows[:, :, :, None] * map_width + col_offsets[:, None, None, :]
    )  # (K, n, Lr, span)
    by_rows = cells.index_select(0, flat.flatten()).view(k, n, rows.shape[2], span, channels).max(2).values
    # by_rows: (K, n_rows, span, C); gather each window's column bins out of its own span.
    flat_cols = torch.arange(k, device=device)[:, None, None] * span + cols  # (K, n_cols, Lc)
    by_rows = by_rows.permute(0, 2, 1, 3).reshape(k * span, n, channels)
    pooled = by_rows.index_select(0, flat_cols.flatten()).view(k, n, cols.shape[2], n, channels).max(2).values
    # pooled: (K, n_cols, n_rows, C) -> Caffe order (K, C, n_rows, n_cols).
    return pooled.permute(0, 3, 2, 1).reshape(k, -1)


def _window_bin_bounds(sizes: Tensor, n: int, rule: str) -> tuple[Tensor, Tensor]:
    """(K, n) bin starts and ends, relative to each window's origin, for windows of the given extents."""
    unique = set(sizes.tolist())
    bounds = [spp_bins(a, n, rule) if a in unique else [(0, 1)] * n for a in range(max(unique) + 1)]
    table = torch.tensor(bounds, dtype=torch.long)[sizes]  # (K, n, 2)
    return table[:, :, 0], table[:, :, 1]


def _max_table(maps: Tensor, levels_y: int, levels_x: int) -> Tensor:
    """Sparse max table, channels last: (levels_y, levels_x, N, H, W, C).

    Entry [ky, kx, b, y, x] is the max of maps[b, :, y : y + 2^ky, x : x + 2^kx] (clipped at the map edge), built
    by doubling: level k is the elementwise max of level k - 1 and level k - 1 shifted by 2^(k-1).
    """
    cells = maps.permute(0, 2, 3, 1)
    num, height, width, channels = cells.shape
    table = cells.new_empty((levels_y, levels_x, num, height, width, channels))
    table[0, 0] = cells
    for kx in range(1, levels_x):  # along W (dim 2 of an (N, H, W, C) slice)
        prev, cur, s = table[0, kx - 1], table[0, kx], 1 << (kx - 1)
        torch.maximum(prev[:, :, : width - s], prev[:, :, s:], out=cur[:, :, : width - s])
        cur[:, :, width - s :] = prev[:, :, width - s :]
    for ky in range(1, levels_y):  # along H, every kx at once (dim 2 of a (levels_x, N, H, W, C) slice)
        prev, cur, s = table[ky - 1], table[ky], 1 << (ky - 1)
        torch.maximum(prev[:, :, : height - s], prev[:, :, s:], out=cur[:, :, : height - s])
        cur[:, :, height - s :] = prev[:, :, height - s :]
    return table


def _pool_windows_by_table(
    maps: Tensor, boxes: Tensor, image_index: Tensor, levels: tuple[int, ...], rule: str, max_elements: int
) -> Tensor:
    """Inference path of `pool_windows`: every bin is the max of 4 overlapping power-of-two rectangles.

    A bin [y0, y1) x [x0, x1) with ky = floor(log2(y1 - y0)), kx = floor(log2(x1 - x0)) is covered exactly by
    the 2^ky x 2^kx rectangles at its four corners, (y0 | y1 - 2^ky) x (x0 | x1 - 2^kx); max is idempotent, so
    the overlap changes nothing and the result equals the per-bin max bit for bit.
    """
    num, channels, height, width = maps.shape
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bounds = [(_window_bin_bounds(box_h, n, rule), _window_bin_bounds(box_w, n, rule)) for n in levels]
    max_h = max(int((end - start).max()) for (start, end), _ in bounds)
    max_w = max(int((end - start).max()) for _, (start, end) in bounds)
    levels_y, levels_x = max_h.bit_length(), max_w.bit_length()
    floor_log2 = torch.tensor([max(v.bit_length() - 1, 0) for v in range(max(max_h, max_w) + 1)])
    plane = num * height * width
    # Flat row of table entry [ky, kx, b, y, x] = (ky * levels_x + kx) * plane + b * H * W + y * W + x.
    corners = []  # per level: (4, K, n * n) table rows of the four corner lookups of every bin
    for (y0, y1), (x0, x1) in bounds:
        ky, kx = floor_log2[y1 - y0], floor_log2[x1 - x0]
        row_base = ky * (levels_x * plane) + (image_index * (height * width))[:, None]
        rows = [row_base + (boxes[:, 1:2] + start) * width for start in (y0, y1 - (1 << ky))]
        cols = [kx * plane + boxes[:, 0:1] + start for start in (x0, x1 - (1 << kx))]
        corners.append(torch.stack([(r[:, :, None] + c[:, None, :]).flatten(1) for r in rows for c in cols]))
    index = torch.cat(corners, dim=2).to(maps.device)  # (4, K, S), S = sum(n^2)
    table = _max_table(maps, levels_y, levels_x).view(-1, channels)
    k_all, bins = index.shape[1:]
    out = maps.new_empty((k_all, channels * bins))
    # Chunks small enough to stay in cache are faster than large ones, whatever `max_elements` allows.
    chunk = max(1, min(max_elements, _CACHE_ELEMENTS) // (4 * bins * channels))
    for lo in range(0, k_all, chunk):
        part = index[:, lo : lo + chunk]
        k = part.shape[1]
        pooled = table.index_select(0, part.flatten()).view(4, k, bins, channels).amax(0)  # (K, S, C)
        start = 0
        for n in levels:  # Caffe order: per level (C, n, n) row-major
            block = out[lo : lo + k, channels * start : channels * (start + n * n)].view(k, channels, n * n)
            block.copy_(pooled[:, start : start + n * n].transpose(1, 2))
            start += n * n
    return out


def _check_boxes(maps: Tensor, boxes: Tensor, image_index: Tensor | None) -> tuple[Tensor, Tensor]:
    boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.is_floating_point():
        raise InvalidInput(
            f"pool_windows expects integer boxes of shape (K, 4) as (x0, y0, x1, y1) cells; "
            f"got {boxes.dtype} {tuple(boxes.shape)}: round window coordinates to cells first"
        )
    boxes = boxes.long().cpu()
    if image_index is None:
        image_index = torch.zeros(boxes.shape[0], dtype=torch.long)
    image_index = torch.as_tensor(image_index).long().cpu()
    if image_index.shape != (boxes.shape[0],):
        raise InvalidInput(
            f"pool_windows: image_index must have shape ({boxes.shape[0]},), "
            f"one map index per box; got {tuple(image_index.shape)}"
        )
    num, _, height, width = maps.shape
    bad = (
        (boxes[:, 0] < 0)
        | (boxes[:, 1] < 0)
        | (boxes[:, 2] > width)
        | (boxes[:, 3] > height)
        | (boxes[:, 2] <= boxes[:, 0])
        | (boxes[:, 3] <= boxes[:, 1])
        | (image_index < 0)
        | (image_index >= num)
    )
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise InvalidInput(
            f"pool_windows: box {i} {boxes[i].tolist()} on map {int(image_index[i])} is empty or "
            f"outside the {num} map(s) of {height}x{width} cells: clamp windows to the map first"
        )
    return boxes, image_index


class SpatialPyramidPooling(nn.Module):
    """SPP layer: (N, C, H, W) of any H, W -> (N, C * sum(n^2)); also pools windows of the maps."""

    def __init__(self, levels: Sequence[int] = DEFAULT_LEVELS, rule: str = "adaptive") -> None:
        super().__init__()
        check_rule(rule)
        self.levels = check_levels(levels)
        self.rule = rule

    def output_dim(self, channels: int) -> int:
        """Length of the pooled vector for maps with `channels` channels."""
        return spp_output_dim(channels, self.levels)

    def forward(self, x: Tensor) -> Tensor:
        return spatial_pyramid_pool(x, self.levels, self.rule)

    def pool_windows(self, maps: Tensor, boxes: Tensor, image_index: Tensor | None = None) -> Tensor:
        """Pool windows (x0, y0, x1, y1) of `maps` with this layer's pyramid and rule; see `pool_windows`."""
        return pool_windows(maps, boxes, self.levels, self.rule, image_index)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, rule={self.rule!r}"


def spp_naive(x: Tensor, levels: Sequence[int] = DEFAULT_LEVELS, rule: str = "adaptive") -> Tensor:
    """The textbook per-bin Python loop over `spp_bins`: the baseline `sppnet bench spp` measures against."""
    check_maps(x, "spp_naive")
    out = []
    for n in check_levels(levels):
        rows, cols = spp_bins(x.shape[2], n, rule), spp_bins(x.shape[3], n, rule)
        level = [x[:, :, r0:r1, c0:c1].amax(dim=(2, 3)) for r0, r1 in rows for c0, c1 in cols]
        out.append(torch.stack(level, dim=2).flatten(1))
    return torch.cat(out, dim=1)
