"""The paper's networks as PyTorch modules: `SPPNet` = conv trunk (`forward_features`) -> pyramid -> fc head
(`forward_head`), built from a `NetworkSpec` layer table (`sppnet.core.networks`) with Caffe's initialisation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from sppnet.core.bins import DEFAULT_LEVELS, check_levels, check_rule
from sppnet.core.errors import InvalidInput
from sppnet.core.layers import AcrossChannelLRN, CaffeDropout, CaffeMaxPool2d, CaffePool2d, WithinChannelLRN
from sppnet.core.networks import (
    LRN,
    Conv,
    Dropout,
    HeadSpec,
    InnerProduct,
    LayerSpec,
    ModelConfig,
    NetworkSpec,
    Pool,
    ReLU,
    feature_sizes,
    get_network,
)
from sppnet.core.spp import SpatialPyramidPooling


def module_name(name: str) -> str:
    """A Caffe layer name as a torch module name (torch forbids '.' there)."""
    return name.replace(".", "_")


def relu_module(negative_slope: float) -> nn.Module:
    """Caffe's ReLU: max(x, 0) + negative_slope * min(x, 0)."""
    return nn.ReLU(inplace=True) if negative_slope == 0 else nn.LeakyReLU(negative_slope, inplace=True)


def pool_module(pool: Pool) -> nn.Module:
    """The Caffe pooling of a table entry: torch's own ceil-mode max pool where it is Caffe's, else CaffePool2d."""
    if pool.simple:
        return CaffeMaxPool2d(pool.kernel, pool.stride)
    return CaffePool2d(pool.kernel, pool.stride, pool.pad, pool.method, pool.global_pooling)


def make_features(layers: Sequence[LayerSpec], in_channels: int = 3) -> nn.Sequential:
    """The conv trunk of a layer table, with Caffe's layer names (conv1, relu1, norm1, pool1, ...)."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    stage, channels = 0, in_channels

    def add(name: str, module: nn.Module) -> None:
        key = module_name(name)
        if key in modules:
            raise InvalidInput(f"two layers of the network are named {name!r}: give each layer its own name")
        modules[key] = module

    for layer in layers:
        if isinstance(layer, Conv):
            stage += 1
            if channels % layer.group or layer.channels % layer.group:
                raise InvalidInput(
                    f"{layer.name}: group {layer.group} must divide its {channels} input and {layer.channels} "
                    "output channels"
                )
            conv = nn.Conv2d(
                channels, layer.channels, layer.kernel, layer.stride, layer.pad, groups=layer.group,
                bias=layer.bias_term,
            )
            add(layer.name, conv)
            if layer.relu is not None:
                add(f"relu{stage}", relu_module(layer.relu))
            channels = layer.channels
        elif isinstance(layer, Pool):
            add(layer.name or f"pool{stage}", pool_module(layer))
        elif isinstance(layer, LRN):
            if layer.region == "within":
                add(layer.name or f"norm{stage}", WithinChannelLRN(layer.size, layer.alpha, layer.beta))
            else:
                add(layer.name or f"norm{stage}", AcrossChannelLRN(layer.size, layer.alpha, layer.beta, layer.k))
        else:
            add(layer.name, relu_module(layer.negative_slope))
    return nn.Sequential(modules)


def paper_head(fc_width: int, num_classes: int, dropout: float) -> tuple[HeadSpec, ...]:
    """The paper's fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8 as head entries (Caffe's biases)."""
    return (
        InnerProduct("fc6", fc_width, bias=1.0),
        ReLU("relu6"),
        Dropout("drop6", dropout),
        InnerProduct("fc7", fc_width, bias=1.0),
        ReLU("relu7"),
        Dropout("drop7", dropout),
        InnerProduct("fc8", num_classes, bias=0.0),
    )


def head_of(spec: NetworkSpec, config: ModelConfig) -> tuple[HeadSpec, ...]:
    """The head a model of `spec` and `config` has: the spec's own (imported) or the paper's."""
    if spec.head is None:
        return paper_head(spec.fc_width, config.num_classes, config.dropout)
    return spec.head


def make_classifier(head: Sequence[HeadSpec], in_features: int, dropout_scaling: str) -> nn.Sequential:
    """The head after the pyramid: Linear layers named as the table names them, their ReLUs and dropouts."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    features = in_features
    for layer in head:
        key = module_name(layer.name)
        if key in modules:
            raise InvalidInput(f"two layers of the head are named {layer.name!r}: give each layer its own name")
        if isinstance(layer, InnerProduct):
            modules[key] = nn.Linear(features, layer.outputs, bias=layer.bias_term)
            features = layer.outputs
        elif isinstance(layer, ReLU):
            modules[key] = relu_module(layer.negative_slope)
        else:
            modules[key] = nn.Dropout(layer.ratio) if dropout_scaling == "train" else CaffeDropout(layer.ratio)
    return nn.Sequential(modules)


class BaselinePool(nn.Module):
    """The no-SPP baseline's pool5 (to 6x6 at the training size) and flatten; other sizes are refused."""

    def __init__(self, pool: Pool, grid: int) -> None:
        super().__init__()
        self.pool = pool_module(pool)
        self.grid = grid

    def output_dim(self, channels: int) -> int:
        return channels * self.grid * self.grid

    def forward(self, x: Tensor) -> Tensor:
        y = self.pool(x)
        if tuple(y.shape[-2:]) != (self.grid, self.grid):
            raise InvalidInput(
                f"the no-SPP model's pool5 gives {y.shape[-2]}x{y.shape[-1]} here, but its fc6 takes "
                f"{self.grid}x{self.grid}: feed its training size, or use an SPP model (spp=True) "
                "for any size"
            )
        return y.flatten(1)


class SPPNet(nn.Module):
    """features (conv1..conv5 + ReLU) -> pool (SPP, or pool5 for the baseline) -> classifier (fc6, fc7, fc8)."""

    def __init__(self, spec: NetworkSpec, config: ModelConfig) -> None:
        super().__init__()
        self.spec, self.config = spec, config
        self.features = make_features(spec.layers)
        channels = spec.conv5_channels
        if config.spp:
            self.pool: SpatialPyramidPooling | BaselinePool = SpatialPyramidPooling(config.levels, config.rule)
        else:
            size = config.input_size or spec.input_size
            _, h, _ = feature_sizes(spec, size, size)[-1]
            grid = spec.baseline_pool.out_size(h)
            self.pool = BaselinePool(spec.baseline_pool, grid)
        head = head_of(spec, config)
        fcs = [layer for layer in head if isinstance(layer, InnerProduct)]
        outputs = fcs[-1].outputs if fcs else self.pool.output_dim(channels)
        if outputs != config.num_classes:
            raise InvalidInput(
                f"{spec.name}'s head gives {outputs} outputs but the model config says {config.num_classes} "
                "classes: make them agree"
            )
        self.classifier = make_classifier(head, self.pool.output_dim(channels), config.dropout_scaling)
        caffe_init(self, spec, config.init_std)

    def forward_features(self, x: Tensor) -> Tensor:
        """conv5 after its ReLU: (N, 3, H, W) preprocessed images -> (N, C, h, w) maps, for any H, W."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InvalidInput(f"{self.spec.name} expects (N, 3, H, W) BGR images; got shape {tuple(x.shape)}")
        feature_sizes(self.spec, x.shape[2], x.shape[3])  # a clear error before torch's for too-small inputs
        return self.features(x)

    def forward_head(self, pooled: Tensor) -> Tensor:
        """fc6 -> fc7 -> fc8 on pooled vectors (N, D): the pyramid of whole maps or of windows, as detection uses."""
        return self.classifier(pooled)

    def head_features(self, pooled: Tensor, layers: Sequence[str] = ("fc7",)) -> dict[str, Tensor]:
        """The named fc layers' outputs after their ReLU (detection's fc6/fc7 features), stopping at the last asked."""
        fcs = [name for name, m in self.classifier.named_children() if isinstance(m, nn.Linear)][:-1]
        unknown = sorted(set(layers) - set(fcs))
        if unknown:
            raise InvalidInput(f"head_features: layers must be among {fcs} (the head before the logits); got {unknown}")
        wanted, out = set(layers), {}
        x, current = pooled, None  # the fc layer whose output (then its ReLU's) is being followed
        for name, module in self.classifier.named_children():
            if isinstance(module, nn.Linear):
                if wanted <= out.keys():
                    break
                current = name
            x = module(x)
            if current in wanted and not isinstance(module, (nn.Dropout, CaffeDropout)):
                out[current] = x
        return out

    @property
    def pooled_dim(self) -> int:
        """Length of the pooled vector fc6 takes."""
        return self.pool.output_dim(self.spec.conv5_channels)

    def reset_classifier(self, num_classes: int, std: float = 0.01) -> None:
        """A new last fc layer with `num_classes` outputs (Gaussian(0, std) weights, zero bias), as fine-tuning
        needs."""
        if num_classes < 1:
            raise InvalidInput(f"reset_classifier: num_classes must be >= 1; got {num_classes}")
        linears = [(name, m) for name, m in self.classifier.named_children() if isinstance(m, nn.Linear)]
        if not linears:
            raise InvalidInput(f"{self.spec.name} has no fc layer to replace: its logits are the pyramid itself")
        name, last = linears[-1]
        fc = nn.Linear(last.in_features, num_classes).to(last.weight.device)
        nn.init.normal_(fc.weight, 0.0, std)
        nn.init.zeros_(fc.bias)
        setattr(self.classifier, name, fc)
        if self.spec.head is not None:
            head = tuple(
                replace(layer, outputs=num_classes, bias_term=True)
                if isinstance(layer, InnerProduct) and module_name(layer.name) == name
                else layer
                for layer in self.spec.head
            )
            self.spec = replace(self.spec, head=head)
        self.config = replace(self.config, num_classes=num_classes)

    def pool_windows(self, maps: Tensor, boxes: Tensor, image_index: Tensor | None = None) -> Tensor:
        """The pyramid of K windows (cells, half-open) of conv5 maps -> (K, D), for detection and multi-view tests."""
        if not isinstance(self.pool, SpatialPyramidPooling):
            raise InvalidInput(f"the no-SPP {self.spec.name} pools whole maps only: window pooling needs spp=True")
        return self.pool.pool_windows(maps, boxes, image_index)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.pool(self.forward_features(x)))


def caffe_init(model: SPPNet, spec: NetworkSpec, std: float = 0.01) -> None:
    """Caffe's fillers. "gaussian" (the paper): Gaussian(0, std) weights, biases from the layer table (1 for
    fc6/fc7, 0 for fc8). "msra" (CPU presets): Gaussian(0, sqrt(2 / fan_in)) weights, the last fc layer
    Gaussian(0, std), biases 0.
    """
    biases = {module_name(layer.name): layer.bias for layer in spec.layers if isinstance(layer, Conv)}
    named = dict(model.features.named_children())
    fcs = [layer for layer in head_of(spec, model.config) if isinstance(layer, InnerProduct)]
    biases.update({module_name(layer.name): layer.bias for layer in fcs})
    named |= dict(model.classifier.named_children())
    last = module_name(fcs[-1].name) if fcs else None
    if any(p.is_meta for p in model.parameters()):
        return  # shapes only (describe, imports): filling meta tensors would only load torch's decompositions
    with torch.no_grad():
        for name, bias in biases.items():
            weight = named[name].weight
            msra = spec.init == "msra" and name != last
            weight.normal_(0.0, (2.0 / weight[0].numel()) ** 0.5 if msra else std)
            if named[name].bias is not None:
                named[name].bias.fill_(0.0 if spec.init == "msra" else bias)


def build_model(
    name: str,
    *,
    spp: bool = True,
    num_classes: int = 1000,
    levels: Sequence[int] = DEFAULT_LEVELS,
    rule: str = "adaptive",
    dropout: float = 0.5,
    init_std: float = 0.01,
    input_size: int | None = None,
) -> SPPNet:
    """One of the registered networks with an SPP head (or the no-SPP baseline), Caffe-initialised."""
    spec = get_network(name)
    check_rule(rule)
    if num_classes < 1:
        raise InvalidInput(f"num_classes must be >= 1; got {num_classes}")
    config = ModelConfig(name, spp, num_classes, check_levels(levels), rule, dropout, init_std, input_size)
    return SPPNet(spec, config)
