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
from sppnet.core.layers import AcrossChannelLRN, CaffeMaxPool2d, WithinChannelLRN
from sppnet.core.networks import Conv, LayerSpec, ModelConfig, NetworkSpec, Pool, feature_sizes, get_network
from sppnet.core.spp import SpatialPyramidPooling


def make_features(layers: Sequence[LayerSpec], in_channels: int = 3) -> nn.Sequential:
    """The conv trunk of a layer table, with Caffe's layer names (conv1, relu1, norm1, pool1, ...)."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    stage, channels = 0, in_channels
    for layer in layers:
        if isinstance(layer, Conv):
            stage += 1
            modules[layer.name] = nn.Conv2d(channels, layer.channels, layer.kernel, layer.stride, layer.pad)
            modules[f"relu{stage}"] = nn.ReLU(inplace=True)
            channels = layer.channels
        elif isinstance(layer, Pool):
            modules[f"pool{stage}"] = CaffeMaxPool2d(layer.kernel, layer.stride)
        else:
            lrn = WithinChannelLRN if layer.region == "within" else AcrossChannelLRN
            modules[f"norm{stage}"] = lrn(layer.size, layer.alpha, layer.beta)
    return nn.Sequential(modules)


class BaselinePool(nn.Module):
    """The no-SPP baseline's pool5 (to 6x6 at the training size) and flatten; other sizes are refused."""

    def __init__(self, pool: Pool, grid: int) -> None:
        super().__init__()
        self.pool = CaffeMaxPool2d(pool.kernel, pool.stride)
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
        fc = spec.fc_width
        self.classifier = nn.Sequential(
            OrderedDict(
                fc6=nn.Linear(self.pool.output_dim(channels), fc),
                relu6=nn.ReLU(inplace=True),
                drop6=nn.Dropout(config.dropout),
                fc7=nn.Linear(fc, fc),
                relu7=nn.ReLU(inplace=True),
                drop7=nn.Dropout(config.dropout),
                fc8=nn.Linear(fc, config.num_classes),
            )
        )
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
        unknown = sorted(set(layers) - {"fc6", "fc7"})
        if unknown:
            raise InvalidInput(f"head_features: layers must be 'fc6' and/or 'fc7'; got {unknown}")
        wanted = {f"relu{layer[2:]}": layer for layer in layers}
        out: dict[str, Tensor] = {}
        x = pooled
        for name, module in self.classifier.named_children():
            if len(out) == len(wanted):
                break
            x = module(x)
            if name in wanted:
                out[wanted[name]] = x
        return out

    @property
    def pooled_dim(self) -> int:
        """Length of the pooled vector fc6 takes."""
        return self.pool.output_dim(self.spec.conv5_channels)

    def reset_classifier(self, num_classes: int, std: float = 0.01) -> None:
        """A new fc8 with `num_classes` outputs (Gaussian(0, std) weights, zero bias), as fine-tuning needs."""
        if num_classes < 1:
            raise InvalidInput(f"reset_classifier: num_classes must be >= 1; got {num_classes}")
        fc8 = nn.Linear(self.classifier.fc7.out_features, num_classes).to(self.classifier.fc7.weight.device)
        nn.init.normal_(fc8.weight, 0.0, std)
        nn.init.zeros_(fc8.bias)
        self.classifier.fc8 = fc8
        self.config = replace(self.config, num_classes=num_classes)

    def pool_windows(self, maps: Tensor, boxes: Tensor, image_index: Tensor | None = None) -> Tensor:
        """The pyramid of K windows (cells, half-open) of conv5 maps -> (K, D), for detection and multi-view tests."""
        if not isinstance(self.pool, SpatialPyramidPooling):
            raise InvalidInput(f"the no-SPP {self.spec.name} pools whole maps only: window pooling needs spp=True")
        return self.pool.pool_windows(maps, boxes, image_index)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.pool(self.forward_features(x)))


def caffe_init(model: SPPNet, spec: NetworkSpec, std: float = 0.01) -> None:
    """Caffe's fillers. "gaussian" (the paper): Gaussian(0, std) weights, biases from the layer table, 1 for
    fc6/fc7, 0 for fc8. "msra" (CPU presets): Gaussian(0, sqrt(2 / fan_in)) weights, fc8 Gaussian(0, std),
    biases 0.
    """
    biases = {layer.name: layer.bias for layer in spec.layers if isinstance(layer, Conv)}
    biases.update(fc6=1.0, fc7=1.0, fc8=0.0)
    named = dict(model.features.named_children()) | dict(model.classifier.named_children())
    with torch.no_grad():
        for name, bias in biases.items():
            weight = named[name].weight
            msra = spec.init == "msra" and name != "fc8"
            weight.normal_(0.0, (2.0 / weight[0].numel()) ** 0.5 if msra else std)
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
