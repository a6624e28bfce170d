"""Caffe layers whose semantics PyTorch's built-ins do not share: within-channel LRN, ceil-mode max pooling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

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
        mean = F.avg_pool2d(x * x, self.local_size, stride=1, padding=self.local_size // 2, count_include_pad=True)
        return x * (1.0 + self.alpha * mean).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"local_size={self.local_size}, alpha={self.alpha}, beta={self.beta}"


class AcrossChannelLRN(nn.LocalResponseNorm):
    """Caffe LRN with norm_region ACROSS_CHANNELS (Krizhevsky's), k = 1: identical to torch's."""

    def __init__(self, local_size: int = 5, alpha: float = 1e-4, beta: float = 0.75) -> None:
        super().__init__(local_size, alpha=alpha, beta=beta, k=1.0)


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
