"""An `SPPNet` as an ONNX graph, written from its layer table and weights (not traced).

Tracing cannot export SPP: the bins depend on the input size, which a tracer freezes or loses. Writing the graph
from the same table the PyTorch model is built from keeps one definition: conv trunk -> SPP (static, decomposed or
plugin form, `onnx_spp`) -> fc6/fc7/fc8 (dropout is the identity at inference). Input `image` (N, 3, H, W) float32
BGR as the run's preprocessing makes it; output `logits` (N, classes) float32. An fp16 graph is strongly typed:
it casts the input to fp16 once, holds fp16 weights, computes LRN in fp32 (x^2 overflows fp16 above 256, which
Caffe-scale activations reach) and casts the logits back to fp32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from sppnet.core.errors import InvalidInput
from sppnet.core.layers import caffe_pool_windows
from sppnet.core.models import SPPNet, head_of, module_name
from sppnet.core.networks import LRN, Conv, Dropout, HeadSpec, InnerProduct, Pool, ReLU, feature_sizes
from sppnet.export.onnx_builder import GraphBuilder
from sppnet.export.onnx_spp import decomposed_spp, plugin_spp, static_spp

SPP_FORMS = ("static", "decomposed", "plugin")
INPUT, OUTPUT = "image", "logits"


def model_to_onnx(
    model: SPPNet, *, precision: str = "fp32", size: tuple[int, int] | None = None, spp_form: str = "static"
) -> onnx.ModelProto:
    """The model as ONNX: at a fixed (H, W) with `spp_form="static"`, or H and W symbolic with the SPP `spp_form`
    "decomposed" (standard ops) or "plugin" (the custom node). The batch dimension is always symbolic.
    """
    if spp_form not in SPP_FORMS:
        raise InvalidInput(f"SPP form {spp_form!r} is not one of {', '.join(SPP_FORMS)}")
    if (size is None) != (spp_form != "static"):
        raise InvalidInput("a fixed size goes with the static SPP form; the dynamic forms take no size")
    config, spec = model.config, model.spec
    if not config.spp and size is None:
        raise InvalidInput(f"the no-SPP {spec.name} takes one input size only: export it at a fixed scale")
    if size is not None:
        _, conv5_h, conv5_w = feature_sizes(spec, *size)[-1]  # ValueError if the scale is too small
    else:
        check_dynamic(model)
    weights = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}

    g = GraphBuilder(precision)
    x = INPUT if precision == "fp32" else g.node("Cast", [INPUT], to=g.onnx_dtype)
    x, map_size = _features(g, model, weights, x, size)
    if not config.spp:
        x = g.node("Flatten", [_pool(g, spec.baseline_pool, x, map_size, "pool5")[0]], axis=1)
    elif spp_form == "static":
        x = static_spp(g, x, conv5_h, conv5_w, config.levels, config.rule)
    elif spp_form == "decomposed":
        x = decomposed_spp(g, x, config.levels, config.rule)
    else:
        x = plugin_spp(g, x, config.levels, config.rule)
        width = spec.conv5_channels * sum(n * n for n in config.levels)
        g.annotate(x, g.onnx_dtype, ["batch", width])
    x = _classifier(g, model, weights, x, last=OUTPUT if precision == "fp32" else None)
    if precision != "fp32":
        x = g.node("Cast", [x], to=TensorProto.FLOAT, name=OUTPUT)

    height, width = size if size is not None else ("height", "width")
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, height, width])]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", config.num_classes])]
    where = f"{height}x{width}" if size is not None else "any size"
    doc = f"sppnet {spec.name}, {where}, SPP {spp_form} levels {list(config.levels)} rule {config.rule}, {precision}"
    return g.model(f"{spec.name}_{spp_form}_{precision}", inputs, outputs, doc)


def check_dynamic(model: SPPNet) -> None:
    """Refuse, naming the layer and the fix, what a graph with symbolic H and W cannot write exactly."""
    for layer in model.spec.layers:
        if not isinstance(layer, Pool) or layer.simple or layer.global_pooling or layer.pad == 0:
            continue
        # With pad <= kernel - stride, Caffe's last-window clip never fires, and ONNX's ceil mode gives its count.
        if layer.method == "ave" or layer.pad > layer.kernel - layer.stride:
            what = "AVE pooling with padding" if layer.method == "ave" else "its last-window clip"
            raise InvalidInput(
                f"pool {layer.name or '(unnamed)'} (k{layer.kernel} s{layer.stride} p{layer.pad}): {what} depends "
                "on the input size, which a dynamic ONNX graph does not express: export fixed sizes only "
                "(--no-dynamic)"
            )


def _features(
    g: GraphBuilder, model: SPPNet, weights: dict[str, np.ndarray], x: str, size: tuple[int, int] | None
) -> tuple[str, tuple[int, int] | None]:
    """The conv trunk in the layer table's order; returns its output and, for a fixed input size, the map's."""
    stage = 0
    for layer in model.spec.layers:
        if isinstance(layer, Conv):
            stage += 1
            key = f"features.{module_name(layer.name)}"
            inputs = [x, g.weight(f"{layer.name}.weight", weights[f"{key}.weight"])]
            if layer.bias_term:
                inputs.append(g.weight(f"{layer.name}.bias", weights[f"{key}.bias"]))
            x = g.node(
                "Conv",
                inputs,
                name=layer.name,
                kernel_shape=[layer.kernel] * 2,
                strides=[layer.stride] * 2,
                pads=[layer.pad] * 4,
                group=layer.group,
            )
            if layer.relu is not None:
                x = _relu(g, x, layer.relu, f"relu{stage}")
            if size is not None:
                size = (layer.out_size(size[0]), layer.out_size(size[1]))
        elif isinstance(layer, Pool):
            x, size = _pool(g, layer, x, size, layer.name or f"pool{stage}")
        elif isinstance(layer, LRN):
            x = _lrn(g, layer, x, layer.name or f"norm{stage}")
        else:
            x = _relu(g, x, layer.negative_slope, layer.name)
    return x, size


def _relu(g: GraphBuilder, x: str, negative_slope: float, name: str) -> str:
    if negative_slope == 0:
        return g.node("Relu", [x], name=name)
    return g.node("LeakyRelu", [x], name=name, alpha=negative_slope)


def _pool(
    g: GraphBuilder, layer: Pool, x: str, size: tuple[int, int] | None, name: str
) -> tuple[str, tuple[int, int] | None]:
    """Caffe pooling as ONNX, exact: its windows and, for AVE, its divisor (see `CaffePool2d`)."""
    k, s, p = layer.kernel, layer.stride, layer.pad
    if layer.global_pooling:
        op = "GlobalMaxPool" if layer.method == "max" else "GlobalAveragePool"
        return g.node(op, [x], name=name), (1, 1) if size else None
    out = (layer.out_size(size[0]), layer.out_size(size[1])) if size is not None else None
    if layer.simple or size is None:
        # pad 0 and stride <= kernel (or, dynamic, pad <= kernel - stride: `check_dynamic`): ONNX's ceil mode
        # counts Caffe's windows and clips them to the map; AVE without padding divides by the cells inside.
        op = "MaxPool" if layer.method == "max" else "AveragePool"
        extra = {} if layer.method == "max" else {"count_include_pad": 0}
        extra |= {"pads": [p] * 4} if p else {}
        pooled = g.node(op, [x], name=name, kernel_shape=[k, k], strides=[s, s], ceil_mode=1, **extra)
        return pooled, out
    rows, cols = caffe_pool_windows(size[0], k, s, p), caffe_pool_windows(size[1], k, s, p)
    after = [(len(rows) - 1) * s + k - size[0] - p, (len(cols) - 1) * s + k - size[1] - p]
    if layer.method == "max":  # explicit pads, floor rounding: exactly Caffe's windows; padded cells never win
        return g.node("MaxPool", [x], name=name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, *after]), out
    padded = g.node("Pad", [x, g.const(np.array([0, 0, p, p, 0, 0, *after], np.int64), "pads")])
    mean = g.node("AveragePool", [padded], kernel_shape=[k, k], strides=[s, s])  # the window sum / (k * k)
    counts = np.outer([e - b for b, e in rows], [e - b for b, e in cols])
    if (counts == k * k).all():
        return g.node("Identity", [mean], name=name), out
    return g.node("Mul", [mean, g.weight(f"{name}.divisor", (k * k / counts)[None, None])], name=name), out


def _lrn(g: GraphBuilder, layer: LRN, x: str, name: str) -> str:
    """Caffe LRN, computed in fp32 whatever the graph's precision."""
    if g.precision != "fp32":
        x = g.node("Cast", [x], to=TensorProto.FLOAT)
    if layer.region == "across":
        # ONNX LRN is Caffe's ACROSS_CHANNELS: x / (bias + alpha/size * sum of squares)^beta, with bias = k.
        y = g.node("LRN", [x], name=name, size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
    else:
        # Caffe WITHIN_CHANNEL: x * (1 + alpha * mean_{k x k}(x^2))^-beta, the mean's divisor counting padding.
        f32 = np.float32
        mean = g.node(
            "AveragePool",
            [g.node("Mul", [x, x])],
            kernel_shape=[layer.size] * 2,
            strides=[1, 1],
            pads=[layer.size // 2] * 4,
            count_include_pad=1,
        )
        scaled = g.node("Mul", [mean, g.const(np.array(layer.alpha, f32), "lrn_alpha")])
        base = g.node("Add", [scaled, g.const(np.array(1.0, f32), "one")])
        y = g.node("Mul", [x, g.node("Pow", [base, g.const(np.array(-layer.beta, f32), "lrn_beta")])], name=name)
    return y if g.precision == "fp32" else g.node("Cast", [y], to=g.onnx_dtype)


def _classifier(g: GraphBuilder, model: SPPNet, weights: dict[str, np.ndarray], x: str, last: str | None) -> str:
    """The head (fc6 -> ReLU -> fc7 -> ReLU -> fc8 for the paper's): Gemm with transposed weights (PyTorch's
    (out, in) layout), ReLUs, and dropout as the identity, or a multiplication by 1 - ratio where the model
    scales it at test time (the SPP-net release's Caffe fork)."""
    head: tuple[HeadSpec, ...] = head_of(model.spec, model.config)
    steps: list[tuple[str, list[str], dict[str, float | int], str]] = []  # (op, extra inputs, attributes, name)
    for layer in head:
        if isinstance(layer, InnerProduct):
            key = f"classifier.{module_name(layer.name)}"
            inputs = [g.weight(f"{layer.name}.weight", weights[f"{key}.weight"])]
            if layer.bias_term:
                inputs.append(g.weight(f"{layer.name}.bias", weights[f"{key}.bias"]))
            steps.append(("Gemm", inputs, {"transB": 1}, layer.name))
        elif isinstance(layer, ReLU):
            op, attrs = ("Relu", {}) if layer.negative_slope == 0 else ("LeakyRelu", {"alpha": layer.negative_slope})
            steps.append((op, [], attrs, layer.name))
        elif isinstance(layer, Dropout) and model.config.dropout_scaling == "test":
            kept = g.weight(f"{layer.name}.kept", np.array(1.0 - layer.ratio, np.float32))
            steps.append(("Mul", [kept], {}, layer.name))
    if not steps:
        steps.append(("Identity", [], {}, "logits"))
    for i, (op, inputs, attrs, name) in enumerate(steps):
        x = g.node(op, [x, *inputs], name=(last or name) if i == len(steps) - 1 else name, **attrs)
    return x


def check_onnx(model: onnx.ModelProto, *, custom_op: bool = False) -> dict[str, Any]:
    """onnx.checker and strict shape inference (shape inference lenient around a custom node); the output shape."""
    onnx.checker.check_model(model)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not custom_op, data_prop=True)
    out = inferred.graph.output[0].type.tensor_type
    dims = [d.dim_param or d.dim_value for d in out.shape.dim]
    return {"output": dims, "elem_type": out.elem_type}
