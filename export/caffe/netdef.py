"""A Caffe net definition in any of its layouts, read into one form: inputs, then layers with typed parameters.

Layouts: V2 (`layer { type: "Convolution" convolution_param {...} }`), V1 (`layers { type: CONVOLUTION ... }`),
V0 (`layers { layer { type: "conv" num_output: ... kernelsize: ... } bottom: top: }`) and the SPP-net release's
V0 hybrid (`layers { layer { type: "conv" conv_param {...} } ... }`, written for its Caffe fork). Inputs come from
`input` + `input_dim` / `input_shape` or from an Input layer. Layers a TEST net would leave out (`include` /
`exclude` rules on the phase) are dropped, as Caffe drops them. Only the parameters sppnet can map are read;
a field that is unknown, or known but changing what a layer computes in a way sppnet does not reproduce, is an
error naming the file, line and column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.errors import BadData, InvalidInput
from sppnet.export.caffe.prototxt import Field, Message, Scalar, parse_prototxt
from sppnet.export.caffe.schema import ENUMS

Format = str  # "V2", "V1", "V0", "V0-release"

V1_TYPES = {
    "CONVOLUTION": "Convolution", "POOLING": "Pooling", "LRN": "LRN", "RELU": "ReLU",
    "INNER_PRODUCT": "InnerProduct", "DROPOUT": "Dropout", "FLATTEN": "Flatten", "CONCAT": "Concat",
    "SOFTMAX": "Softmax", "POWER": "Power", "DATA": "Data", "IMAGE_DATA": "ImageData", "ACCURACY": "Accuracy",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "ELTWISE": "Eltwise", "TANH": "TanH",
    "SIGMOID": "Sigmoid", "DECONVOLUTION": "Deconvolution", "MEMORY_DATA": "MemoryData", "WINDOW_DATA": "WindowData",
}  # fmt: skip
V0_TYPES = {
    "conv": "Convolution", "pool": "Pooling", "lrn": "LRN", "relu": "ReLU", "innerproduct": "InnerProduct",
    "inner_product": "InnerProduct", "dropout": "Dropout", "flatten": "Flatten", "concat": "Concat",
    "softmax": "Softmax",
}  # fmt: skip
# The release fork's names of the parameter messages, and V2's.
PARAM_FIELDS = {
    "Convolution": ("convolution_param", "conv_param"),
    "Pooling": ("pooling_param", "pool_param"),
    "LRN": ("lrn_param",),
    "ReLU": ("relu_param",),
    "InnerProduct": ("inner_product_param",),
    "Dropout": ("dropout_param",),
    "Flatten": ("flatten_param",),
    "Concat": ("concat_param",),
    "SPP": ("spp_param",),
    "Softmax": ("softmax_param",),
    "Power": ("power_param",),
    "Input": ("input_param",),
}
HARMLESS = {"weight_filler", "bias_filler", "engine", "force_nd_im2col"}
NET_FIELDS = {"name", "input", "input_shape", "input_dim", "force_backward", "state", "debug_info", "layer", "layers"}
V2_LAYER_FIELDS = {
    "name", "type", "bottom", "top", "phase", "loss_weight", "param", "blobs", "propagate_down", "include",
    "exclude",
}  # fmt: skip
V1_LAYER_FIELDS = {
    "bottom", "top", "name", "include", "exclude", "type", "blobs", "param", "blob_share_mode", "blobs_lr",
    "weight_decay", "loss_weight", "layer",
}  # fmt: skip
V0_LAYER_FIELDS = {
    "name", "type", "num_output", "biasterm", "weight_filler", "bias_filler", "pad", "kernelsize", "group",
    "stride", "pool", "dropout_ratio", "local_size", "alpha", "beta", "k", "source", "scale", "meanfile",
    "batchsize", "cropsize", "mirror", "blobs", "blobs_lr", "weight_decay", "rand_skip", "det_fg_threshold",
    "det_bg_threshold", "det_fg_fraction", "det_context_pad", "det_crop_mode", "new_num", "new_channels",
    "new_height", "new_width", "shuffle_images", "concat_dim", "hdf5_output_param",
}  # fmt: skip


@dataclass(frozen=True)
class ConvParams:
    num_output: int
    kernel: int
    stride: int
    pad: int
    group: int
    bias_term: bool
    bias_value: float


@dataclass(frozen=True)
class PoolParams:
    method: str  # "max" | "ave"
    kernel: int
    stride: int
    pad: int
    global_pooling: bool


@dataclass(frozen=True)
class LRNParams:
    size: int
    alpha: float
    beta: float
    region: str  # "across" | "within"
    k: float


@dataclass(frozen=True)
class ReLUParams:
    negative_slope: float


@dataclass(frozen=True)
class InnerProductParams:
    num_output: int
    bias_term: bool
    transpose: bool
    bias_value: float


@dataclass(frozen=True)
class DropoutParams:
    ratio: float


@dataclass(frozen=True)
class SPPParams:
    pyramid_height: int


@dataclass(frozen=True)
class PowerParams:
    power: float
    scale: float
    shift: float


@dataclass(frozen=True)
class LayerDef:
    """One layer: Caffe's V2 type name (or the file's own spelling of a type sppnet does not map)."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Any
    where: str

    @property
    def label(self) -> str:
        return f"layer {self.name!r} ({self.type}, {self.where})"


@dataclass(frozen=True)
class NetDef:
    """A net definition read from a prototxt: its inputs (name, (N, C, H, W) or None) and layers in order."""

    name: str
    format: Format
    inputs: tuple[tuple[str, tuple[int, ...] | None], ...]
    layers: tuple[LayerDef, ...]
    source: str


class _Reader:
    """Typed, checked access to one message of the tree; errors name the file, position and layer."""

    def __init__(self, message: Message, source: str, what: str, known: set[str], params_ok: bool = False) -> None:
        self.message, self.source, self.what = message, source, what
        for item in message.fields:
            if item.name not in known and not (params_ok and item.name.endswith("_param")):
                self.fail(item, f"has an unknown field {item.name!r}: remove it (sppnet reads it as BVLC Caffe "
                          "defines it)")

    def fail(self, item: Field | Message, problem: str) -> BadData:
        raise BadData(f"{self.source}:{item.line}:{item.column}: {self.what} {problem}")

    def scalar(self, name: str) -> tuple[Field, Scalar] | None:
        item = self.message.last(name)
        if item is None:
            return None
        if not isinstance(item.value, Scalar):
            self.fail(item, f"field {name!r} must be a value, not a message")
        return item, item.value  # type: ignore[return-value]

    def integer(self, name: str, default: int, low: int = 0) -> int:
        return self._int_of(self.scalar(name), name, default, low)

    def _int_of(self, found: tuple[Field, Scalar] | None, name: str, default: int, low: int) -> int:
        if found is None:
            return default
        item, value = found
        try:
            number = int(value.text, 16 if value.text.lower().lstrip("+-").startswith("0x") else 10)
        except ValueError:
            number = None
        if number is None or number < low:
            self.fail(item, f"field {name!r} must be an integer >= {low}; got {value.text!r}")
        return number  # type: ignore[return-value]

    def integers(self, name: str, low: int = 0) -> list[int]:
        items = self.message.all(name)
        return [self._int_of((item, item.value), name, 0, low) for item in items if isinstance(item.value, Scalar)]

    def real(self, name: str, default: float) -> float:
        found = self.scalar(name)
        if found is None:
            return default
        item, value = found
        text = value.text
        try:
            if value.kind == "number":
                return float(int(text, 16)) if text.lower().lstrip("+-").startswith("0x") else float(text.rstrip("fF"))
            if value.kind == "ident" and text.lower().lstrip("-") in ("inf", "infinity", "nan"):
                return float(text)
        except ValueError:
            pass
        self.fail(item, f"field {name!r} must be a number; got {value.text!r}")
        return default

    def boolean(self, name: str, default: bool) -> bool:
        found = self.scalar(name)
        if found is None:
            return default
        item, value = found
        if value.text in ("true", "True", "t", "1"):
            return True
        if value.text in ("false", "False", "f", "0"):
            return False
        self.fail(item, f"field {name!r} must be true or false; got {value.text!r}")
        return default

    def enum(self, name: str, values: dict[str, int], default: str) -> str:
        found = self.scalar(name)
        if found is None:
            return default
        item, value = found
        if value.kind == "ident" and value.text in values:
            return value.text
        if value.kind == "number":
            by_number = {number: key for key, number in values.items()}
            if value.text.isdigit() and int(value.text) in by_number:
                return by_number[int(value.text)]
        self.fail(item, f"field {name!r} must be one of {', '.join(values)}; got {value.text!r}")
        return default

    def text(self, name: str, default: str = "") -> str:
        found = self.scalar(name)
        if found is None:
            return default
        item, value = found
        if value.kind != "string":
            self.fail(item, f"field {name!r} must be a quoted string; got {value.text}")
        return value.text

    def texts(self, name: str) -> list[str]:
        out = []
        for item in self.message.all(name):
            if not isinstance(item.value, Scalar) or item.value.kind != "string":
                self.fail(item, f"field {name!r} must be a quoted string")
            out.append(item.value.text)  # type: ignore[union-attr]
        return out

    def sub(self, name: str) -> Message | None:
        item = self.message.last(name)
        if item is None:
            return None
        if not isinstance(item.value, Message):
            self.fail(item, f"field {name!r} must be a message {{ ... }}")
        return item.value  # type: ignore[return-value]

    def square(self, names: tuple[str, str, str], default: int | None, low: int, repeated: bool = False) -> int:
        """One value for both axes: `name`, or equal `name_h` and `name_w`; non-square values are refused."""
        name, name_h, name_w = names
        values = self.integers(name, low) if repeated else [v for v in [self.integer(name, -1, low)] if v >= 0]
        h, w = self.integer(name_h, -1, low), self.integer(name_w, -1, low)
        if h >= 0 or w >= 0:
            values += [h if h >= 0 else (values[0] if values else default or 0)]
            values += [w if w >= 0 else (values[0] if values else default or 0)]
        if not values:
            if default is None:
                self.fail(self.message, f"needs {name}")
            return default  # type: ignore[return-value]
        if len(set(values)) != 1:
            self.fail(self.message, f"has a non-square {name} {values}: sppnet reproduces square ones only")
        return values[0]


def _phase_keeps(reader: _Reader) -> bool:
    """Whether a TEST-phase net (level 0, no stages) keeps the layer, by its include/exclude rules."""

    def meets(rule: Message) -> bool:
        r = _Reader(rule, reader.source, f"{reader.what} include/exclude rule",
                    {"phase", "min_level", "max_level", "stage", "not_stage"})
        phase = r.enum("phase", {"TRAIN": 0, "TEST": 1}, "TEST")
        if rule.last("phase") is not None and phase != "TEST":
            return False
        if r.integer("min_level", -(2**31), -(2**31)) > 0 or r.integer("max_level", 2**31, -(2**31)) < 0:
            return False
        return not r.texts("stage")

    include = [f.value for f in reader.message.all("include") if isinstance(f.value, Message)]
    exclude = [f.value for f in reader.message.all("exclude") if isinstance(f.value, Message)]
    if include:
        return any(meets(rule) for rule in include)
    return not any(meets(rule) for rule in exclude)


def _params(kind: str, r: _Reader, v0: bool) -> Any:
    """The typed parameters of a layer sppnet maps, read from its parameter message (or V0's flat fields)."""
    needed = {"Convolution": ("num_output", "kernelsize" if v0 else None), "InnerProduct": ("num_output",),
              "Pooling": ("kernelsize" if v0 else None,)}  # fmt: skip
    for name in needed.get(kind, ()):
        if name is not None and r.message.last(name) is None:
            r.fail(r.message, f"needs {name}")
    if kind == "Convolution":
        if v0:
            return ConvParams(
                r.integer("num_output", 0, 1), r.integer("kernelsize", 0, 1), r.integer("stride", 1, 1),
                r.integer("pad", 0), r.integer("group", 1, 1), r.boolean("biasterm", True),
                _constant(r, "bias_filler"),
            )  # fmt: skip
        if r.integers("dilation") and set(r.integers("dilation")) != {1}:
            r.fail(r.message, "has dilation: sppnet reproduces undilated convolutions only")
        if r.integer("axis", 1, -(2**31)) != 1:
            r.fail(r.message, "convolves along an axis other than 1 (channels): not supported")
        return ConvParams(
            r.integer("num_output", 0, 1),
            r.square(("kernel_size", "kernel_h", "kernel_w"), None, 1, repeated=True),
            r.square(("stride", "stride_h", "stride_w"), 1, 1, repeated=True),
            r.square(("pad", "pad_h", "pad_w"), 0, 0, repeated=True),
            r.integer("group", 1, 1),
            r.boolean("bias_term", True),
            _constant(r, "bias_filler"),
        )
    if kind == "Pooling":
        method = r.enum("pool", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}, "MAX")
        if v0:
            kernel, stride, pad = r.integer("kernelsize", 0, 1), r.integer("stride", 1, 1), r.integer("pad", 0)
            global_pooling = False
        else:
            global_pooling = r.boolean("global_pooling", False)
            if r.enum("round_mode", {"CEIL": 0, "FLOOR": 1}, "CEIL") != "CEIL" or not r.boolean("ceil_mode", True):
                r.fail(r.message, "rounds down (FLOOR): sppnet reproduces Caffe's default CEIL rounding only")
            kernel = r.square(("kernel_size", "kernel_h", "kernel_w"), 0 if global_pooling else None, 1)
            stride = r.square(("stride", "stride_h", "stride_w"), 1, 1)
            pad = r.square(("pad", "pad_h", "pad_w"), 0, 0)
        if method == "STOCHASTIC":
            r.fail(r.message, "is STOCHASTIC pooling: sppnet reproduces MAX and AVE only")
        return PoolParams(method.lower(), kernel, stride, pad, global_pooling)
    if kind == "LRN":
        region = "ACROSS_CHANNELS" if v0 else r.enum("norm_region", {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
                                                     "ACROSS_CHANNELS")
        size = r.integer("local_size", 5, 1)
        if size % 2 == 0:
            r.fail(r.message, f"has an even local_size {size}: Caffe's LRN takes odd sizes only")
        return LRNParams(size, r.real("alpha", 1.0), r.real("beta", 0.75),
                         "across" if region == "ACROSS_CHANNELS" else "within", r.real("k", 1.0))
    if kind == "ReLU":
        return ReLUParams(0.0 if v0 else r.real("negative_slope", 0.0))
    if kind == "InnerProduct":
        if v0:
            return InnerProductParams(r.integer("num_output", 0, 1), r.boolean("biasterm", True), False,
                                      _constant(r, "bias_filler"))
        if r.integer("axis", 1, -(2**31)) != 1:
            r.fail(r.message, "multiplies along an axis other than 1: not supported")
        return InnerProductParams(r.integer("num_output", 0, 1), r.boolean("bias_term", True),
                                  r.boolean("transpose", False), _constant(r, "bias_filler"))
    if kind == "Dropout":
        ratio = r.real("dropout_ratio", 0.5)
        if not 0.0 <= ratio < 1.0:
            r.fail(r.message, f"has dropout_ratio {ratio}: it must be in [0, 1)")
        return DropoutParams(ratio)
    if kind == "Concat":
        axis = r.integer("concat_dim", 1) if r.message.last("concat_dim") else r.integer("axis", 1, -(2**31))
        if axis != 1:
            r.fail(r.message, f"concatenates along axis {axis}: sppnet's pyramid concatenates along axis 1")
        return None
    if kind == "Flatten":
        if r.integer("axis", 1, -(2**31)) != 1 or r.integer("end_axis", -1, -(2**31)) not in (-1, 3):
            r.fail(r.message, "flattens other axes than 1 to the end: not supported")
        return None
    if kind == "SPP":
        if r.enum("pool", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}, "MAX") != "MAX":
            r.fail(r.message, "pools other than MAX: sppnet's pyramid is max pooling")
        return SPPParams(r.integer("pyramid_height", 0, 1))
    if kind == "Softmax":
        if r.integer("axis", 1, -(2**31)) != 1:
            r.fail(r.message, "takes the softmax along an axis other than 1: not supported")
        return None
    if kind == "Power":
        return PowerParams(r.real("power", 1.0), r.real("scale", 1.0), r.real("shift", 0.0))
    if kind == "Input":
        shapes = [f.value for f in r.message.all("shape") if isinstance(f.value, Message)]
        dims = [tuple(_Reader(s, r.source, f"{r.what} shape", {"dim"}).integers("dim")) for s in shapes]
        return dims
    return None


PARAM_KNOWN = {
    "Convolution": {"num_output", "bias_term", "pad", "pad_h", "pad_w", "kernel_size", "kernel_h", "kernel_w",
                    "dilation", "stride", "stride_h", "stride_w", "group", "axis"},
    "Pooling": {"pool", "pad", "pad_h", "pad_w", "kernel_size", "kernel_h", "kernel_w", "stride", "stride_h",
                "stride_w", "global_pooling", "round_mode", "ceil_mode"},
    "LRN": {"local_size", "alpha", "beta", "norm_region", "k"},
    "ReLU": {"negative_slope"},
    "InnerProduct": {"num_output", "bias_term", "axis", "transpose"},
    "Dropout": {"dropout_ratio"},
    "Flatten": {"axis", "end_axis"},
    "Concat": {"axis", "concat_dim"},
    "SPP": {"pyramid_height", "pool"},
    "Softmax": {"axis"},
    "Power": {"power", "scale", "shift"},
    "Input": {"shape"},
}  # fmt: skip


def _constant(r: _Reader, name: str) -> float:
    """The value of a constant filler (Caffe's init of a bias), 0 for any other filler."""
    filler = r.sub(name)
    if filler is None:
        return 0.0
    f = _Reader(filler, r.source, f"{r.what} {name}", {"type", "value", "min", "max", "mean", "std", "sparse",
                                                         "variance_norm"})
    return f.real("value", 0.0) if f.text("type", "constant") == "constant" else 0.0


def _layer(item: Field, fmt: Format, source: str) -> LayerDef | None:
    """One layer entry of a net in `fmt`, or None where a TEST net leaves it out."""
    message = item.value
    assert isinstance(message, Message)
    where = f"line {item.line}"
    if fmt == "V2":
        outer = _Reader(message, source, f"the layer at {where}", V2_LAYER_FIELDS, params_ok=True)
        name, written = outer.text("name"), outer.text("type")
        kind, inner, v0 = written, outer, False
    else:
        outer = _Reader(message, source, f"the layer at {where}", V1_LAYER_FIELDS, params_ok=True)
        nested = outer.sub("layer")
        if nested is not None:  # V0: the layer's own message nested in `layer`
            known = V0_LAYER_FIELDS if fmt == "V0" else {"name", "type", "blobs_lr", "weight_decay", "blobs"}
            inner = _Reader(nested, source, f"the layer at {where}", known, params_ok=fmt == "V0-release")
            name, written = inner.text("name"), inner.text("type")
            kind, v0 = V0_TYPES.get(written, written), fmt == "V0"
        else:
            if fmt != "V1":
                outer.fail(message, "mixes V1 `layers` into a V0 net: write every layer in one layout")
            inner, v0 = outer, False
            name = outer.text("name")
            written = outer.enum("type", ENUMS["V1LayerType"], "NONE")
            kind = V1_TYPES.get(written, written)
    if not _phase_keeps(outer):
        return None
    what = f"layer {name!r} ({kind}) at {where}"
    inner.what = outer.what = what
    params = None
    if kind in PARAM_FIELDS:
        if v0:
            params = _params(kind, inner, v0=True)
        else:
            fields = [n for n in PARAM_FIELDS[kind] if inner.message.last(n) is not None]
            message_ = inner.sub(fields[0]) if fields else Message(line=item.line, column=item.column)
            assert message_ is not None
            reader = _Reader(message_, source, f"{what}: {fields[0] if fields else PARAM_FIELDS[kind][0]}",
                             PARAM_KNOWN[kind] | HARMLESS)
            params = _params(kind, reader, v0=False)
    return LayerDef(name, kind, tuple(outer.texts("bottom")), tuple(outer.texts("top")), params, where)


def detect_format(net: Message, source: str) -> Format:
    """V2, V1, V0, or V0-release (the SPP-net release's hybrid: V0 nesting with `*_param` messages)."""
    v2, v1 = net.all("layer"), net.all("layers")
    if v2 and v1:
        raise BadData(f"{source}: the net mixes `layer` (V2) and `layers` (V1/V0) entries: write one layout")
    if v2 or not v1:
        return "V2"
    nested = [f.value.last("layer") for f in v1 if isinstance(f.value, Message)]
    nested_messages = [n.value for n in nested if n is not None and isinstance(n.value, Message)]
    if not nested_messages:
        return "V1"
    if any(name.endswith("_param") for m in nested_messages for name in m.names()):
        return "V0-release"
    return "V0"


def _inputs(net: _Reader, source: str) -> list[tuple[str, tuple[int, ...] | None]]:
    names = net.texts("input")
    shapes = [f.value for f in net.message.all("input_shape") if isinstance(f.value, Message)]
    dims = net.integers("input_dim")
    if shapes:
        found = [tuple(_Reader(s, source, "input_shape", {"dim"}).integers("dim")) for s in shapes]
    elif dims:
        if len(dims) != 4 * len(names):
            raise BadData(f"{source}: {len(dims)} input_dim values for {len(names)} inputs: give 4 (N, C, H, W) each")
        found = [tuple(dims[4 * i : 4 * i + 4]) for i in range(len(names))]
    else:
        found = [None] * len(names)  # type: ignore[list-item]
    if len(found) != len(names):
        raise BadData(f"{source}: {len(names)} inputs but {len(found)} input shapes: give one shape per input")
    return list(zip(names, found, strict=True))


def read_netdef(path: str | os.PathLike[str]) -> NetDef:
    """Parse and read a prototxt; BadData (one line, with position) for a file sppnet cannot read."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read the prototxt {path} ({e}): pass a readable text .prototxt") from None
    return netdef_from_text(text, str(path))


def netdef_from_text(text: str, source: str = "<prototxt>") -> NetDef:
    """`read_netdef` on text already in memory."""
    tree = parse_prototxt(text, source)
    net = _Reader(tree, source, "the net", NET_FIELDS)
    fmt = detect_format(tree, source)
    inputs = _inputs(net, source)
    layers = []
    for item in tree.all("layer" if fmt == "V2" else "layers"):
        if not isinstance(item.value, Message):
            raise BadData(f"{source}:{item.line}:{item.column}: a layer must be a message {{ ... }}")
        layer = _layer(item, fmt, source)
        if layer is None:
            continue
        if layer.type == "Input":
            shapes = layer.params or []
            if len(shapes) not in (1, len(layer.tops)) and layer.tops:
                raise BadData(f"{source}: {layer.label} gives {len(shapes)} shapes for {len(layer.tops)} tops")
            for i, top in enumerate(layer.tops):
                inputs.append((top, shapes[min(i, len(shapes) - 1)] if shapes else None))
            continue
        layers.append(layer)
    return NetDef(net.text("name"), fmt, tuple(inputs), tuple(layers), source)
