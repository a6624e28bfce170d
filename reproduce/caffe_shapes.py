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
