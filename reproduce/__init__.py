"""SPP-net in PyTorch: the pyramid, the paper's networks, and (later) data, training and evaluation."""

from .bins import RULES, spp_bins, uniform_pooling
from .layers import CaffeMaxPool2d, WithinChannelLRN
from .models import (
    NETWORKS,
    ModelConfig,
    NetworkSpec,
    SPPNet,
    build_model,
    feature_sizes,
    get_network,
    min_input_size,
)
from .spp import (
    DEFAULT_LEVELS,
    SpatialPyramidPooling,
    pool_windows,
    spatial_pyramid_pool,
    spp_output_dim,
)

__all__ = [
    "DEFAULT_LEVELS",
    "NETWORKS",
    "RULES",
    "CaffeMaxPool2d",
    "ModelConfig",
    "NetworkSpec",
    "SPPNet",
    "SpatialPyramidPooling",
    "WithinChannelLRN",
    "build_model",
    "feature_sizes",
    "get_network",
    "min_input_size",
    "pool_windows",
    "spatial_pyramid_pool",
    "spp_bins",
    "spp_output_dim",
    "uniform_pooling",
]
