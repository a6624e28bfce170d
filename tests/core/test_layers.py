"""Caffe's within-channel LRN and CEIL-mode max pooling against loops written from Caffe's source."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sppnet.core.layers import AcrossChannelLRN, CaffeMaxPool2d, WithinChannelLRN


def within_channel_lrn(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    """y = x * (1 + alpha * sum_{size x size, zero padded}(x^2) / size^2)^-beta, cell by cell."""
    _, _, h, w = x.shape
    half = size // 2
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            window = x[:, :, max(i - half, 0) : i + half + 1, max(j - half, 0) : j + half + 1]
            out[:, :, i, j] = x[:, :, i, j] * (1 + alpha * (window**2).sum(axis=(2, 3)) / size**2) ** -beta
    return out


def across_channel_lrn(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    """Caffe ACROSS_CHANNELS: scale = 1 + alpha/size * sum over channels c-(size-1)/2 .. c+(size-1)/2."""
    c = x.shape[1]
    out = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(ch - (size - 1) // 2, 0), min(ch + (size - 1) // 2 + 1, c)
        out[:, ch] = x[:, ch] * (1 + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)) ** -beta
    return out


def caffe_max_pool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """pooling_layer.cpp MAX, pad 0: ceil((a - k) / s) + 1 windows, each clipped to the map."""
    _, _, h, w = x.shape
    oh, ow = math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1
    out = np.empty((*x.shape[:2], oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s : min(i * s + k, h), j * s : min(j * s + k, w)].max(axis=(2, 3))
    return out


@pytest.mark.parametrize(("size", "alpha", "beta"), [(3, 5e-5, 0.75), (5, 1e-2, 0.5), (1, 0.1, 1.0)])
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (13, 13), (7, 10)])
def test_within_channel_lrn_matches_the_windowed_formula(
    size: int, alpha: float, beta: float, shape: tuple[int, int]
) -> None:
    x = np.random.default_rng(0).uniform(-300, 300, (2, 3, *shape))
    got = WithinChannelLRN(size, alpha, beta)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, within_channel_lrn(x, size, alpha, beta), rtol=1e-12)


def test_within_channel_lrn_is_not_the_across_channel_one() -> None:
    x = torch.rand(1, 8, 6, 6, dtype=torch.float64) * 300
    assert not torch.allclose(WithinChannelLRN(3, 5e-5)(x), torch.nn.LocalResponseNorm(3, 5e-5)(x))


def test_across_channel_lrn_matches_caffes_formula() -> None:
    x = np.random.default_rng(1).uniform(-100, 100, (2, 9, 4, 5))
    got = AcrossChannelLRN(5, 1e-4, 0.75)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, across_channel_lrn(x, 5, 1e-4, 0.75), rtol=1e-12)


@pytest.mark.parametrize(("k", "s"), [(3, 2), (3, 3), (2, 2)])
def test_caffe_max_pool_uses_ceil_mode_with_clipped_last_windows(k: int, s: int) -> None:
    rng = np.random.default_rng(2)
    for a in range(k, 31):
        x = rng.standard_normal((1, 2, a, a + 5))
        got = CaffeMaxPool2d(k, s)(torch.from_numpy(x)).numpy()
        assert np.array_equal(got, caffe_max_pool(x, k, s)), a


def test_ceil_mode_gives_zf5_its_13_and_10() -> None:
    assert CaffeMaxPool2d(3, 2)(torch.zeros(1, 1, 26, 26)).shape[-1] == 13  # floor mode: 12
    assert CaffeMaxPool2d(3, 2)(torch.zeros(1, 1, 20, 20)).shape[-1] == 10  # floor mode: 9


def test_stride_beyond_kernel_and_even_lrn_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="stride > kernel"):
        CaffeMaxPool2d(2, 3)
    with pytest.raises(ValueError, match="odd local_size"):
        WithinChannelLRN(4)


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_within_channel_lrn_has_the_gradient_of_its_formula(beta: float) -> None:
    # Large activations and a large alpha, so the normalisation term really contributes to the gradient.
    x = (torch.rand(2, 3, 5, 6, dtype=torch.float64) * 20).requires_grad_(True)
    assert torch.autograd.gradcheck(WithinChannelLRN(3, 5e-3, beta), (x,))
    # ... and the same gradient as autograd's through the formula written plainly.
    def plain(t: torch.Tensor) -> torch.Tensor:
        mean = torch.nn.functional.avg_pool2d(t * t, 3, stride=1, padding=1, count_include_pad=True)
        return t * (1 + 5e-3 * mean).pow(-beta)

    weights = torch.rand_like(x)
    (got,) = torch.autograd.grad((WithinChannelLRN(3, 5e-3, beta)(x) * weights).sum(), x)
    (want,) = torch.autograd.grad((plain(x) * weights).sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
