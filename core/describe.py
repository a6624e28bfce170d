"""The layer table of a network at an input size: what each layer is, its output shape and parameter count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sppnet.core.bins import DEFAULT_LEVELS, check_levels, check_rule
from sppnet.core.errors import InvalidInput
from sppnet.core.layers import AcrossChannelLRN, CaffeDropout, CaffeMaxPool2d, CaffePool2d, WithinChannelLRN
from sppnet.core.models import BaselinePool, SPPNet
from sppnet.core.networks import ModelConfig, NetworkSpec, feature_sizes, get_network
from sppnet.core.spp import SpatialPyramidPooling


@dataclass(frozen=True)
class LayerRow:
    """One row of the table."""

    name: str
    kind: str
    output: tuple[int, ...]
    params: int


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
        group = f" group {module.groups}" if module.groups > 1 else ""
        bias = "" if module.bias is not None else " no bias"
        return f"conv {module.out_channels} {k}x{k} s{s} p{p}{group}{bias}"
    if isinstance(module, CaffeMaxPool2d):
        return f"max pool {module.kernel_size}x{module.kernel_size} s{module.stride} (Caffe ceil)"
    if isinstance(module, CaffePool2d):
        if module.global_pooling:
            return f"{module.method} pool, global"
        k, s, p = module.kernel_size, module.stride, module.pad
        return f"{module.method} pool {k}x{k} s{s} p{p} (Caffe ceil)"
    if isinstance(module, nn.LeakyReLU):
        return f"relu slope {module.negative_slope:g}"
    if isinstance(module, CaffeDropout):
        return f"dropout {module.ratio:g} (x{1 - module.ratio:g} at test)"
    if isinstance(module, WithinChannelLRN):
        return f"LRN within-channel {module.local_size}x{module.local_size} a={module.alpha:g} b={module.beta:g}"
    if isinstance(module, AcrossChannelLRN):
        return f"LRN across {module.size} channels a={module.alpha:g} b={module.beta:g}"
    if isinstance(module, SpatialPyramidPooling):
        return f"SPP levels {','.join(map(str, module.levels))} ({module.rule} bins)"
    if isinstance(module, BaselinePool):
        pool = module.pool
        return f"pool5 {pool.kernel_size}x{pool.kernel_size} s{pool.stride} to {module.grid}x{module.grid}, flatten"
    if isinstance(module, nn.Linear):
        return f"fc {module.out_features}"
    if isinstance(module, nn.Dropout):
        return f"dropout {module.p:g}"
    return type(module).__name__.lower()


def describe(
    network: str | NetworkSpec,
    height: int,
    width: int,
    *,
    spp: bool = True,
    num_classes: int = 1000,
    levels: Sequence[int] = DEFAULT_LEVELS,
    rule: str = "adaptive",
) -> list[LayerRow]:
    """Run a network (registered name or spec) on a (1, 3, height, width) meta tensor and record every layer."""
    spec = get_network(network) if isinstance(network, str) else network
    check_rule(rule)
    if num_classes < 1:
        raise InvalidInput(f"num_classes must be >= 1; got {num_classes}")
    config = ModelConfig(spec.name, spp, num_classes, check_levels(levels), rule)
    return describe_model(spec, config, height, width)


def describe_model(spec: NetworkSpec, config: ModelConfig, height: int, width: int) -> list[LayerRow]:
    """The table of the model `spec` and `config` build (an imported run's, for one), at height x width."""
    feature_sizes(spec, height, width)  # a clear error for inputs that are too small
    with torch.device("meta"):
        model = SPPNet(spec, config).eval()
    layers = [
        *model.features.named_children(),
        ("spp" if config.spp else "pool5", model.pool),
        *model.classifier.named_children(),
    ]
    rows: list[LayerRow] = []
    for layer_name, module in layers:

        def record(
            _mod: nn.Module, _inp: object, out: torch.Tensor, layer_name: str = layer_name, module: nn.Module = module
        ) -> None:
            params = sum(p.numel() for p in module.parameters())
            rows.append(LayerRow(layer_name, _kind(module), tuple(out.shape[1:]), params))

        module.register_forward_hook(record)
    with torch.no_grad():
        model(torch.empty(1, 3, height, width, device="meta"))
    return rows


def format_table(network: str | NetworkSpec, height: int, width: int, rows: list[LayerRow]) -> str:
    """The rows as aligned text, with a header naming the network and a parameter total."""
    spec = get_network(network) if isinstance(network, str) else network
    lines = [f"{spec.name}: {spec.summary}", f"input 3x{height}x{width}", ""]
    lines.append(f"{'layer':<12} {'type':<46} {'output':>16} {'params':>12}")
    for row in rows:
        shape = "x".join(map(str, row.output))
        params = f"{row.params:,}" if row.params else ""
        lines.append(f"{row.name:<12} {row.kind:<46} {shape:>16} {params:>12}")
    lines.append(f"{'total':<12} {'':<46} {'':>16} {sum(r.params for r in rows):>12,}")
    return "\n".join(lines)
