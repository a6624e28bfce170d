"""The paper's four networks (PAPER.md section 3, paper Table 1) as layer tables, and CPU-sized presets; no torch.

Each network is one `NetworkSpec`: its table of layers (`LayerSpec`s) from input to conv5 + ReLU, its fc width,
training sizes, default preprocessing and the paper's published numbers. `sppnet.core.models` builds the PyTorch
module from it; export and the runtime read the same table for size arithmetic without torch. Departures from the
paper's text are written beside the table that makes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from sppnet.core.bins import DEFAULT_LEVELS
from sppnet.core.caffe_shapes import caffe_pool_size, conv_size
from sppnet.core.errors import InvalidInput
from sppnet.core.preprocess import Preprocess


@dataclass(frozen=True)
class Conv:
    """Convolution (Caffe init: Gaussian weights, constant `bias`) followed by a ReLU of slope `relu`.

    `relu` None: no ReLU here (an imported net writes its ReLUs as layers of their own). `group` and `bias_term`
    are Caffe's.
    """

    name: str
    channels: int
    kernel: int
    stride: int = 1
    pad: int = 0
    bias: float = 0.0
    group: int = 1
    bias_term: bool = True
    relu: float | None = 0.0

    def out_size(self, a: int) -> int:
        return conv_size(a, self.kernel, self.stride, self.pad)


POOL_METHODS = ("max", "ave")


@dataclass(frozen=True)
class Pool:
    """Caffe pooling (CEIL rounding, its last-window clip, AVE divisor counting padding); `global_pooling` pools
    the whole map to 1x1 whatever kernel and stride say. An empty name is "pool<stage>" in the model."""

    kernel: int
    stride: int
    pad: int = 0
    method: str = "max"
    global_pooling: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if self.method not in POOL_METHODS:
            raise InvalidInput(f"pooling method {self.method!r} is not one of {', '.join(POOL_METHODS)}")
        if not self.global_pooling and not 0 <= self.pad < self.kernel:
            raise InvalidInput(f"pooling pad {self.pad} must be below the kernel {self.kernel} (Caffe checks it)")
        if not self.global_pooling and not 1 <= self.stride <= self.kernel:
            raise InvalidInput(
                f"pooling stride {self.stride} > kernel {self.kernel}: Caffe's CEIL rounding then emits windows "
                "past the map, which sppnet does not reproduce"
            )

    @property
    def simple(self) -> bool:
        """A MAX pool without padding: torch's and ONNX's ceil-mode max pooling as they are."""
        return self.method == "max" and self.pad == 0 and not self.global_pooling

    def out_size(self, a: int) -> int:
        return 1 if self.global_pooling else caffe_pool_size(a, self.kernel, self.stride, self.pad)


@dataclass(frozen=True)
class LRN:
    """Caffe LRN: 'within' (WITHIN_CHANNEL, ZF-5) or 'across' (ACROSS_CHANNELS, Krizhevsky's, with Caffe's k)."""

    region: str
    size: int
    alpha: float
    beta: float = 0.75
    k: float = 1.0
    name: str = ""

    def out_size(self, a: int) -> int:
        return a


@dataclass(frozen=True)
class ReLU:
    """A ReLU layer of its own (Caffe's ReLU: negative_slope * x below zero)."""

    name: str
    negative_slope: float = 0.0

    def out_size(self, a: int) -> int:
        return a


@dataclass(frozen=True)
class InnerProduct:
    """A fully connected layer of an imported head; `bias` is the init value (Caffe's constant filler)."""

    name: str
    outputs: int
    bias_term: bool = True
    bias: float = 0.0


@dataclass(frozen=True)
class Dropout:
    """Dropout of an imported head; how it scales is the model's `ModelConfig.dropout_scaling`."""

    name: str
    ratio: float = 0.5


LayerSpec = Conv | Pool | LRN | ReLU
HeadSpec = InnerProduct | ReLU | Dropout
LAYER_TYPES: dict[str, type[LayerSpec]] = {"conv": Conv, "pool": Pool, "lrn": LRN, "relu": ReLU}  # type: ignore[dict-item]
HEAD_TYPES: dict[str, type[HeadSpec]] = {"innerproduct": InnerProduct, "relu": ReLU, "dropout": Dropout}  # type: ignore[dict-item]
ZF_LRN = LRN("within", 3, 5e-5)
KRIZHEVSKY_LRN = LRN("across", 5, 1e-4)


@dataclass(frozen=True)
class PaperResult:
    """The paper's ImageNet 2012 val numbers for one network (PAPER.md section 6).

    Table 2: 10-view top-1 / top-5 error % per variant. Table 3 (ZF-5 and Overfeat-7 only): top-1 error %
    of (1 center crop, full image) for the single- and multi-size SPP networks.
    """

    label: str
    no_spp: tuple[float, float]
    spp_single_size: tuple[float, float]
    spp_multi_size: tuple[float, float]
    crop_vs_full_single: tuple[float, float] | None = None
    crop_vs_full_multi: tuple[float, float] | None = None


@dataclass(frozen=True)
class NetworkSpec:
    """A network: its layer table to conv5, its head, the no-SPP baseline's pool5, sizes and paper numbers.

    `head` None is the paper's fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8 (`fc_width` wide, the
    model's class count out); an imported network lists its own InnerProduct, ReLU and Dropout layers after the
    pyramid, the last InnerProduct giving the logits.
    """

    name: str
    summary: str
    layers: tuple[LayerSpec, ...]
    fc_width: int = 4096
    baseline_pool: Pool = Pool(3, 2)
    input_size: int = 224
    train_sizes: tuple[int, ...] = (224, 180)
    paper: PaperResult | None = None
    preset_of: str | None = None
    init: str = "gaussian"
    input_scale: float = 1.0
    head: tuple[HeadSpec, ...] | None = None

    @property
    def conv5_channels(self) -> int:
        convs = [layer for layer in self.layers if isinstance(layer, Conv)]
        if not convs:
            raise InvalidInput(f"network {self.name!r} has no convolution: sppnet needs at least one")
        return convs[-1].channels

    def default_preprocess(self, sizes: Sequence[int] | None = None, short_side: int | None = None) -> Preprocess:
        """The paper's geometry scaled to the largest training size: crop = max(sizes), short side 256/224 of it
        (PAPER.md section 4), with the network's input scale. `sizes` defaults to the network's training sizes."""
        crop = max(sizes or self.train_sizes)
        return Preprocess(crop=crop, short_side=short_side or math.ceil(crop * 256 / 224), scale=self.input_scale)

    def to_json(self) -> dict[str, Any]:
        """The layer table and head as plain JSON, for a network that travels in `model.json` (an imported one)."""
        record = asdict(self)
        record["layers"] = [_layer_json(layer) for layer in self.layers]
        record["head"] = None if self.head is None else [_layer_json(layer) for layer in self.head]
        record["baseline_pool"] = asdict(self.baseline_pool)
        record["paper"] = None  # published numbers belong to the registered networks only
        return json.loads(json.dumps(record))

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> NetworkSpec:
        """Inverse of `to_json`; an unknown layer type or key is an InvalidInput naming it."""
        try:
            values = dict(record)
            values["layers"] = tuple(_layer_from_json(layer, LAYER_TYPES) for layer in values.pop("layers"))
            head = values.get("head")
            values["head"] = None if head is None else tuple(_layer_from_json(layer, HEAD_TYPES) for layer in head)
            values["baseline_pool"] = Pool(**values["baseline_pool"])
            values["train_sizes"] = tuple(values["train_sizes"])
            values["paper"] = None
            return cls(**values)
        except (KeyError, TypeError, AttributeError) as e:
            problem = f"{type(e).__name__}: {e}"
            raise InvalidInput(f"the network spec is malformed ({problem}): re-import the model") from None


def _layer_json(layer: LayerSpec | HeadSpec) -> dict[str, Any]:
    return {"type": type(layer).__name__.lower(), **asdict(layer)}


def _layer_from_json(record: dict[str, Any], kinds: dict[str, type]) -> Any:
    kind = kinds.get(record.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise InvalidInput(f"unknown layer type {record.get('type')!r} in a network spec: re-import the model")
    return kind(**{k: v for k, v in record.items() if k != "type"})


def zf5_layers(div: int = 1) -> tuple[LayerSpec, ...]:
    """ZF-5 as in the release prototxt: conv5 is 13x13 at 224 and 10x10 at 180."""
    return (
        Conv("conv1", 96 // div, 7, stride=2, pad=1, bias=0.0),
        ZF_LRN,
        Pool(3, 2),
        Conv("conv2", 256 // div, 5, stride=2, pad=0, bias=1.0),
        ZF_LRN,
        Pool(3, 2),
        Conv("conv3", 384 // div, 3, pad=1, bias=0.0),
        Conv("conv4", 384 // div, 3, pad=1, bias=1.0),
        Conv("conv5", 256 // div, 3, pad=1, bias=1.0),
    )


def convnet5_layers(div: int = 1) -> tuple[LayerSpec, ...]:
    """Convnet*-5: Krizhevsky's net with pooling after conv2 and conv3; pads chosen for 55/27/13 at 224.

    The paper does not say which LRN it uses: Krizhevsky's across-channel one (size 5, alpha 1e-4) here.
    """
    return (
        Conv("conv1", 96 // div, 11, stride=4, pad=2, bias=0.0),
        KRIZHEVSKY_LRN,
        Conv("conv2", 256 // div, 5, pad=2, bias=1.0),
        KRIZHEVSKY_LRN,
        Pool(3, 2),
        Conv("conv3", 384 // div, 3, pad=1, bias=0.0),
        Pool(3, 2),
        Conv("conv4", 384 // div, 3, pad=1, bias=1.0),
        Conv("conv5", 256 // div, 3, pad=1, bias=1.0),
    )


def overfeat_layers(depth: int, div: int = 1) -> tuple[LayerSpec, ...]:
    """Overfeat-5/7: conv3.. are 512 3x3; 18x18 from conv2 on at 224.

    Caffe's CEIL pool1 (3x3 s3) turns conv1's 109 into 37, not the paper's 36 (that needs floor mode); conv2's
    pad 1 brings it back to 35, and pool2 to the paper's 18. LRN as in Convnet*-5 (across channels).
    """
    convs = tuple(Conv(f"conv{i}", 512 // div, 3, pad=1, bias=1.0 if i > 3 else 0.0) for i in range(3, depth + 1))
    return (
        Conv("conv1", 96 // div, 7, stride=2, pad=0, bias=0.0),
        Pool(3, 3),
        KRIZHEVSKY_LRN,
        Conv("conv2", 256 // div, 5, pad=1, bias=1.0),
        Pool(2, 2),
        *convs,
    )


# CPU presets: the same layer tables with 1/8 of the channels, fc 512, at half the paper's input sizes
# (112 and 90 instead of 224 and 180), for the built-in data on a CPU. At 1/8 width the paper's Gaussian(0.01)
# init shrinks the signal about 5x per layer and training stays at chance (measured), so the presets use Caffe's
# MSRA filler (He et al. 2015) with zero biases and inputs scaled to about unit variance (Caffe's transform scale).
CPU_INIT = "msra"
CPU_INPUT_SCALE = 1 / 64
CPU_DIV = 8
CPU_FC = 512
CPU_SIZES = (112, 90)

NETWORKS: dict[str, NetworkSpec] = {}


def register(spec: NetworkSpec) -> NetworkSpec:
    """Add a network to the registry; a name may be registered once."""
    if spec.name in NETWORKS:
        raise InvalidInput(f"network {spec.name!r} is already registered")
    NETWORKS[spec.name] = spec
    return spec


def _register_with_cpu_preset(spec: NetworkSpec, cpu_layers: tuple[LayerSpec, ...]) -> None:
    register(spec)
    register(
        replace(
            spec,
            name=f"{spec.name}_cpu",
            layers=cpu_layers,
            fc_width=CPU_FC,
            input_size=CPU_SIZES[0],
            train_sizes=CPU_SIZES,
            paper=None,
            preset_of=spec.name,
            init=CPU_INIT,
            input_scale=CPU_INPUT_SCALE,
            summary=f"CPU preset of {spec.name}: its layers with 1/{CPU_DIV} of the channels, "
            f"fc {CPU_FC}, inputs {CPU_SIZES[0]}/{CPU_SIZES[1]}",
        )
    )


_register_with_cpu_preset(
    NetworkSpec(
        "zf5",
        "ZF-5 (Zeiler-Fergus, the release's SPP-net): 5 conv, within-channel LRN, conv5 256 x 13x13 at 224",
        zf5_layers(),
        paper=PaperResult(
            "ZF-5", (35.99, 14.76), (34.98, 14.14), (34.60, 13.64), (38.01, 37.55), (37.57, 37.07)
        ),
    ),
    zf5_layers(CPU_DIV),
)
_register_with_cpu_preset(
    NetworkSpec(
        "convnet5",
        "Convnet*-5 (Krizhevsky's net, pooling after conv2 and conv3): conv5 256 x 13x13 at 224",
        convnet5_layers(),
        paper=PaperResult("Convnet*-5", (34.93, 13.92), (34.38, 13.54), (33.94, 13.33)),
    ),
    convnet5_layers(CPU_DIV),
)
_register_with_cpu_preset(
    NetworkSpec(
        "overfeat5",
        "Overfeat-5: 5 conv, conv3..conv5 512, conv5 512 x 18x18 at 224",
        overfeat_layers(5),
        baseline_pool=Pool(3, 3),
        paper=PaperResult("Overfeat-5", (34.13, 13.52), (32.87, 12.80), (32.26, 12.33)),
    ),
    overfeat_layers(5, CPU_DIV),
)
_register_with_cpu_preset(
    NetworkSpec(
        "overfeat7",
        "Overfeat-7: 7 conv, conv3..conv7 512, conv7 512 x 18x18 at 224",
        overfeat_layers(7),
        baseline_pool=Pool(3, 3),
        paper=PaperResult(
            "Overfeat-7", (32.01, 11.97), (30.36, 11.12), (29.68, 10.95), (33.18, 32.72), (32.57, 31.25)
        ),
    ),
    overfeat_layers(7, CPU_DIV),
)


def get_network(name: str) -> NetworkSpec:
    """The registered network called `name`, or a ValueError listing the choices."""
    if name not in NETWORKS:
        raise InvalidInput(f"unknown network {name!r}: choose one of {', '.join(NETWORKS)}")
    return NETWORKS[name]


def _extent(layer: Conv | Pool) -> int:
    """The smallest input length this layer maps to a non-empty output (Caffe pooling wants the padded map to
    hold a kernel, as the table's convolutions do)."""
    if isinstance(layer, Pool) and layer.global_pooling:
        return 1
    return max(layer.kernel - 2 * layer.pad, 1)


def _sized(spec: NetworkSpec) -> list[tuple[str, Conv | Pool]]:
    """The layers that change the map size, with the names the model gives them (convs and pools)."""
    named: list[tuple[str, Conv | Pool]] = []
    stage = 0
    for layer in spec.layers:
        if isinstance(layer, Conv):
            stage += 1
            named.append((layer.name, layer))
        elif isinstance(layer, Pool):
            named.append((layer.name or f"pool{stage}", layer))
    return named


def feature_sizes(spec: NetworkSpec, height: int, width: int) -> list[tuple[str, int, int]]:
    """(layer, H, W) after each conv and pool for an input of height x width; ValueError if a map empties."""
    sizes: list[tuple[str, int, int]] = []
    h, w = height, width
    for name, layer in _sized(spec):
        if min(h, w) < _extent(layer):
            smallest = min_input_size(spec)
            raise InvalidInput(
                f"input {height}x{width} is too small for {spec.name}: {name} (kernel {layer.kernel}) would see a "
                f"{h}x{w} map; give at least {smallest}x{smallest} pixels"
            )
        h, w = layer.out_size(h), layer.out_size(w)
        sizes.append((name, h, w))
    return sizes


def geometry(spec: NetworkSpec) -> list[tuple[str, int, int, int]]:
    """The conv and pool layers as ("conv" | "pool", kernel, stride, pad), for torch-free size arithmetic.

    A global pooling is ("pool", 0, 1, 0): `caffe_shapes.feature_map_size` maps any size to 1 there.
    """
    rows = []
    for _, layer in _sized(spec):
        if isinstance(layer, Pool) and layer.global_pooling:
            rows.append(("pool", 0, 1, 0))
        else:
            rows.append(("conv" if isinstance(layer, Conv) else "pool", layer.kernel, layer.stride, layer.pad))
    return rows


def feature_stride(spec: NetworkSpec) -> int:
    """Input pixels per conv5 cell: the product of every conv and pool stride (16 for ZF-5 and Convnet*-5)."""
    stride = 1
    for _, layer in _sized(spec):
        if not (isinstance(layer, Pool) and layer.global_pooling):
            stride *= layer.stride
    return stride


def min_input_size(spec: NetworkSpec) -> int:
    """The smallest square input for which every layer of the network has a non-empty output."""
    a = 1
    while not _fits(spec, a):
        a += 1
    return a


def _fits(spec: NetworkSpec, a: int) -> bool:
    for _, layer in _sized(spec):
        if a < _extent(layer):
            return False
        a = layer.out_size(a)
    return True


DROPOUT_SCALINGS = ("train", "test")


@dataclass(frozen=True)
class ModelConfig:
    """What `build_model` makes; the defaults are the paper's."""

    name: str = "zf5"
    spp: bool = True
    num_classes: int = 1000
    levels: tuple[int, ...] = DEFAULT_LEVELS
    rule: str = "adaptive"
    dropout: float = 0.5
    init_std: float = 0.01
    input_size: int | None = None  # the no-SPP baseline's one input size (its fc6 depends on it); default the spec's
    # "train": dropout scales by 1 / (1 - ratio) while training and is the identity at test (BVLC Caffe, PyTorch);
    # "test": training keeps x * mask and testing multiplies by 1 - ratio (the SPP-net release's Caffe fork).
    dropout_scaling: str = "train"

    def __post_init__(self) -> None:
        if self.dropout_scaling not in DROPOUT_SCALINGS:
            raise InvalidInput(
                f"dropout_scaling {self.dropout_scaling!r} is not one of {', '.join(DROPOUT_SCALINGS)}"
            )


