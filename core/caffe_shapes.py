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

    Plain arithmetic, no torch: the runtime reads the geometry from a manifest. Caffe pooling needs a map of at
    least `kernel` cells, a convolution `kernel - 2 pad`.
    """
    h, w = height, width
    for kind, kernel, stride, pad in geometry:
        smallest = kernel - 2 * pad if kind == "conv" else kernel
        if min(h, w) < max(smallest, 1):
            return None
        size = conv_size if kind == "conv" else caffe_pool_size
        h, w = size(h, kernel, stride, pad), size(w, kernel, stride, pad)
    return h, w
