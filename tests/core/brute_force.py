"""Independent definitions of the three bin rules and a per-bin SPP loop, written from PAPER.md and NOTES.md.

These never call the code under test: the adaptive rule is defined geometrically (the cells a continuous bin
touches), the window and caffe rules by simulating the sliding windows Caffe's PoolingLayer would place.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


class NoBins(Exception):
    """The rule cannot give n non-empty bins here."""


def adaptive(a: int, n: int) -> list[tuple[int, int]]:
    """Bin i holds every cell [x, x+1) that meets the continuous interval [i*a/n, (i+1)*a/n)."""
    if a < 1 or n < 1:
        raise NoBins
    bins = []
    for i in range(n):
        lo, hi = Fraction(i * a, n), Fraction((i + 1) * a, n)
        cells = [x for x in range(a) if x < hi and x + 1 > lo]
        bins.append((cells[0], cells[-1] + 1))
    return bins


def _caffe_windows(a: int, kernel: int, stride: int, pad: int) -> list[tuple[int, int]]:
    """The MAX windows of a Caffe CEIL-mode PoolingLayer on an axis of length a (pooling_layer.cpp)."""
    if pad >= kernel:
        raise NoBins  # CHECK_LT(pad, kernel): Caffe aborts
    pooled = math.ceil(float(a + 2 * pad - kernel) / stride) + 1
    if pad and (pooled - 1) * stride >= a + pad:
        pooled -= 1
    windows = []
    for j in range(pooled):
        start = j * stride - pad
        windows.append((max(start, 0), min(start + kernel, a)))
    return windows


def window(a: int, n: int) -> list[tuple[int, int]]:
    """Paper Sec. 2.3: win = ceil(a/n), stride = floor(a/n), no padding, Caffe's window count."""
    if a < 1 or n < 1:
        raise NoBins
    win, stride = math.ceil(Fraction(a, n)), math.floor(Fraction(a, n))
    if stride == 0:
        raise NoBins
    windows = _caffe_windows(a, win, stride, 0)
    covered = set().union(*(range(s, e) for s, e in windows))
    if len(windows) != n or covered != set(range(a)) or any(e <= s for s, e in windows):
        raise NoBins
    return windows


def caffe(a: int, n: int) -> list[tuple[int, int]]:
    """BVLC SPPLayer: kernel = ceil(a/n) = stride, pad = (kernel*n - a + 1) // 2, then Caffe pooling."""
    if a < 1 or n < 1:
        raise NoBins
    kernel = math.ceil(Fraction(a, n))
    windows = _caffe_windows(a, kernel, kernel, (kernel * n - a + 1) // 2)
    if len(windows) != n or any(e <= s for s, e in windows):
        raise NoBins
    return windows


RULES = {"adaptive": adaptive, "window": window, "caffe": caffe}


def spp(x: np.ndarray, levels: tuple[int, ...], rule: str) -> np.ndarray:
    """SPP by looping over every bin: (N, C, H, W) -> (N, C * sum(n^2)), Caffe order."""
    bins_of = RULES[rule]
    num, channels, height, width = x.shape
    parts = []
    for n in levels:
        out = np.empty((num, channels, n, n), dtype=x.dtype)
        for i, (r0, r1) in enumerate(bins_of(height, n)):
            for j, (c0, c1) in enumerate(bins_of(width, n)):
                out[:, :, i, j] = x[:, :, r0:r1, c0:c1].max(axis=(2, 3))
        parts.append(out.reshape(num, -1))
    return np.concatenate(parts, axis=1)
