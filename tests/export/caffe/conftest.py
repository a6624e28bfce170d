"""Caffe nets written by hand in each layout (V2, V1, V0, the SPP-net release's V0 hybrid), filled with random
weights by real Caffe, saved by it, and run by it: the expected logits of every import test come from Caffe.

Each net is text written here, independently of sppnet's mapping; Caffe fills the weights from the fillers in
the file (so no sppnet code touches them), saves them in the layout under test (V1 / V0 rewritten with Caffe's
own caffe_pb2 and legacy blob dims) and runs the net at every size, reloading the saved file after the first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FILL = 'weight_filler { type: "msra" } bias_filler { type: "gaussian" std: 0.3 }'

V2_NET = f"""
name: "v2_net"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 47 dim: 53 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 12 kernel_size: 5 stride: 2 pad: 2 {FILL} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param {{ negative_slope: 0.1 }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: AVE kernel_size: 3 stride: 2 pad: 1 }} }}
layer {{ name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param {{ local_size: 5 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param {{ num_output: 16 kernel_size: 3 pad: 1 group: 2 bias_term: false
    weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }}
layer {{ name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
  lrn_param {{ local_size: 3 alpha: 0.2 beta: 0.6 k: 2 }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 pad: 1 }} }}
layer {{ name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  convolution_param {{ num_output: 16 kernel_size: 3 pad: 1 {FILL} }} }}
layer {{ name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }}
layer {{ name: "spp" type: "SPP" bottom: "conv3" top: "spp" spp_param {{ pyramid_height: 3 pool: MAX }} }}
layer {{ name: "fc6" type: "InnerProduct" bottom: "spp" top: "fc6" inner_product_param {{ num_output: 32 {FILL} }} }}
layer {{ name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }}
layer {{ name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param {{ num_output: 10 transpose: true {FILL} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }}
"""

V1_NET = f"""
name: "v1_net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 50 input_dim: 50
layers {{ name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param {{ num_output: 10 kernel_size: 7 stride: 2 {FILL} }} }}
layers {{ name: "relu1" type: RELU bottom: "conv1" top: "conv1" }}
layers {{ name: "norm1" type: LRN bottom: "conv1" top: "norm1" lrn_param {{ local_size: 5 alpha: 0.05 beta: 0.75 }} }}
layers {{ name: "pool1" type: POOLING bottom: "norm1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 3 stride: 2 pad: 1 }} }}
layers {{ name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2"
  convolution_param {{ num_output: 16 kernel_size: 3 pad: 1 {FILL} }} }}
layers {{ name: "relu2" type: RELU bottom: "conv2" top: "conv2" }}
layers {{ name: "pool2" type: POOLING bottom: "conv2" top: "pool2"
  pooling_param {{ pool: AVE kernel_size: 3 stride: 2 }} }}
layers {{ name: "conv3" type: CONVOLUTION bottom: "pool2" top: "conv3"
  convolution_param {{ num_output: 16 kernel_size: 1 {FILL} }} }}
layers {{ name: "relu3" type: RELU bottom: "conv3" top: "conv3" }}
layers {{ name: "pool3" type: POOLING bottom: "conv3" top: "pool3" pooling_param {{ pool: AVE global_pooling: true }} }}
layers {{ name: "fc6" type: INNER_PRODUCT bottom: "pool3" top: "fc6" inner_product_param {{ num_output: 24 {FILL} }} }}
layers {{ name: "relu6" type: RELU bottom: "fc6" top: "fc6" }}
layers {{ name: "drop6" type: DROPOUT bottom: "fc6" top: "fc6" dropout_param {{ dropout_ratio: 0.4 }} }}
layers {{ name: "fc7" type: INNER_PRODUCT bottom: "fc6" top: "fc7" inner_product_param {{ num_output: 7 {FILL} }} }}
layers {{ name: "prob" type: SOFTMAX bottom: "fc7" top: "prob" }}
"""

V0_FILL = 'weight_filler { type: "gaussian" std: 0.15 } bias_filler { type: "gaussian" std: 0.3 }'


def v0_net(size: int) -> str:
    """V0 (BVLC's flat V0LayerParameter inside `layers { layer }`), declared at size x size: a two-level pyramid
    of pools (k7 s6, whose 3 bins at 18 cells are not the adaptive ones, and the whole map), flattened and
    concatenated."""
    return f"""
name: "v0_net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: {size} input_dim: {size}
layers {{ layer {{ name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 1 pad: 2 {V0_FILL} }}
  bottom: "data" top: "conv1" }}
layers {{ layer {{ name: "relu1" type: "relu" }} bottom: "conv1" top: "conv1" }}
layers {{ layer {{ name: "pool1" type: "pool" pool: MAX kernelsize: 3 stride: 2 }} bottom: "conv1" top: "pool1" }}
layers {{ layer {{ name: "norm1" type: "lrn" local_size: 3 alpha: 0.1 beta: 0.75 k: 2 }} bottom: "pool1" top: "norm1" }}
layers {{ layer {{ name: "conv2" type: "conv" num_output: 12 kernelsize: 3 pad: 1 group: 2 biasterm: false
  weight_filler {{ type: "gaussian" std: 0.2 }} }} bottom: "norm1" top: "conv2" }}
layers {{ layer {{ name: "relu2" type: "relu" }} bottom: "conv2" top: "conv2" }}
layers {{ layer {{ name: "spm3" type: "pool" pool: MAX kernelsize: 7 stride: 6 }} bottom: "conv2" top: "spm3" }}
layers {{ layer {{ name: "spm3_flat" type: "flatten" }} bottom: "spm3" top: "spm3_flat" }}
layers {{ layer {{ name: "spm1" type: "pool" pool: MAX kernelsize: {size // 2} stride: {size // 2} }}
  bottom: "conv2" top: "spm1" }}
layers {{ layer {{ name: "spm1_flat" type: "flatten" }} bottom: "spm1" top: "spm1_flat" }}
layers {{ layer {{ name: "spm" type: "concat" concat_dim: 1 }} bottom: "spm1_flat" bottom: "spm3_flat" top: "spm" }}
layers {{ layer {{ name: "fc6" type: "innerproduct" num_output: 20 {V0_FILL} }} bottom: "spm" top: "fc6" }}
layers {{ layer {{ name: "relu6" type: "relu" }} bottom: "fc6" top: "fc6" }}
layers {{ layer {{ name: "drop6" type: "dropout" dropout_ratio: 0.5 }} bottom: "fc6" top: "fc6" }}
layers {{ layer {{ name: "fc7" type: "innerproduct" num_output: 6 {V0_FILL} }} bottom: "fc6" top: "fc7" }}
layers {{ layer {{ name: "prob" type: "softmax" }} bottom: "fc7" top: "prob" }}
"""


# ZF-5 as the SPP-net release writes it (PAPER.md section 9), at 1/8 of its channels with fc 64 and 10 classes:
# the V0 hybrid layout with `*_param` messages, "inner_product" types and the four-pool pyramid on the 13x13
# conv5 (spm6 k3 s2, spm3 k5 s4, spm2 k7 s7, spm1 k13 s13), concatenated as spm1, spm2, spm3, spm6.
RELEASE_CONVS = [("conv1", 12, 7, 2, 1), ("conv2", 32, 5, 2, 0), ("conv3", 48, 3, 1, 1), ("conv4", 48, 3, 1, 1),
                 ("conv5", 32, 3, 1, 1)]  # fmt: skip
RELEASE_PYRAMID = [("pool5_spm6", 3, 2), ("pool5_spm3", 5, 4), ("pool5_spm2", 7, 7), ("pool5_spm1", 13, 13)]
RELEASE_FILL = 'weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "gaussian" std: 0.2 }'


def release_net(caffe: bool) -> str:
    """The reduced release net: the hybrid V0 text (caffe=False), or the V2 text BVLC Caffe runs for it
    (caffe=True), where each Dropout is followed by Power(scale 1 - ratio): the release fork's test-time dropout."""
    lines = ['name: "ImageNet_Zeiler_small"', 'input: "data"', "input_dim: [1, 3, 224, 224]"]

    def layer(name: str, kind: str, v0: str, bottoms: list[str], top: str, params: str = "") -> None:
        bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
        if caffe:
            lines.append(f'layer {{ name: "{name}" type: "{kind}" {bottom} top: "{top}" {params} }}')
        else:
            v0_params = params.replace("convolution_param", "conv_param").replace("pooling_param", "pool_param")
            lines.append(f'layers {{ layer {{ name: "{name}" type: "{v0}" {v0_params} }} {bottom} top: "{top}" }}')

    x = "data"
    for i, (name, out, k, s, p) in enumerate(RELEASE_CONVS, start=1):
        fill = RELEASE_FILL if caffe else 'weight_filler { type: "gaussian" std: 0.01 }'
        layer(name, "Convolution", "conv", [x], name,
              f"convolution_param {{ num_output: {out} kernel_size: {k} stride: {s} pad: {p} {fill} }}")
        layer(f"relu{i}", "ReLU", "relu", [name], name)
        x = name
        if i <= 2:
            lrn = "lrn_param { local_size: 3 alpha: 0.00005 beta: 0.75 norm_region: WITHIN_CHANNEL }"
            layer(f"norm{i}", "LRN", "lrn", [x], f"norm{i}", lrn)
            layer(f"pool{i}", "Pooling", "pool", [f"norm{i}"], f"pool{i}",
                  "pooling_param { kernel_size: 3 stride: 2 pool: MAX }")
            x = f"pool{i}"
    for name, k, s in RELEASE_PYRAMID:
        layer(name, "Pooling", "pool", ["conv5"], name, f"pooling_param {{ kernel_size: {k} stride: {s} pool: MAX }}")
        layer(f"{name}_flatten", "Flatten", "flatten", [name], f"{name}_flatten")
    concat = "concat_param { concat_dim: 1 }" if not caffe else "concat_param { axis: 1 }"
    layer("pool5_spm", "Concat", "concat", [f"{n}_flatten" for n, _, _ in reversed(RELEASE_PYRAMID)], "pool5_spm",
          concat)
    x = "pool5_spm"
    for fc, width in (("fc6", 64), ("fc7", 64), ("fc8", 10)):
        fill = RELEASE_FILL if caffe else ""
        layer(fc, "InnerProduct", "inner_product", [x], fc, f"inner_product_param {{ num_output: {width} {fill} }}")
        x = fc
        if fc != "fc8":
            layer(f"relu{fc[2]}", "ReLU", "relu", [fc], fc)
            layer(f"drop{fc[2]}", "Dropout", "dropout", [fc], fc, "dropout_param { dropout_ratio: 0.5 }")
            if caffe:
                layer(f"drop{fc[2]}_test_scale", "Power", "", [fc], fc, "power_param { scale: 0.5 }")
    layer("prob", "Softmax", "softmax", ["fc8"], "prob")
    return "\n".join(lines) + "\n"


@dataclass
class CaffeNet:
    """A net run by Caffe: the prototxt to import, Caffe's saved weights, and its logits per input size."""

    name: str
    prototxt: Path
    caffemodel: Path
    logits_blob: str
    inputs: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    logits: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)


# name -> (prototxt to import, prototxt Caffe runs, logits blob, input sizes, layout of the saved weights)
NETS: dict[str, tuple[str, str, str, list[tuple[int, int]], str]] = {
    "v2": (V2_NET, V2_NET, "fc7", [(47, 53), (64, 64), (80, 61)], "V2"),
    "v1": (V1_NET, V1_NET, "fc7", [(50, 50), (41, 67), (72, 72)], "V1"),
    "v0_36": (v0_net(36), v0_net(36), "fc7", [(36, 36)], "V0"),
    "v0_44": (v0_net(44), v0_net(44), "fc7", [(44, 44)], "V0"),
    "release": (release_net(False), release_net(True), "fc8", [(224, 224)], "V0"),
}


@pytest.fixture(scope="session")
def caffe_nets(caffe_oracle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaffeNet]:
    """Every net of NETS filled, saved and run by Caffe (two inputs per size)."""
    root = tmp_path_factory.mktemp("caffe_nets")
    rng = np.random.default_rng(2024)
    nets, cases = {}, []
    for name, (text, caffe_text, blob, sizes, layout) in NETS.items():
        prototxt, caffe_prototxt = root / f"{name}.prototxt", root / f"{name}.caffe.prototxt"
        prototxt.write_text(text)
        caffe_prototxt.write_text(caffe_text)
        net = CaffeNet(name, prototxt, root / f"{name}.caffemodel", blob)
        for i, (h, w) in enumerate(sizes):
            scale = 100.0 if name == "release" else 1.0  # the release sees mean-subtracted 0..255 pixels
            net.inputs[h, w] = (rng.standard_normal((2, 3, h, w)) * scale).astype(np.float32)
            first = {"save": {"path": str(net.caffemodel), "layout": layout}} if i == 0 else {
                "caffemodel": str(net.caffemodel)}
            cases.append(caffe_oracle.Case(f"{name}_{h}x{w}", net.inputs[h, w], [], [blob],
                                           prototxt=str(caffe_prototxt), **first))
        nets[name] = net
    results = caffe_oracle.run(cases)
    for name, net in nets.items():
        for h, w in net.inputs:
            net.logits[h, w] = results[f"{name}_{h}x{w}"][net.logits_blob]  # type: ignore[index]
    return nets


def errors(ours: np.ndarray, caffe: np.ndarray) -> dict[str, float]:
    """max |ours - caffe| relative to max |caffe| (the tolerance's measure), and the elementwise worst."""
    ours64, caffe64 = np.asarray(ours, np.float64), np.asarray(caffe, np.float64)
    diff = np.abs(ours64 - caffe64)
    top = float(np.abs(caffe64).max())
    big = np.abs(caffe64) >= 0.01 * top
    return {
        "max_abs": float(diff.max()),
        "caffe_max": top,
        "rel_to_max": float(diff.max()) / top if top else 0.0,
        "max_rel_elem": float((diff[big] / np.abs(caffe64[big])).max()) if big.any() else 0.0,
    }


def report(comparison: str, **figures: Any) -> str:
    """One JSON line for the parity table (printed; appended to $SPPNET_PARITY_REPORT when set)."""
    line = json.dumps({"comparison": comparison, **figures})
    print(line)
    path = os.environ.get("SPPNET_PARITY_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")
    return line


@pytest.fixture(scope="session")
def parity() -> Any:
    """`errors` and `report` for the test modules (which cannot import this conftest in importlib mode)."""
    return type("Parity", (), {"errors": staticmethod(errors), "report": staticmethod(report)})
