"""Caffe's output-size arithmetic, shared by the bin rules, the layers and the network tables."""

from __future__ import annotations

import math


def caffe_pool_size(a: int, kernel: int, stride: int, pad: int = 0) -> int:
    """Pooled length of Caffe's default (CEIL) pooling, pooling_layer.cpp Reshape.

    ceil((a + 2*pad - kernel) / stride) + 1, then, only when pad > 0, a last window that would start in the
    padding is dropped.
    """
    pooled = math.ceil((a + 2 * pad - kernel) / stride) + 1
    if pad > 0 and (pooled - 1) * stride >= a + pad:
        pooled -= 1
    return pooled


def conv_size(a: int, kernel: int, stride: int, pad: int) -> int:
    """Convolution output length (Caffe and torch both round down)."""
    return (a + 2 * pad - kernel) // stride + 1


Geometry = list[tuple[str, int, int, int]]  # ("conv" | "pool", kernel, stride, pad), input to conv5


def feature_map_size(geometry: Geometry, height: int, width: int) -> tuple[int, int] | None:
    """conv5's (H, W) for an input of height x width through `geometry`, or None where a layer's output empties.

    Plain arithmetic, no torch: the runtime reads the geometry from a manifest. A layer needs a map of at least
    `kernel - 2 pad` cells (and one); a pool of kernel 0 is a global pooling (any map to 1x1).
    """
    h, w = height, width
    for kind, kernel, stride, pad in geometry:
        if kind == "pool" and kernel == 0:
            h, w = 1, 1
            continue
        if min(h, w) < max(kernel - 2 * pad, 1):
            return None
        size = conv_size if kind == "conv" else caffe_pool_size
        h, w = size(h, kernel, stride, pad), size(w, kernel, stride, pad)
    return h, w
