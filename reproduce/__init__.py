"""SPP-net in PyTorch: the pyramid, the paper's networks, Caffe preprocessing, data, training and evaluation.

Names are imported on first use (PEP 562), so `sppnet.reproduce.preprocess` and `sppnet.reproduce.images`
load without PyTorch, as a deployment runtime needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "bins": ("RULES", "spp_bins", "uniform_pooling"),
    "layers": ("CaffeMaxPool2d", "WithinChannelLRN"),
    "models": (
        "NETWORKS",
        "ModelConfig",
        "NetworkSpec",
        "SPPNet",
        "build_model",
        "feature_sizes",
        "feature_stride",
        "get_network",
        "min_input_size",
    ),
    "spp": ("DEFAULT_LEVELS", "SpatialPyramidPooling", "pool_windows", "spatial_pyramid_pool", "spp_output_dim"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
