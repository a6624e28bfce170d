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

from sppnet.core.models import SPPNet
from sppnet.core.networks import LRN, Conv, Pool, feature_sizes
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
        raise ValueError(f"SPP form {spp_form!r} is not one of {', '.join(SPP_FORMS)}")
    if (size is None) != (spp_form != "static"):
        raise ValueError("a fixed size goes with the static SPP form; the dynamic forms take no size")
    config, spec = model.config, model.spec
    if not config.spp and size is None:
        raise ValueError(f"the no-SPP {spec.name} takes one input size only: export it at a fixed scale")
    if size is not None:
        _, conv5_h, conv5_w = feature_sizes(spec, *size)[-1]  # ValueError if the scale is too small
    weights = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}

    g = GraphBuilder(precision)
    x = INPUT if precision == "fp32" else g.node("Cast", [INPUT], to=g.onnx_dtype)
    x = _features(g, model, weights, x)
    if not config.spp:
        pool = spec.baseline_pool
        x = g.node("MaxPool", [x], kernel_shape=[pool.kernel] * 2, strides=[pool.stride] * 2, ceil_mode=1)
        x = g.node("Flatten", [x], axis=1)
    elif spp_form == "static":
        x = static_spp(g, x, conv5_h, conv5_w, config.levels, config.rule)
    elif spp_form == "decomposed":
        x = decomposed_spp(g, x, config.levels, config.rule)
    else:
        x = plugin_spp(g, x, config.levels, config.rule)
        width = spec.conv5_channels * sum(n * n for n in config.levels)
        g.annotate(x, g.onnx_dtype, ["batch", width])
    x = _classifier(g, weights, x, last=OUTPUT if precision == "fp32" else None)
    if precision != "fp32":
        x = g.node("Cast", [x], to=TensorProto.FLOAT, name=OUTPUT)

    height, width = size if size is not None else ("height", "width")
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, height, width])]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", config.num_classes])]
    where = f"{height}x{width}" if size is not None else "any size"
    doc = f"sppnet {spec.name}, {where}, SPP {spp_form} levels {list(config.levels)} rule {config.rule}, {precision}"
    return g.model(f"{spec.name}_{spp_form}_{precision}", inputs, outputs, doc)


def _features(g: GraphBuilder, model: SPPNet, weights: dict[str, np.ndarray], x: str) -> str:
    """conv1..conv5 with ReLU, Caffe CEIL max pools and LRNs, in the layer table's order."""
    stage = 0
    for layer in model.spec.layers:
        if isinstance(layer, Conv):
            stage += 1
            w = g.weight(f"{layer.name}.weight", weights[f"features.{layer.name}.weight"])
            b = g.weight(f"{layer.name}.bias", weights[f"features.{layer.name}.bias"])
            x = g.node(
                "Conv",
                [x, w, b],
                name=layer.name,
                kernel_shape=[layer.kernel] * 2,
                strides=[layer.stride] * 2,
                pads=[layer.pad] * 4,
            )
            x = g.node("Relu", [x], name=f"relu{stage}")
        elif isinstance(layer, Pool):
            # stride <= kernel and no padding, so ONNX ceil mode is Caffe's CEIL pooling (see CaffeMaxPool2d)
            x = g.node(
                "MaxPool",
                [x],
                name=f"pool{stage}",
                kernel_shape=[layer.kernel] * 2,
                strides=[layer.stride] * 2,
                ceil_mode=1,
            )
        else:
            x = _lrn(g, layer, x, f"norm{stage}")
    return x


def _lrn(g: GraphBuilder, layer: LRN, x: str, name: str) -> str:
    """Caffe LRN, computed in fp32 whatever the graph's precision."""
    if g.precision != "fp32":
        x = g.node("Cast", [x], to=TensorProto.FLOAT)
    if layer.region == "across":
        # ONNX LRN is Caffe's ACROSS_CHANNELS: x / (bias + alpha/size * sum of squares)^beta, with bias = k = 1.
        y = g.node("LRN", [x], name=name, size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=1.0)
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


def _classifier(g: GraphBuilder, weights: dict[str, np.ndarray], x: str, last: str | None) -> str:
    """fc6 -> ReLU -> fc7 -> ReLU -> fc8 as Gemm with transposed weights (PyTorch's (out, in) layout)."""
    for fc in ("fc6", "fc7", "fc8"):
        w = g.weight(f"{fc}.weight", weights[f"classifier.{fc}.weight"])
        b = g.weight(f"{fc}.bias", weights[f"classifier.{fc}.bias"])
        x = g.node("Gemm", [x, w, b], name=(last or fc) if fc == "fc8" else fc, transB=1)
        if fc != "fc8":
            x = g.node("Relu", [x], name=f"relu{fc[2:]}")
    return x


def check_onnx(model: onnx.ModelProto, *, custom_op: bool = False) -> dict[str, Any]:
    """onnx.checker and strict shape inference (shape inference lenient around a custom node); the output shape."""
    onnx.checker.check_model(model)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not custom_op, data_prop=True)
    out = inferred.graph.output[0].type.tensor_type
    dims = [d.dim_param or d.dim_value for d in out.shape.dim]
    return {"output": dims, "elem_type": out.elem_type}
