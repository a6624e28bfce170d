"""Caffe layers whose semantics PyTorch's built-ins do not share: within-channel LRN, ceil-mode pooling with
Caffe's padding and AVE divisor, and the SPP-net release's test-time-scaled dropout."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sppnet.core.caffe_shapes import caffe_pool_size
from sppnet.core.errors import InvalidInput


class WithinChannelLRN(nn.Module):
    """Caffe LRN with norm_region WITHIN_CHANNEL: y = x * (1 + alpha * mean_{k x k}(x^2))^(-beta).

    Caffe builds it from square, AVE pooling (pad (k-1)/2, stride 1) whose divisor counts padded cells (always
    k*k here), power and product (lrn_layer.cpp). ONNX LRN and torch LocalResponseNorm are across channels.
    """

    def __init__(self, local_size: int = 3, alpha: float = 5e-5, beta: float = 0.75) -> None:
        super().__init__()
        if local_size < 1 or local_size % 2 == 0:
            raise InvalidInput(f"Caffe LRN needs an odd local_size >= 1; got {local_size}")
        self.local_size, self.alpha, self.beta = local_size, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        return _WithinChannelLRN.apply(x, self.local_size, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"local_size={self.local_size}, alpha={self.alpha}, beta={self.beta}"


def _box(x: Tensor, k: int) -> Tensor:
    """The k x k mean with zero padding whose divisor counts the padded cells (always k*k): Caffe's LRN window."""
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=True)


class _WithinChannelLRN(torch.autograd.Function):
    """y = x u^-b with u = 1 + a box(x^2), and its gradient written out: one box filter forward and one backward,
    where autograd would keep and replay every intermediate (about half of a CPU preset's training step).

    dx = g u^-b - 2ab x box(g x u^-b / u): the box filter is its own adjoint (symmetric window, zero padding).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, k: int, a: float, b: float) -> Tensor:
        u = _box(x * x, k).mul_(a).add_(1.0)
        if b == 0.75:  # the paper's LRNs: u^-3/4 as rsqrt(u) * sqrt(rsqrt(u)), cheaper than pow
            root = u.rsqrt()
            power = root * root.sqrt()
        else:
            power = u.pow(-b)
        ctx.save_for_backward(x, u, power)
        ctx.k, ctx.a, ctx.b = k, a, b
        return x * power

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        x, u, power = ctx.saved_tensors
        inner = _box(g * x * power / u, ctx.k)
        return g * power - (2.0 * ctx.a * ctx.b) * x * inner, None, None, None


class AcrossChannelLRN(nn.LocalResponseNorm):
    """Caffe LRN with norm_region ACROSS_CHANNELS (Krizhevsky's), k = 1: identical to torch's."""

    def __init__(self, local_size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__(local_size, alpha=alpha, beta=beta, k=k)


class CaffeMaxPool2d(nn.MaxPool2d):
    """Caffe's default (CEIL) max pooling without padding.

    With pad 0 and stride <= kernel, torch's ceil_mode gives Caffe's output size and windows exactly; Caffe
    with stride > kernel would emit a window starting past the map (-FLT_MAX), which torch drops, so it is refused.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        if stride > kernel_size:
            raise InvalidInput(
                f"CaffeMaxPool2d(kernel {kernel_size}, stride {stride}): stride > kernel is not "
                "reproducible with torch's ceil mode"
            )
        super().__init__(kernel_size, stride, ceil_mode=True)


def caffe_pool_windows(a: int, kernel: int, stride: int, pad: int) -> list[tuple[int, int]]:
    """Caffe's pooling windows along one axis as (start, end) before clipping to the map: start = i*stride - pad,
    end = min(start + kernel, a + pad) (pooling_layer.cpp; the AVE divisor is end - start)."""
    count = caffe_pool_size(a, kernel, stride, pad)
    return [(i * stride - pad, min(i * stride - pad + kernel, a + pad)) for i in range(count)]


class CaffePool2d(nn.Module):
    """Caffe's Pooling layer, MAX or AVE, with padding, CEIL rounding, its last-window clip and global pooling.

    The map is padded by `pad` before and by whatever Caffe's last window needs after (-inf for MAX, zeros for
    AVE), then pooled with floor rounding, which gives exactly Caffe's windows. AVE divides each window's sum by
    Caffe's count: the window clipped to [-pad, a + pad), so padding counts and the CEIL overhang does not.
    """

    def __init__(
        self, kernel_size: int, stride: int, pad: int = 0, method: str = "max", global_pooling: bool = False
    ) -> None:
        super().__init__()
        if method not in ("max", "ave"):
            raise InvalidInput(f"CaffePool2d: method must be 'max' or 'ave'; got {method!r}")
        if not global_pooling and not (0 <= pad < kernel_size and 1 <= stride <= kernel_size):
            raise InvalidInput(
                f"CaffePool2d(kernel {kernel_size}, stride {stride}, pad {pad}): Caffe needs pad < kernel, and "
                "stride > kernel is not reproduced"
            )
        self.kernel_size, self.stride, self.pad = kernel_size, stride, pad
        self.method, self.global_pooling = method, global_pooling

    def forward(self, x: Tensor) -> Tensor:
        if self.global_pooling:
            return x.amax((2, 3), keepdim=True) if self.method == "max" else x.mean((2, 3), keepdim=True)
        k, s, p = self.kernel_size, self.stride, self.pad
        height, width = x.shape[-2:]
        rows, cols = caffe_pool_windows(height, k, s, p), caffe_pool_windows(width, k, s, p)
        after_h, after_w = (len(rows) - 1) * s + k - height - p, (len(cols) - 1) * s + k - width - p
        if self.method == "max":
            if p or after_h or after_w:
                x = F.pad(x, (p, after_w, p, after_h), value=float("-inf"))
            return F.max_pool2d(x, k, s)
        sums = F.avg_pool2d(F.pad(x, (p, after_w, p, after_h)), k, s, divisor_override=1)
        row_count = torch.tensor([end - start for start, end in rows], dtype=x.dtype, device=x.device)
        col_count = torch.tensor([end - start for start, end in cols], dtype=x.dtype, device=x.device)
        return sums / (row_count[:, None] * col_count[None, :])

    def extra_repr(self) -> str:
        if self.global_pooling:
            return f"{self.method}, global"
        return f"{self.method}, kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}"


class CaffeDropout(nn.Module):
    """Dropout as the SPP-net release's Caffe fork runs it: training keeps x * mask (no rescaling), testing
    multiplies by 1 - ratio. BVLC Caffe and torch's nn.Dropout rescale while training instead."""

    def __init__(self, ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise InvalidInput(f"dropout ratio must be in [0, 1); got {ratio}")
        self.ratio = ratio

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return x * torch.bernoulli(torch.full_like(x, 1.0 - self.ratio))
        return x * (1.0 - self.ratio)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, scaled at test"
