"""The network as torch.export sees it: every size-dependent step written without Python branches on the size.

`SPPNet` is exact at any size in eager mode, but two of its steps branch on Python integers of the input size:
Caffe's ceil-mode pooling (torch decides whether to drop a last window) and the pyramid (max-pools chosen from
the map size). Traced with symbolic H and W those branches become guards on the example's size, and AOTInductor
does not check them (pytorch/pytorch#150364). `TorchForm` swaps in equivalent, branch-free layers: ceil-mode
pooling as -inf padding up to the last window then floor-mode pooling, and the masked pyramid of
`sppnet.export.spp_masked`; float32 NCHW in and float32 logits out, whatever the precision inside.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sppnet.core.errors import InvalidInput
from sppnet.core.layers import CaffeMaxPool2d
from sppnet.core.models import SPPNet
from sppnet.export.spp_masked import MaskedSPP

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PaddedCaffeMaxPool2d(nn.Module):
    """Caffe's ceil-mode max pooling (pad 0, stride <= kernel) as -inf padding to the last window, then floor mode.

    The last window, clipped at the map edge in Caffe, sees -inf in place of the missing cells, so its max is the
    same; the output size ceil((a - k) / s) + 1 is plain integer arithmetic on the (symbolic) size.
    """

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        if stride > kernel:
            raise InvalidInput(
                f"PaddedCaffeMaxPool2d(kernel {kernel}, stride {stride}): stride > kernel is not Caffe's"
            )
        self.kernel, self.stride = kernel, stride

    def _pad(self, a: int | torch.SymInt) -> int | torch.SymInt:
        return (a - self.kernel + self.stride - 1) // self.stride * self.stride + self.kernel - a

    def forward(self, x: Tensor) -> Tensor:
        padded = F.pad(x, (0, self._pad(x.shape[3]), 0, self._pad(x.shape[2])), value=float("-inf"))
        return F.max_pool2d(padded, self.kernel, self.stride)


def _int(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]


class TorchForm(nn.Module):
    """features -> pyramid -> fc head of an `SPPNet`, branch-free in the input size, in one precision and layout."""

    def __init__(self, model: SPPNet, precision: str = "fp32", channels_last: bool = True) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise InvalidInput(f"precision {precision!r} is not one of {', '.join(DTYPES)}")
        self.dtype, self.channels_last = DTYPES[precision], channels_last
        self.features = copy.deepcopy(model.features)
        for name, layer in list(self.features.named_children()):
            if isinstance(layer, CaffeMaxPool2d):
                setattr(self.features, name, PaddedCaffeMaxPool2d(_int(layer.kernel_size), _int(layer.stride)))
        config = model.config
        self.pool = MaskedSPP(config.levels, config.rule) if config.spp else copy.deepcopy(model.pool)
        self.classifier = copy.deepcopy(model.classifier)
        self.eval().to(self.dtype)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, image: Tensor) -> Tensor:
        x = image.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(self.pool(self.features(x))).float()
