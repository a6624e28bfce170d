"""What the compiled-engine builder refuses before it compiles anything."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sppnet.core.models import SPPNet, build_model
from sppnet.core.networks import ModelConfig, Pool, get_network
from sppnet.export.aoti_builder import check_symbolic


def test_a_pool_whose_windows_depend_on_the_size_is_refused_for_a_dynamic_package() -> None:
    check_symbolic(build_model("zf5_cpu", num_classes=3))  # plain CEIL max pools: written without the size
    spec = get_network("zf5_cpu")
    padded = tuple(replace(layer, pad=1) if isinstance(layer, Pool) else layer for layer in spec.layers)
    model = SPPNet(replace(spec, name="padded", layers=padded), ModelConfig(name="padded", num_classes=3))
    with pytest.raises(ValueError, match=r"computes its windows from the input size.*--kind fixed"):
        check_symbolic(model)
