"""Small valid ONNX export directories for the engine-building tests (made with onnx.helper, not the exporter).

Each model is conv 3x3 + ReLU, a max over all positions (GlobalMaxPool, or the custom SpatialPyramidPooling node
with one level in the plugin form) and a Gemm to the classes: the same input/output contract as the real export,
built in milliseconds. fp16 models are strongly typed: fp16 weights, Casts at the edges, float32 IO.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sppnet.core.atomic import sha256_file
from sppnet.core.manifest import (
    ExportManifest,
    ModelCard,
    SizeRange,
    Weights,
    file_record,
    read_export_manifest,
    write_manifest,
)
from sppnet.core.networks import ModelConfig
from sppnet.core.preprocess import Preprocess
from sppnet.core.profiles import dynamic_profiles, fixed_profile

NETWORK = "tiny"
CLASSES = ["a", "b", "c", "d", "e"]
CHANNELS = 4
OPSET = 17


def tiny_model(scale: tuple[int, int] | None, precision: str, spp_form: str, *, seed: int = 0) -> onnx.ModelProto:
    """The tiny classifier at a fixed (H, W) or with symbolic H and W, in fp32 or strongly typed fp16."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if precision == "fp16" else np.float32
    height, width = scale if scale else ("height", "width")
    weights = {
        "conv_w": rng.standard_normal((CHANNELS, 3, 3, 3)),
        "conv_b": rng.standard_normal(CHANNELS),
        "fc_w": rng.standard_normal((len(CLASSES), CHANNELS)),
        "fc_b": rng.standard_normal(len(CLASSES)),
    }
    initializers = [numpy_helper.from_array(v.astype(dtype), name) for name, v in weights.items()]
    nodes, x = [], "image"
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", [x], ["image16"], to=TensorProto.FLOAT16))
        x = "image16"
    nodes += [
        helper.make_node("Conv", [x, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
    ]
    if spp_form == "plugin":
        nodes.append(
            helper.make_node(
                "SpatialPyramidPooling", ["relu"], ["pooled"], domain="sppnet", levels=[1], rule="adaptive"
            )
        )
    else:
        nodes += [
            helper.make_node("GlobalMaxPool", ["relu"], ["gmax"]),
            helper.make_node("Flatten", ["gmax"], ["pooled"]),
        ]
    last = "logits16" if precision == "fp16" else "logits"
    nodes.append(helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], [last], transB=1))
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", [last], ["logits"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        f"{NETWORK}_{spp_form}_{precision}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if spp_form == "plugin":
        opsets.append(helper.make_opsetid("sppnet", 1))
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8, producer_name="onnx_fixtures")
    onnx.checker.check_model(model)
    return model


def file_name(scale: tuple[int, int] | None, precision: str, spp_form: str) -> str:
    """The exporter's naming: NETWORK_HxW_PREC.onnx, NETWORK_dynamic_PREC.onnx, NETWORK_dynamic_plugin_PREC.onnx."""
    if scale:
        return f"{NETWORK}_{scale[0]}x{scale[1]}_{precision}.onnx"
    return f"{NETWORK}_dynamic_{'plugin_' if spp_form == 'plugin' else ''}{precision}.onnx"


def make_onnx_export(
    directory: Path,
    *,
    scales: tuple[tuple[int, int], ...] = ((32, 32), (24, 40)),
    precisions: tuple[str, ...] = ("fp32", "fp16"),
    dynamic: bool = True,
    sizes: tuple[int, int] = (8, 64),
    opt_batch: int = 2,
    max_batch: int = 4,
) -> Path:
    """Write an ONNX export directory (files and a typed manifest, both forms of the dynamic model); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[tuple[int, int] | None, str, str]] = [(s, p, "static") for s in scales for p in precisions]
    if dynamic:
        jobs += [(None, p, form) for form in ("decomposed", "plugin") for p in precisions]
    batches = {"opt_batch": opt_batch, "max_batch": max_batch}
    dynamic_range = tuple(dynamic_profiles(min_size=sizes[0], max_size=sizes[1], scales=scales, **batches))
    entries = []
    for scale, precision, form in jobs:
        path = directory / file_name(scale, precision, form)
        onnx.save(tiny_model(scale, precision, form), path)
        entries.append(
            file_record(
                path,
                kind="fixed" if scale else "dynamic",
                scale=scale,
                precision=precision,
                spp_form=form,
                profiles=(fixed_profile(*scale, **batches),) if scale else dynamic_range,
            )
        )
    manifest = ExportManifest(
        card=card(),
        # conv 3x3, stride 1, pad 1: the feature map is the input's size
        sizes=SizeRange(sizes[0], sizes[1], 1, (("conv", 3, 1, 1),)),
        max_batch=max_batch,
        opt_batch=opt_batch,
        files=tuple(entries),
        opset=OPSET,
        producer={"onnx_fixtures": "1"},
    )
    write_manifest(directory, manifest)
    return directory


def card() -> ModelCard:
    """The tiny network's card: one pyramid level, five classes, random weights."""
    config = ModelConfig(name=NETWORK, num_classes=len(CLASSES), levels=(1,))
    weights = Weights("0" * 64, source="onnx_fixtures (random)", trained=False, seed=0)
    return ModelCard(NETWORK, config, tuple(CLASSES), Preprocess(short_side=32, crop=32), weights)


def rehash(directory: Path, name: str) -> None:
    """Update `name`'s size and sha256 in the ONNX manifest (as if the exporter itself had written that file)."""
    manifest = read_export_manifest(directory, verify=False)
    path = directory / name
    fresh = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    files = tuple(replace(e, **fresh) if e.file == name else e for e in manifest.files)
    write_manifest(directory, replace(manifest, files=files))
