"""`sppnet caffe export`: a run as `deploy.prototxt` + `weights.caffemodel` that stock BVLC Caffe loads and runs.

The prototxt is V2 for one input size: an Input layer `data` (1 x 3 x H x W), the trunk (Convolution + in-place
ReLU, Pooling, LRN), the pyramid, and the head (InnerProduct, ReLU, Dropout). The pyramid is BVLC's SPP layer
where the model's rule is `caffe` with levels 1, 2, 4, ... (spp_layer.cpp computes those bins at any size);
otherwise one Pooling layer per level, derived from `spp_bins` at this size, each flattened, joined by a Concat.
A level whose bins are not evenly spaced at this size has no single Pooling layer and is refused, naming sizes
where it has. A model whose dropout scales at test time (the SPP-net release's) gets a Power layer of scale
1 - ratio after each Dropout, which BVLC runs as the identity at test. The output blob is the logits (no Softmax).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from sppnet.core.atomic import write_atomic
from sppnet.core.bins import spp_bins, uniform_pooling
from sppnet.core.errors import InvalidInput
from sppnet.core.layers import caffe_pool_windows
from sppnet.core.models import SPPNet, head_of, module_name
from sppnet.core.networks import LRN, Conv, Dropout, InnerProduct, Pool, ReLU, feature_sizes, min_input_size
from sppnet.core.runs import load_model
from sppnet.export.caffe import schema
from sppnet.export.caffe.caffemodel import write_caffemodel

PROTOTXT, CAFFEMODEL = "deploy.prototxt", "weights.caffemodel"


def caffe_pool_for_bins(a: int, n: int, rule: str) -> tuple[int, int, int] | None:
    """(kernel, stride, pad) of one Caffe Pooling whose windows on an axis of `a` cells are exactly
    `spp_bins(a, n, rule)`, or None where no single pooling gives them."""
    bins = spp_bins(a, n, rule)
    plan = uniform_pooling(a, n, rule)
    if plan is None or plan.pad_before >= plan.kernel or plan.stride > plan.kernel:
        return None
    k, s, p = plan.kernel, plan.stride, plan.pad_before
    windows = [(max(start, 0), min(end, a)) for start, end in caffe_pool_windows(a, k, s, p)]
    return (k, s, p) if windows == bins else None


def _level_pools(
    model: SPPNet, size: tuple[int, int], conv5: tuple[int, int]
) -> list[tuple[int, tuple[int, int, int], tuple[int, int, int]]]:
    """(n, rows (k, s, p), cols (k, s, p)) per level; InvalidInput naming sizes that work where one is uneven."""
    config = model.config
    pools, uneven = [], []
    for n in config.levels:
        rows, cols = caffe_pool_for_bins(conv5[0], n, config.rule), caffe_pool_for_bins(conv5[1], n, config.rule)
        if rows is None or cols is None:
            uneven.append(n)
        else:
            pools.append((n, rows, cols))
    if uneven:
        raise InvalidInput(
            f"at {size[0]}x{size[1]} (conv5 {conv5[0]}x{conv5[1]}) the {config.rule} bins of level(s) "
            f"{', '.join(map(str, uneven))} are not evenly spaced, which no single Caffe Pooling layer writes: "
            f"export at a size where they are ({_suggest(model, size)})"
        )
    return pools


def _suggest(model: SPPNet, size: tuple[int, int]) -> str:
    smallest = min_input_size(model.spec)
    found = []
    for delta in range(1, 257):
        for s in (size[0] - delta, size[0] + delta):
            if s < smallest:
                continue
            _, h, w = feature_sizes(model.spec, s, s)[-1]
            try:
                ok = all(caffe_pool_for_bins(a, n, model.config.rule) for n in model.config.levels for a in (h, w))
            except ValueError:
                ok = False
            if ok and s not in found:
                found.append(s)
        if len(found) >= 3:
            break
    return "e.g. --size " + ", ".join(f"{s}x{s}" for s in sorted(found)) if found else "none found nearby"


class _Net:
    """The net being written: layer messages in order, each with the arrays of its blobs."""

    def __init__(self, name: str) -> None:
        self.proto = schema.NetParameter(name=name)
        self.blobs: list[tuple[Any, list[np.ndarray]]] = []

    def add(self, name: str, kind: str, bottoms: list[str], top: str, arrays: list[np.ndarray] | None = None) -> Any:
        layer = self.proto.layer.add(name=name, type=kind, bottom=bottoms, top=[top])
        if arrays:
            self.blobs.append((layer, arrays))
        return layer


def _trunk(net: _Net, model: SPPNet, weights: dict[str, np.ndarray], x: str) -> str:
    stage = 0
    # A convolution's own ReLU is "relu<stage>" as in the release, unless a named layer (Overfeat-7's head has
    # relu6 and relu7) already holds that name: Caffe matches weights by name, so every name is kept unique.
    taken = {layer.name for layer in (*model.spec.layers, *head_of(model.spec, model.config)) if layer.name}
    for layer in model.spec.layers:
        if isinstance(layer, Conv):
            stage += 1
            key = f"features.{module_name(layer.name)}"
            arrays = [weights[f"{key}.weight"]] + ([weights[f"{key}.bias"]] if layer.bias_term else [])
            conv = net.add(layer.name, "Convolution", [x], layer.name, arrays).convolution_param
            conv.num_output, conv.group = layer.channels, layer.group
            conv.kernel_size.append(layer.kernel)
            conv.stride.append(layer.stride)
            conv.pad.append(layer.pad)
            if not layer.bias_term:
                conv.bias_term = False
            x = layer.name
            if layer.relu is not None:
                name = f"relu{stage}" if f"relu{stage}" not in taken else f"{layer.name}_relu"
                relu = net.add(name, "ReLU", [x], x)
                if layer.relu:
                    relu.relu_param.negative_slope = layer.relu
        elif isinstance(layer, Pool):
            name = layer.name or f"pool{stage}"
            _pool(net.add(name, "Pooling", [x], name).pooling_param, layer)
            x = name
        elif isinstance(layer, LRN):
            name = layer.name or f"norm{stage}"
            lrn = net.add(name, "LRN", [x], name).lrn_param
            lrn.local_size, lrn.alpha, lrn.beta, lrn.k = layer.size, layer.alpha, layer.beta, layer.k
            lrn.norm_region = 1 if layer.region == "within" else 0
            x = name
        else:
            relu = net.add(layer.name, "ReLU", [x], x)
            if layer.negative_slope:
                relu.relu_param.negative_slope = layer.negative_slope
    return x


def _pool(param: Any, layer: Pool) -> None:
    param.pool = 0 if layer.method == "max" else 1
    if layer.global_pooling:
        param.global_pooling = True
        return
    param.kernel_size, param.stride = layer.kernel, layer.stride
    if layer.pad:
        param.pad = layer.pad


def _pyramid(net: _Net, model: SPPNet, x: str, size: tuple[int, int], conv5: tuple[int, int]) -> str:
    config = model.config
    if not config.spp:
        pool = model.spec.baseline_pool
        _pool(net.add("pool5", "Pooling", [x], "pool5").pooling_param, pool)
        return net.add("pool5_flatten", "Flatten", ["pool5"], "pool5_flatten").top[0]
    if config.rule == "caffe" and config.levels == tuple(2**i for i in range(len(config.levels))):
        spp = net.add("spp", "SPP", [x], "spp").spp_param
        spp.pyramid_height, spp.pool = len(config.levels), 0
        return "spp"
    flats = []
    for n, rows, cols in _level_pools(model, size, conv5):
        name = f"spp_level{n}"
        pool = net.add(name, "Pooling", [x], name).pooling_param
        pool.pool = 0
        if rows == cols:
            pool.kernel_size, pool.stride = rows[0], rows[1]
            if rows[2]:
                pool.pad = rows[2]
        else:
            pool.kernel_h, pool.kernel_w, pool.stride_h, pool.stride_w = rows[0], cols[0], rows[1], cols[1]
            if rows[2] or cols[2]:
                pool.pad_h, pool.pad_w = rows[2], cols[2]
        flats.append(net.add(f"{name}_flatten", "Flatten", [name], f"{name}_flatten").top[0])
    if len(flats) == 1:
        return flats[0]
    net.add("spp", "Concat", flats, "spp").concat_param.axis = 1
    return "spp"


def _head(net: _Net, model: SPPNet, weights: dict[str, np.ndarray], x: str) -> str:
    for layer in head_of(model.spec, model.config):
        if isinstance(layer, InnerProduct):
            key = f"classifier.{module_name(layer.name)}"
            arrays = [weights[f"{key}.weight"]] + ([weights[f"{key}.bias"]] if layer.bias_term else [])
            fc = net.add(layer.name, "InnerProduct", [x], layer.name, arrays).inner_product_param
            fc.num_output = layer.outputs
            if not layer.bias_term:
                fc.bias_term = False
            x = layer.name
        elif isinstance(layer, ReLU):
            relu = net.add(layer.name, "ReLU", [x], x)
            if layer.negative_slope:
                relu.relu_param.negative_slope = layer.negative_slope
        elif isinstance(layer, Dropout):
            net.add(layer.name, "Dropout", [x], x).dropout_param.dropout_ratio = layer.ratio
            if model.config.dropout_scaling == "test":  # the release's fork: x * (1 - ratio) at test time
                net.add(f"{layer.name}_test_scale", "Power", [x], x).power_param.scale = 1.0 - layer.ratio
    return x


def caffe_net(model: SPPNet, size: tuple[int, int]) -> tuple[Any, list[tuple[Any, list[np.ndarray]]]]:
    """The V2 NetParameter of `model` at input `size`, and each parameter layer's arrays in Caffe's layout."""
    spec = model.spec
    _, conv5_h, conv5_w = feature_sizes(spec, *size)[-1]
    weights = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    net = _Net(spec.name)
    data = net.add("data", "Input", [], "data")
    data.input_param.shape.add(dim=[1, 3, *size])
    x = _trunk(net, model, weights, "data")
    x = _pyramid(net, model, x, size, (conv5_h, conv5_w))
    _head(net, model, weights, x)
    return net.proto, net.blobs


def export_caffe(
    run: str | os.PathLike[str], out: str | os.PathLike[str], *, size: tuple[int, int] | None = None
) -> tuple[Path, Path]:
    """Write `out/deploy.prototxt` and `out/weights.caffemodel` for the run at input `size` (default the run's
    own size); returns both paths. Each file is written atomically, the weights first."""
    run = Path(run)
    model = load_model(run)
    spec, config = model.spec, model.config
    if size is None:
        side = config.input_size or spec.input_size
        size = (side, side)
    if not config.spp and size != ((config.input_size or spec.input_size),) * 2:
        side = config.input_size or spec.input_size
        raise InvalidInput(f"the no-SPP model takes {side}x{side} only, not {size[0]}x{size[1]}: export that size")
    proto, blobs = caffe_net(model, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_caffemodel(out / CAFFEMODEL, proto.name, blobs)
    header = (
        f"# sppnet export of {run.resolve()} ({spec.name}, SPP {config.rule} levels {list(config.levels)}) "
        f"for {size[0]}x{size[1]} inputs; output blob: logits (no Softmax)\n"
    )
    write_atomic(out / PROTOTXT, (header + text_format.MessageToString(proto)).encode())
    return out / PROTOTXT, out / CAFFEMODEL
