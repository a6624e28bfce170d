"""A Caffe net definition as sppnet's network: a chain of layers -> conv trunk, pyramid and head.

sppnet runs one chain: input -> Convolution / Pooling / LRN / ReLU (the trunk) -> a pyramid -> InnerProduct /
ReLU / Dropout (the head) -> an optional final Softmax (dropped: sppnet's output is the logits). The pyramid is
what sits between the trunk and the first InnerProduct:
- BVLC's SPP layer: levels 1, 2, 4, ... under the `caffe` rule (spp_layer.cpp's own bins, at every size);
- Pooling layers on one blob, each flattened, joined by one Concat (the SPP-net release's head), or one Pooling
  layer: the file's windows at the conv5 size of the file's input, adaptive bins at every other size (the rule
  `pools@...` of `sppnet.core.bins`; recorded as plain `adaptive` where the file's windows are the adaptive bins);
- a global pooling: one level of one bin; an InnerProduct straight on a map: one level of H x H single cells.
Anything else in the chain, or a graph that is not such a chain, is refused with the layer's name and type.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sppnet.core.bins import check_pyramid, pools_rule, spp_bins
from sppnet.core.caffe_shapes import caffe_pool_size
from sppnet.core.errors import InvalidInput
from sppnet.core.models import module_name
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
)
from sppnet.export.caffe.netdef import (
    ConvParams,
    DropoutParams,
    InnerProductParams,
    LayerDef,
    LRNParams,
    NetDef,
    PoolParams,
    PowerParams,
    ReLUParams,
    SPPParams,
)

SUPPORTED = (
    "Convolution", "Pooling", "LRN", "ReLU", "InnerProduct", "Dropout", "Flatten", "Concat", "SPP", "Softmax", "Power",
)  # fmt: skip
TRUNK = ("Convolution", "Pooling", "LRN", "ReLU")
DROPOUT_OPTIONS = ("auto", "train", "test")

Ref = tuple[str, int]  # a blob name and how many times it was written before (in-place layers rewrite it)


@dataclass
class _Node:
    layer: LayerDef
    ins: list[Ref]
    out: Ref


@dataclass
class _Pyramid:
    """Pooling layers on one blob, each flattened, joined by a Concat, in the Concat's order."""

    pools: list[LayerDef]
    others: list[LayerDef] = field(default_factory=list)  # the Flatten and Concat layers


Step = LayerDef | _Pyramid


@dataclass(frozen=True)
class ParamBlob:
    """Where one model parameter comes from: the Caffe layer, its blob index, and whether the stored matrix is
    transposed (InnerProduct `transpose: true`)."""

    key: str
    layer: str
    index: int
    transpose: bool = False


@dataclass(frozen=True)
class Mapped:
    """What a Caffe net becomes: the network spec, the model config, where each parameter is, and a record of
    the decisions (format, pyramid, dropout) for `RunInfo.origin`."""

    spec: NetworkSpec
    config: ModelConfig
    params: tuple[ParamBlob, ...]
    record: dict[str, Any]
    reference_size: tuple[int, int]


def _fail(net: NetDef, message: str) -> InvalidInput:
    return InvalidInput(f"{net.source}: {message}")


def _input(net: NetDef, input_size: tuple[int, int] | None) -> tuple[str, tuple[int, int]]:
    """The one input blob and the (H, W) the file declares (or `input_size` where it declares none)."""
    if len(net.inputs) > 1:
        names = ", ".join(name for name, _ in net.inputs)
        raise _fail(net, f"the net has {len(net.inputs)} inputs ({names}): sppnet models take one image input")
    if net.inputs:
        name, shape = net.inputs[0]
    else:
        produced = {top for layer in net.layers for top in layer.tops}
        free = [b for layer in net.layers for b in layer.bottoms if b not in produced]
        if not free:
            raise _fail(net, "declares no input and no layer reads an outside blob: add `input:` and `input_dim:`")
        name, shape = free[0], None
    if shape is not None:
        if len(shape) != 4 or shape[1] != 3:
            raise _fail(net, f"input {name!r} has shape {list(shape)}: sppnet models take (N, 3, H, W) BGR images")
        return name, (int(shape[2]), int(shape[3]))
    if input_size is None:
        raise _fail(net, f"input {name!r} has no shape: pass --input-size HxW")
    return name, input_size


def _graph(net: NetDef, input_name: str) -> list[_Node]:
    version: dict[str, int] = {input_name: 0}
    nodes = []
    for layer in net.layers:
        if len(layer.tops) != 1:
            raise _fail(net, f"{layer.label} has {len(layer.tops)} tops: sppnet maps layers with one top each")
        if layer.type != "Concat" and len(layer.bottoms) != 1:
            raise _fail(net, f"{layer.label} has {len(layer.bottoms)} bottoms: sppnet runs one chain of layers")
        ins = []
        for bottom in layer.bottoms:
            if bottom not in version:
                raise _fail(
                    net,
                    f"{layer.label} takes blob {bottom!r}, which no earlier layer (nor the input) produces: fix its "
                    "bottom, or add the layer that makes it before it",
                )
            ins.append((bottom, version[bottom]))
        top = layer.tops[0]
        version[top] = version.get(top, -1) + 1
        nodes.append(_Node(layer, ins, (top, version[top])))
    return nodes


def _walk(net: NetDef, input_name: str) -> list[Step]:
    """The chain from the input to the net's one output; a pyramid is one step."""
    nodes = _graph(net, input_name)
    consumers: dict[Ref, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for ref in node.ins:
            consumers[ref].append(i)
    steps: list[Step] = []
    visited: set[int] = set()
    ref: Ref = (input_name, 0)
    while consumers.get(ref):
        users = consumers[ref]
        if len(users) == 1:
            node = nodes[users[0]]
            if len(node.ins) != 1:
                raise _fail(net, f"{node.layer.label} joins blobs that are not a pyramid: sppnet runs one chain")
            visited.add(users[0])
            if node.layer.type != "Concat":  # a Concat of one blob copies it
                steps.append(node.layer)
            ref = node.out
            continue
        pyramid, used, ref = _pyramid(net, ref, users, nodes, consumers)
        visited |= used
        steps.append(pyramid)
    for i, node in enumerate(nodes):
        if i not in visited:
            raise _fail(
                net,
                f"{node.layer.label} is not on the chain from input {input_name!r} to the output: sppnet runs one "
                "chain of layers (remove side branches and extra outputs)",
            )
    return steps


def _pyramid(
    net: NetDef, ref: Ref, users: list[int], nodes: list[_Node], consumers: dict[Ref, list[int]]
) -> tuple[_Pyramid, set[int], Ref]:
    pools = [nodes[i] for i in users]
    branch = f"blob {ref[0]!r} feeds {len(users)} layers ({', '.join(n.layer.name for n in pools)})"
    fix = (
        "sppnet follows one chain, branching only into a pyramid of MAX Pooling layers, each then a Flatten, "
        "joined by one Concat"
    )
    if any(n.layer.type != "Pooling" for n in pools):
        raise _fail(net, f"{branch}: {fix}")
    flats, concat = [], None
    for pool in pools:
        after = consumers.get(pool.out, [])
        if len(after) != 1 or nodes[after[0]].layer.type != "Flatten":
            raise _fail(net, f"{branch}: {pool.layer.label} is not followed by exactly one Flatten; {fix}")
        flat = nodes[after[0]]
        joins = consumers.get(flat.out, [])
        if len(joins) != 1 or nodes[joins[0]].layer.type != "Concat":
            raise _fail(net, f"{branch}: {flat.layer.label} does not go into one Concat; {fix}")
        if concat is not None and joins[0] != concat:
            raise _fail(net, f"{branch}: the levels go into different Concat layers; {fix}")
        flats.append(after[0])
        concat = joins[0]
    assert concat is not None
    join = nodes[concat]
    outs = [nodes[i].out for i in flats]
    if sorted(join.ins) != sorted(outs) or len(set(join.ins)) != len(join.ins):
        raise _fail(net, f"{join.layer.label} joins other blobs than the pyramid's levels of {ref[0]!r}; {fix}")
    order = {out: i for i, out in enumerate(outs)}
    levels = [pools[order[blob]].layer for blob in join.ins]
    others = [nodes[i].layer for i in flats] + [join.layer]
    return _Pyramid(levels, others), {*users, *flats, concat}, join.out


def _is(step: Step | None, kind: str) -> bool:
    return isinstance(step, LayerDef) and step.type == kind


def _trunk_layer(net: NetDef, layer: LayerDef) -> LayerSpec:
    p = layer.params
    try:
        if isinstance(p, ConvParams):
            return Conv(layer.name, p.num_output, p.kernel, p.stride, p.pad, p.bias_value, p.group, p.bias_term, None)
        if isinstance(p, PoolParams):
            return Pool(p.kernel, p.stride, p.pad, p.method, p.global_pooling, layer.name)
        if isinstance(p, LRNParams):
            return LRN(p.region, p.size, p.alpha, p.beta, p.k, layer.name)
        if isinstance(p, ReLUParams):
            return ReLU(layer.name, p.negative_slope)
    except InvalidInput as e:
        raise _fail(net, f"{layer.label}: {e}") from None
    raise _fail(
        net,
        f"{layer.label} cannot be in the convolutional trunk: before the pyramid sppnet maps Convolution, Pooling, "
        "LRN and ReLU only",
    )


def _dropout_scaling(net: NetDef, head: Sequence[LayerDef], option: str) -> tuple[str, str]:
    """'train' or 'test' scaling and why: Power(1 - ratio) layers after the dropouts (sppnet's own export of a
    test-scaled model), the release's V0 hybrid layout, the option, or BVLC's default."""
    if option not in DROPOUT_OPTIONS:
        raise InvalidInput(f"dropout scaling {option!r} is not one of {', '.join(DROPOUT_OPTIONS)}")
    dropouts = [layer for layer in head if layer.type == "Dropout"]
    marked = [layer for layer in head if layer.type == "Power"]
    if marked:
        if len(marked) != len(dropouts):
            raise _fail(net, "only some Dropout layers are followed by a Power layer: scale all or none at test")
        if option == "train":
            raise _fail(net, "its Power layers scale dropout at test time: drop --dropout-scaling train")
        return "test", "Power(1 - ratio) layers after the Dropout layers (test-time scaling)"
    if option != "auto":
        return option, f"the option --dropout-scaling {option}"
    if net.format == "V0-release":
        return "test", (
            "detected: the V0 hybrid layout of the SPP-net release, whose Caffe fork multiplies by 1 - ratio at "
            "test time (BVLC and PyTorch rescale while training)"
        )
    return "train", "BVLC Caffe's dropout (rescaled while training, the identity at test)"


def _head(net: NetDef, steps: Sequence[Step]) -> list[HeadSpec]:
    head: list[HeadSpec] = []
    previous: LayerDef | None = None
    for step in steps:
        if isinstance(step, _Pyramid) or step.type not in ("InnerProduct", "ReLU", "Dropout", "Power"):
            label = step.pools[0].label if isinstance(step, _Pyramid) else step.label
            raise _fail(
                net,
                f"{label} comes after the first InnerProduct: the head takes InnerProduct, ReLU and Dropout only",
            )
        p = step.params
        if isinstance(p, InnerProductParams):
            head.append(InnerProduct(step.name, p.num_output, p.bias_term, p.bias_value))
        elif isinstance(p, ReLUParams):
            head.append(ReLU(step.name, p.negative_slope))
        elif isinstance(p, DropoutParams):
            head.append(Dropout(step.name, p.ratio))
        elif isinstance(p, PowerParams):
            kept = 1.0 - previous.params.ratio if previous is not None and previous.type == "Dropout" else None
            if kept is None or p.power != 1 or p.shift != 0 or abs(p.scale - kept) > 1e-6:
                raise _fail(
                    net,
                    f"{step.label}: sppnet reads a Power layer only right after a Dropout, as its test-time scale "
                    "(power 1, shift 0, scale 1 - ratio)",
                )
        previous = step
    return head


def _pyramid_of(
    net: NetDef, pre: list[Step], trunk_of: Any
) -> tuple[list[Step], tuple[int, ...], str, dict[str, Any]]:
    """Split the steps before the first InnerProduct into trunk and pyramid: (trunk, levels, rule, record)."""
    last = pre[-1] if pre else None
    if isinstance(last, _Pyramid):
        return pre[:-1], *_file_pools(net, last.pools, trunk_of(pre[:-1]), "pools")
    if _is(last, "SPP"):
        assert isinstance(last, LayerDef) and isinstance(last.params, SPPParams)
        levels = tuple(2**i for i in range(last.params.pyramid_height))
        a = trunk_of(pre[:-1])
        try:
            check_pyramid(*a, levels, "caffe")
        except ValueError as e:
            raise _fail(net, f"{last.label}: at the file's input size {e}") from None
        return pre[:-1], levels, "caffe", {"kind": "spp", "layer": last.name, "levels": list(levels)}
    flatten = _is(last, "Flatten")
    body = pre[:-1] if flatten else pre
    before = body[-1] if body else None
    if _is(before, "Pooling"):
        assert isinstance(before, LayerDef) and isinstance(before.params, PoolParams)
        if before.params.global_pooling:
            return body, (1,), "adaptive", {"kind": "global", "layer": before.name}
        if before.params.method == "max":
            trunk = body[:-1]
            return trunk, *_file_pools(net, [before], trunk_of(trunk), "pool")
    a = trunk_of(body)
    if a[0] != a[1]:
        raise _fail(
            net,
            f"the first InnerProduct flattens a {a[0]}x{a[1]} map: sppnet pools it to n x n, so it must be square at "
            "the file's input size",
        )
    return body, (a[0],), "adaptive", {"kind": "flatten", "cells": a[0]}


def _file_pools(
    net: NetDef, pools: list[LayerDef], conv5: tuple[int, int], kind: str
) -> tuple[tuple[int, ...], str, dict[str, Any]]:
    entries = []
    for layer in pools:
        p = layer.params
        assert isinstance(p, PoolParams)
        if p.method != "max" or p.global_pooling:
            raise _fail(net, f"{layer.label}: a pyramid level must be a MAX pooling with a kernel (SPP is max)")
        try:
            Pool(p.kernel, p.stride, p.pad)
        except InvalidInput as e:
            raise _fail(net, f"{layer.label}: {e}") from None
        counts = [caffe_pool_size(a, p.kernel, p.stride, p.pad) for a in conv5]
        if counts[0] != counts[1]:
            raise _fail(
                net,
                f"{layer.label} gives {counts[0]}x{counts[1]} bins on the {conv5[0]}x{conv5[1]} map at the file's "
                "input size: sppnet's pyramid levels are n x n",
            )
        entries.append((counts[0], p.kernel, p.stride, p.pad))
    levels = tuple(n for n, *_ in entries)
    if len(set(levels)) != len(levels):
        raise _fail(net, f"two pyramid levels give the same {levels} bins at the file's input size: not supported")
    rule = pools_rule(conv5, entries)
    if all(spp_bins(a, n, rule) == spp_bins(a, n, "adaptive") for a in conv5 for n in levels):
        rule = "adaptive"  # the file's windows are the adaptive bins at its size: the same rule, simpler
    record = {
        "kind": kind,
        "layers": [layer.name for layer in pools],
        "levels": list(levels),
        "windows_at": list(conv5),
        "file_pools": [{"level": n, "kernel": k, "stride": s, "pad": p} for n, k, s, p in entries],
    }
    return levels, rule, record


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "caffe"


def map_net(
    net: NetDef,
    *,
    input_size: tuple[int, int] | None = None,
    dropout_scaling: str = "auto",
    name: str | None = None,
) -> Mapped:
    """sppnet's network for a Caffe net; InvalidInput naming the layer (and its type) sppnet cannot map.

    `input_size` (H, W), square, is the run's size (export scales, crop); without it, the short side of the
    file's input. The file's own input shape, when it has one, stays the size its pyramid pools are exact at.
    """
    for layer in net.layers:
        if layer.type not in SUPPORTED:
            raise _fail(
                net,
                f"{layer.label} is not supported: sppnet imports {', '.join(SUPPORTED)} (a deploy prototxt needs "
                "no data, loss or accuracy layers); remove it",
            )
        if not layer.name:
            raise _fail(net, f"the {layer.type} layer at {layer.where} has no name: name it (weights match by name)")
    seen: dict[str, LayerDef] = {}
    for layer in net.layers:
        key = module_name(layer.name)
        if key in seen:
            raise _fail(net, f"{layer.label} has the name of {seen[key].label}: give each layer its own name")
        seen[key] = layer
    input_name, reference = _input(net, input_size)
    steps = _walk(net, input_name)
    softmax = None
    if steps and _is(steps[-1], "Softmax"):
        softmax = steps.pop()
    for step in steps:
        if _is(step, "Softmax"):
            raise _fail(net, f"{step.label} is not the last layer: sppnet drops a final Softmax only")  # type: ignore[union-attr]
    first_fc = next((i for i, s in enumerate(steps) if _is(s, "InnerProduct")), len(steps))
    pre, post = list(steps[:first_fc]), list(steps[first_fc:])
    label = _safe_name(name or net.name or Path(net.source).stem)

    def trunk_of(trunk_steps: Sequence[Step]) -> tuple[int, int]:
        spec = _spec(label, [_trunk_layer(net, s) for s in trunk_steps], None, reference[0], "")
        try:
            sizes = feature_sizes(spec, *reference)
        except ValueError as e:
            raise _fail(net, f"at the file's input size {reference[0]}x{reference[1]}: {e}") from None
        return (sizes[-1][1], sizes[-1][2]) if sizes else reference

    trunk_steps, levels, rule, pyramid = _pyramid_of(net, pre, trunk_of)
    if not post and pyramid["kind"] == "flatten" and not _is(pre[-1] if pre else None, "Flatten"):
        raise _fail(net, "the net ends in a feature map, not in scores: sppnet needs a pyramid or an InnerProduct")
    trunk = [_trunk_layer(net, step) for step in trunk_steps]
    if not any(isinstance(layer, Conv) for layer in trunk):
        raise _fail(net, "has no Convolution before its pyramid: sppnet models start with a convolutional trunk")
    head_defs = [s for s in post if isinstance(s, LayerDef)]
    head = _head(net, post)
    scaling, why = _dropout_scaling(net, head_defs, dropout_scaling)
    size = input_size or reference
    if size[0] != size[1] and input_size is not None:
        raise _fail(net, f"the run's size {size[0]}x{size[1]} is not square: pass --input-size SxS")
    summary = f"imported from {Path(net.source).name} (Caffe {net.format})"
    spec = _spec(label, trunk, tuple(head), min(size), summary)  # a non-square file input: its short side
    channels = spec.conv5_channels
    fcs = [layer for layer in head if isinstance(layer, InnerProduct)]
    classes = fcs[-1].outputs if fcs else channels * sum(n * n for n in levels)
    dropouts = [layer.ratio for layer in head if isinstance(layer, Dropout)]
    config = ModelConfig(
        spec.name, True, classes, levels, rule, dropouts[0] if dropouts else 0.5, 0.01, None, scaling
    )
    params = []
    for layer in net.layers:
        p = layer.params
        if isinstance(p, ConvParams):
            key = f"features.{module_name(layer.name)}"
            params.append(ParamBlob(f"{key}.weight", layer.name, 0))
            if p.bias_term:
                params.append(ParamBlob(f"{key}.bias", layer.name, 1))
        elif isinstance(p, InnerProductParams):
            key = f"classifier.{module_name(layer.name)}"
            params.append(ParamBlob(f"{key}.weight", layer.name, 0, p.transpose))
            if p.bias_term:
                params.append(ParamBlob(f"{key}.bias", layer.name, 1))
    record = {
        "format": net.format,
        "net": net.name,
        "input": {"blob": input_name, "size": list(reference)},
        "pyramid": {**pyramid, "rule": rule},
        "dropout": {"scaling": scaling, "why": why},
        "softmax_dropped": softmax.name if isinstance(softmax, LayerDef) else None,
    }
    return Mapped(spec, config, tuple(params), record, reference)


def _spec(
    name: str, layers: list[LayerSpec], head: tuple[HeadSpec, ...] | None, size: int, summary: str
) -> NetworkSpec:
    fcs = [layer for layer in head or () if isinstance(layer, InnerProduct)]
    return NetworkSpec(
        name=name,
        summary=summary,
        layers=tuple(layers),
        fc_width=fcs[0].outputs if fcs else 0,
        input_size=size,
        train_sizes=(size,),
        head=head,
    )
