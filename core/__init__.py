"""The shared core: the pyramid, Caffe layers, the paper's networks, image decoding, Caffe preprocessing, run files.

Names are imported on first use (PEP 562), so `sppnet.core.preprocess` and `sppnet.core.images`
load without PyTorch, as a deployment runtime needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "bins": ("DEFAULT_LEVELS", "RULES", "spp_bins", "spp_output_dim", "uniform_pooling"),
    "errors": ("SppnetError",),
    "layers": ("CaffeMaxPool2d", "WithinChannelLRN"),
    "networks": (
        "NETWORKS",
        "ModelConfig",
        "NetworkSpec",
        "feature_sizes",
        "feature_stride",
        "get_network",
        "min_input_size",
    ),
    "models": ("SPPNet", "build_model"),
    "spp": ("SpatialPyramidPooling", "pool_windows", "spatial_pyramid_pool"),
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
