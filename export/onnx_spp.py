"""Spatial pyramid pooling as ONNX nodes, in the three forms of DESIGN.md, all derived from `spp_bins`.

- `static_spp`: H and W known at export: a level whose bins are evenly spaced on an axis is one MaxPool along it
  (implicit -inf padding where the rule pads); any other axis is one Slice + ReduceMax per bin. Exact.
- `decomposed_spp`: H and W symbolic: bin edges from Shape with integer arithmetic (the rule's formulas, checked
  against `spp_bins` by the tests), a [start, end) mask per bin, Where(-inf) and ReduceMax over rows, then columns.
- `plugin_spp`: one `sppnet::SpatialPyramidPooling` node for the TensorRT plugin.
Each returns (N, C * sum(n^2)) in Caffe's order: level by level, each (C, n, n) row-major.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sppnet.core.bins import POOLS_PREFIX, check_rule, parse_pools_rule, spp_bins, uniform_pooling
from sppnet.core.errors import InvalidInput
from sppnet.export.onnx_builder import GraphBuilder
from sppnet.export.spp_plugin import ONNX_DOMAIN, ONNX_OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION


def static_spp(g: GraphBuilder, x: str, height: int, width: int, levels: Sequence[int], rule: str) -> str:
    """SPP of maps (N, C, height, width) with the sizes fixed in the graph."""
    check_rule(rule)
    flat = [g.node("Flatten", [_static_level(g, x, height, width, n, rule)], axis=1) for n in levels]
    return flat[0] if len(flat) == 1 else g.node("Concat", flat, axis=1)


def _static_level(g: GraphBuilder, x: str, height: int, width: int, n: int, rule: str) -> str:
    plans = (uniform_pooling(height, n, rule), uniform_pooling(width, n, rule))
    if plans[0] is not None and plans[1] is not None:
        return _maxpool(g, x, plans[0], plans[1])
    for axis, size, plan in ((2, height, plans[0]), (3, width, plans[1])):
        if plan is not None:
            one = type(plan)(1, 1, 0, 0)
            x = _maxpool(g, x, plan, one) if axis == 2 else _maxpool(g, x, one, plan)
        else:
            x = _bins_by_slices(g, x, axis, spp_bins(size, n, rule))
    return x


def _maxpool(g: GraphBuilder, x: str, rows: object, cols: object) -> str:
    # ONNX MaxPool ignores padded cells: the same as Caffe's clipped windows and our -inf padding.
    return g.node(
        "MaxPool",
        [x],
        kernel_shape=[rows.kernel, cols.kernel],  # type: ignore[attr-defined]
        strides=[rows.stride, cols.stride],  # type: ignore[attr-defined]
        pads=[rows.pad_before, cols.pad_before, rows.pad_after, cols.pad_after],  # type: ignore[attr-defined]
    )


def _bins_by_slices(g: GraphBuilder, x: str, axis: int, bins: Sequence[tuple[int, int]]) -> str:
    """One Slice + ReduceMax per bin along `axis`, concatenated: exact for uneven, overlapping bins."""
    axes = g.const(np.array([axis], np.int64))
    parts = []
    for start, end in bins:
        piece = g.node("Slice", [x, g.const(np.array([start], np.int64)), g.const(np.array([end], np.int64)), axes])
        parts.append(g.node("ReduceMax", [piece], axes=[axis], keepdims=1))
    return parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=axis)


def decomposed_spp(g: GraphBuilder, x: str, levels: Sequence[int], rule: str) -> str:
    """SPP of maps (N, C, H, W) with H and W read from the runtime shape: standard ONNX ops only."""
    check_rule(rule)
    shape = g.node("Shape", [x])
    height = g.node("Gather", [shape, g.const(np.array(2, np.int64))], axis=0)
    width = g.node("Gather", [shape, g.const(np.array(3, np.int64))], axis=0)
    row_masks = {n: bin_masks(g, height, n, rule) for n in levels}
    col_masks = {n: bin_masks(g, width, n, rule) for n in levels}
    flat = []
    for n in levels:
        if n == 1:
            pooled = g.node("ReduceMax", [x], axes=[2, 3], keepdims=1)
        else:
            # rows: (N, C, 1, H, W) masked by (n, H, 1) -> max over H -> (N, C, n, W)
            rows = g.node("Unsqueeze", [x, g.const(np.array([2], np.int64))])
            mask = g.node("Unsqueeze", [row_masks[n], g.const(np.array([2], np.int64))])
            rows = g.node("ReduceMax", [g.node("Where", [mask, rows, g.neg_inf()])], axes=[3], keepdims=0)
            # columns: (N, C, n, 1, W) masked by (n, W) -> max over W -> (N, C, n, n)
            cols = g.node("Unsqueeze", [rows, g.const(np.array([3], np.int64))])
            pooled = g.node("ReduceMax", [g.node("Where", [col_masks[n], cols, g.neg_inf()])], axes=[4], keepdims=0)
        flat.append(g.node("Flatten", [pooled], axis=1))
    return flat[0] if len(flat) == 1 else g.node("Concat", flat, axis=1)


def bin_edges(g: GraphBuilder, a: str, n: int, rule: str) -> tuple[str, str]:
    """(start, end) int64 tensors of shape (n,) for an axis of runtime length `a` (a 0-d int64 tensor).

    Integer Div truncates; every operand here is non-negative, so it is floor division, as in `spp_bins`.
    """
    i = g.const(np.arange(n, dtype=np.int64))
    i1 = g.const(np.arange(1, n + 1, dtype=np.int64))
    nn_ = g.const(np.array(n, np.int64))

    def div(p: str, q: str) -> str:
        return g.node("Div", [p, q])

    def ceil_div(p: str, q: str) -> str:  # (p + q - 1) // q
        return div(g.node("Add", [p, g.node("Sub", [q, g.const(np.array(1, np.int64))])]), q)

    if rule.startswith(POOLS_PREFIX):  # the file's windows where `a` is a length it was made for, else adaptive
        start, end = bin_edges(g, a, n, "adaptive")
        for length in parse_pools_rule(rule).lengths:
            bins = np.array(spp_bins(length, n, rule), np.int64)
            here = g.node("Equal", [a, g.const(np.array(length, np.int64))])
            start = g.node("Where", [here, g.const(bins[:, 0]), start])
            end = g.node("Where", [here, g.const(bins[:, 1]), end])
        return start, end
    if rule == "adaptive":  # floor(i a / n), ceil((i + 1) a / n)
        return div(g.node("Mul", [i, a]), nn_), ceil_div(g.node("Mul", [i1, a]), nn_)
    if rule == "window":  # start i * floor(a / n), window ceil(a / n)
        start = g.node("Mul", [i, div(a, nn_)])
        return start, g.node("Add", [start, ceil_div(a, nn_)])
    # caffe: kernel = stride = ceil(a / n), pad = (kernel n - a + 1) // 2, windows clipped to the map
    kernel = ceil_div(a, nn_)
    one, two = g.const(np.array(1, np.int64)), g.const(np.array(2, np.int64))
    pad = div(g.node("Add", [g.node("Sub", [g.node("Mul", [kernel, nn_]), a]), one]), two)
    raw = g.node("Sub", [g.node("Mul", [i, kernel]), pad])
    start = g.node("Max", [raw, g.const(np.array(0, np.int64))])
    return start, g.node("Min", [g.node("Add", [raw, kernel]), a])


def bin_masks(g: GraphBuilder, a: str, n: int, rule: str) -> str:
    """(n, a) bool: mask[i, r] is True where position r lies in bin i."""
    start, end = bin_edges(g, a, n, rule)
    positions = g.node("Range", [g.const(np.array(0, np.int64)), a, g.const(np.array(1, np.int64))])
    starts = g.node("Unsqueeze", [start, g.const(np.array([1], np.int64))])
    ends = g.node("Unsqueeze", [end, g.const(np.array([1], np.int64))])
    return g.node("And", [g.node("GreaterOrEqual", [positions, starts]), g.node("Less", [positions, ends])])


def plugin_spp(g: GraphBuilder, x: str, levels: Sequence[int], rule: str) -> str:
    """One custom node that TensorRT maps to the sppnet SPP plugin (not runnable by ONNX Runtime)."""
    check_rule(rule)
    if rule.startswith(POOLS_PREFIX):
        raise InvalidInput(
            f"the SPP plugin knows the adaptive, window and caffe rules, not a file's pools ({rule}): "
            "export the decomposed dynamic form (leave --plugin off)"
        )
    g.use_domain(ONNX_DOMAIN, 1)
    return g.node(
        ONNX_OP_TYPE,
        [x],
        domain=ONNX_DOMAIN,
        levels=[int(n) for n in levels],
        rule=rule,
        plugin_version=PLUGIN_VERSION,
        plugin_namespace=PLUGIN_NAMESPACE,
    )
