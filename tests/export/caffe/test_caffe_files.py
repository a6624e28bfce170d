"""Caffe files without Caffe: the prototxt reader, the streaming caffemodel reader, the mapping and every bad input.

Bad input must be one line naming the problem and the fix, and must leave nothing behind. Expected values here
are the protobuf package's own decoding of files built with the schema, or arithmetic written out in the test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sppnet.core.bins import check_rule, parse_pools_rule, pools_rule, spp_bins
from sppnet.core.describe import describe_model, format_table
from sppnet.core.errors import InvalidInput
from sppnet.core.layers import CaffePool2d
from sppnet.core.manifest import read_run_info
from sppnet.core.networks import NetworkSpec
from sppnet.core.runs import load_model
from sppnet.export.caffe import import_caffe, netdef_from_text, read_caffemodel, schema
from sppnet.export.caffe.caffemodel import write_caffemodel
from sppnet.export.onnx_builder import GraphBuilder
from sppnet.export.onnx_spp import plugin_spp

SMALL = """
name: "small"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "spp" type: "SPP" bottom: "conv1" top: "spp" spp_param { pyramid_height: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "spp" top: "fc" inner_product_param { num_output: 3 } }
"""
SHAPES = {"conv1": [(4, 3, 3, 3), (4,)], "fc": [(3, 20), (3,)]}


def small_weights(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    return {name: [rng.standard_normal(s).astype(np.float32) for s in shapes] for name, shapes in SHAPES.items()}


def write_v2(path: Path, weights: dict[str, list[np.ndarray]], legacy: bool = False) -> None:
    """A caffemodel built with the protobuf package and the schema (not sppnet's streaming writer)."""
    net = schema.NetParameter(name="small")
    for name, arrays in weights.items():
        layer = net.layer.add(name=name, type="X")
        for array in arrays:
            blob = layer.blobs.add()
            if legacy:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    path.write_bytes(net.SerializeToString())


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, dict[str, list[np.ndarray]]]:
    prototxt, caffemodel = tmp_path / "small.prototxt", tmp_path / "small.caffemodel"
    prototxt.write_text(SMALL)
    weights = small_weights(np.random.default_rng(0))
    write_v2(caffemodel, weights)
    return prototxt, caffemodel, weights


def refused(tmp_path: Path, prototxt: Path, caffemodel: Path, match: str, **options) -> str:
    """Import, expecting a one-line InvalidInput matching `match`, and nothing written."""
    out = tmp_path / "run"
    with pytest.raises(InvalidInput, match=match) as info:
        import_caffe(prototxt, caffemodel, out, **options)
    message = str(info.value)
    assert "\n" not in message and not out.exists(), message
    return message


# ----------------------------------------------------------------------------------------- reading


def test_streaming_reader_agrees_with_protobuf_and_reads_legacy_dims(files, tmp_path):
    _, caffemodel, weights = files
    model = read_caffemodel(caffemodel)
    parsed = schema.NetParameter.FromString(caffemodel.read_bytes())
    assert model.format == "V2" and model.names == tuple(layer.name for layer in parsed.layer)
    for layer in parsed.layer:
        for blob, proto in zip(model.blobs[layer.name], layer.blobs, strict=True):
            assert blob.shape == tuple(proto.shape.dim) and not blob.legacy
            assert np.array_equal(blob.data, np.array(proto.data, np.float32))
    write_v2(tmp_path / "legacy.caffemodel", weights, legacy=True)
    legacy = read_caffemodel(tmp_path / "legacy.caffemodel")
    assert legacy.blobs["fc"][0].shape == (1, 1, 3, 20) and legacy.blobs["fc"][0].matches((3, 20))
    assert not legacy.blobs["fc"][0].matches((20, 3))


def test_v1_and_v0_layouts_are_read_from_their_own_fields(tmp_path):
    weights = small_weights(np.random.default_rng(1))
    for layout in ("V1", "V0"):
        net = schema.NetParameter(name="n")
        for name, arrays in weights.items():
            entry = net.layers.add(bottom=["x"], top=[name])
            if layout == "V1":
                entry.name, entry.type = name, 4
                target = entry.blobs
            else:
                entry.layer.name, entry.layer.type = name, "conv"
                target = entry.layer.blobs
            for array in arrays:
                blob = target.add()
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
                blob.double_data.extend(array.ravel().astype(np.float64).tolist()) if layout == "V0" else (
                    blob.data.extend(array.ravel().tolist()))
        path = tmp_path / f"{layout}.caffemodel"
        path.write_bytes(net.SerializeToString())
        model = read_caffemodel(path, wanted={"fc"})
        assert model.format == layout and model.names == ("conv1", "fc") and set(model.blobs) == {"fc"}
        assert np.array_equal(model.blobs["fc"][0].data.reshape(3, 20), weights["fc"][0])


def test_writer_output_is_what_protobuf_decodes(tmp_path):
    weights = small_weights(np.random.default_rng(2))
    layers = [(schema.LayerParameter(name=n, type="T", bottom=["a"], top=[n]), w) for n, w in weights.items()]
    write_caffemodel(tmp_path / "w.caffemodel", "net", layers)
    parsed = schema.NetParameter.FromString((tmp_path / "w.caffemodel").read_bytes())
    assert parsed.name == "net" and [layer.name for layer in parsed.layer] == list(weights)
    fc = parsed.layer[1].blobs[0]
    assert tuple(fc.shape.dim) == (3, 20) and np.array_equal(np.array(fc.data, np.float32), weights["fc"][0].ravel())
    assert not list(tmp_path.glob(".*tmp"))


def test_prototxt_layouts_read_alike():
    v2 = netdef_from_text(SMALL)
    v1 = netdef_from_text(
        'input: "data" input_dim: [1, 3, 32, 32]\n'
        'layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" '
        "convolution_param { num_output: 4 kernel_h: 3 kernel_w: 3 stride: 2 } }"
    )
    v0 = netdef_from_text(
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32\n'
        'layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 } bottom: "data" '
        'top: "conv1" }'
    )
    assert (v2.format, v1.format, v0.format) == ("V2", "V1", "V0")
    assert v2.layers[0].params == v1.layers[0].params == v0.layers[0].params
    assert v2.inputs == v1.inputs == v0.inputs == (("data", (1, 3, 32, 32)),)


def test_layers_a_test_net_leaves_out_are_dropped():
    net = netdef_from_text(SMALL + 'layer { name: "acc" type: "Accuracy" bottom: "fc" top: "acc" '
                                   "include { phase: TRAIN } }")
    assert [layer.name for layer in net.layers] == ["conv1", "relu1", "spp", "fc"]


# ----------------------------------------------------------------------------------------- bad input


def test_prototxt_syntax_error_names_line_and_column(files, tmp_path):
    prototxt, caffemodel, _ = files
    text = SMALL.replace("kernel_size: 3 stride", "kernel_size 3 stride")
    prototxt.write_text(text)
    line = text.splitlines()[5]  # the sixth line; the error points at the value that lacks its ':'
    column = line.index("kernel_size 3") + len("kernel_size ") + 1
    refused(tmp_path, prototxt, caffemodel, rf"small.prototxt:6:{column}: expected ':' or '\{{' after 'kernel_size'")


def test_unknown_field_and_unknown_layer_type_are_named(files, tmp_path):
    prototxt, caffemodel, _ = files
    prototxt.write_text(SMALL.replace("stride: 2", "stride: 2 dilation: 2"))
    refused(tmp_path, prototxt, caffemodel, "layer 'conv1'.*dilation")
    prototxt.write_text(SMALL + 'layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "fc" top: "sum" }')
    line = SMALL.count("\n") + 1
    refused(tmp_path, prototxt, caffemodel, rf"layer 'sum' \(Eltwise, line {line}\) is not supported")
    prototxt.write_text('input: "data" input_dim: [1, 3, 8, 8]\nlayers { layer { name: "pad" type: "padding" pad: 1 }'
                        ' bottom: "data" top: "pad" }')
    refused(tmp_path, prototxt, caffemodel, r"layer 'pad' \(padding, line 2\) is not supported")


def test_a_graph_that_is_not_a_chain_is_refused_naming_it(files, tmp_path):
    prototxt, caffemodel, _ = files
    prototxt.write_text(SMALL.replace('bottom: "spp" top: "fc"', 'bottom: "pool5" top: "fc"'))
    refused(tmp_path, prototxt, caffemodel, "layer 'fc'.*takes blob 'pool5', which no earlier layer")
    branch = SMALL.replace('layer { name: "spp"', 'layer { name: "side" type: "Pooling" bottom: "conv1" top: "side" '
                           'pooling_param { kernel_size: 2 } }\nlayer { name: "spp"')
    prototxt.write_text(branch)
    refused(tmp_path, prototxt, caffemodel, r"blob 'conv1' feeds 2 layers \(side, spp\)")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda w: w.pop("fc"), "has no layer 'fc', which the prototxt needs weights for"),
        (lambda w: w["conv1"].pop(), "layer 'conv1' has 1 blobs in .* but the prototxt needs 2"),
        (lambda w: w.__setitem__("fc", [np.zeros((3, 21), np.float32), w["fc"][1]]),
         "layer 'fc': its weights are 3x21 in .* but 3x20 by the prototxt"),
    ],
)
def test_prototxt_and_caffemodel_that_do_not_match_name_the_layer_and_both_shapes(files, tmp_path, edit, match):
    prototxt, caffemodel, weights = files
    edit(weights)
    write_v2(caffemodel, weights)
    refused(tmp_path, prototxt, caffemodel, match)


def test_truncated_corrupt_and_oversized_caffemodels_are_refused(files, tmp_path):
    prototxt, caffemodel, _ = files
    data = caffemodel.read_bytes()
    caffemodel.write_bytes(data[: len(data) - 40])
    refused(tmp_path, prototxt, caffemodel, r"truncated or corrupt: .* declares \d+ bytes but the file holds only")
    caffemodel.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    refused(tmp_path, prototxt, caffemodel, "not a readable caffemodel|holds no layers")
    caffemodel.write_text(SMALL)
    refused(tmp_path, prototxt, caffemodel, "not a readable caffemodel|holds no layers")
    # a blob whose packed floats claim 1 GiB in a file of a few bytes
    blob = b"\x2a" + _varint(1 << 30) + b"\x00" * 8  # BlobProto.data (field 5, length-delimited)
    layer = b"\x0a\x02fc" + b"\x3a" + _varint(len(blob)) + blob  # LayerParameter: name, blobs (field 7)
    caffemodel.write_bytes(b"\xa2\x06" + _varint(len(layer) + (1 << 30)) + layer)
    refused(tmp_path, prototxt, caffemodel, r"declares \d+ bytes but the file holds only \d+ more")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def test_mean_file_and_class_names_become_the_runs_preprocessing(files, tmp_path):
    prototxt, caffemodel, _ = files
    mean = np.random.default_rng(3).uniform(0, 255, (1, 3, 6, 5)).astype(np.float32)
    proto = schema.BlobProto(num=1, channels=3, height=6, width=5)
    proto.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(proto.SerializeToString())
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    run = Path(import_caffe(prototxt, caffemodel, tmp_path / "run", mean_file=tmp_path / "mean.binaryproto",
                            classes=tmp_path / "classes.txt", scale=0.5)).parent
    card = read_run_info(run).card
    assert card.classes == ("cat", "dog", "bird") and card.preprocess.scale == 0.5
    assert np.array_equal(np.load(card.preprocess.mean_image), mean[0])
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    refused(tmp_path / "again", prototxt, caffemodel, "names 2 classes but the model has 3 outputs",
            classes=tmp_path / "classes.txt")
    refused(tmp_path / "both", prototxt, caffemodel, "either --mean-bgr .* or --mean", mean_bgr=(1, 2, 3),
            mean_file=tmp_path / "mean.binaryproto")


# ----------------------------------------------------------------------------------------- the network


def test_imported_network_travels_in_model_json_and_loads_back(files, tmp_path):
    prototxt, caffemodel, weights = files
    run = Path(import_caffe(prototxt, caffemodel, tmp_path / "run")).parent
    card = read_run_info(run).card
    spec = NetworkSpec.from_json(card.spec)
    assert spec.to_json() == card.spec and [layer.name for layer in spec.head] == ["fc"]
    model = load_model(run)
    assert torch.equal(model.features.conv1.weight, torch.from_numpy(weights["conv1"][0]))
    rows = describe_model(spec, card.model, 32, 32)
    assert [r.name for r in rows] == ["conv1", "relu1", "spp", "fc"] and rows[2].output == (20,)
    assert "imported from small.prototxt" in format_table(spec, 32, 32, rows)
    with pytest.raises(InvalidInput, match="unknown layer type 'eltwise'"):
        NetworkSpec.from_json({**card.spec, "layers": [{"type": "eltwise"}]})


def test_pools_rule_is_the_files_windows_at_its_lengths_and_adaptive_elsewhere():
    rule = pools_rule((13,), [(1, 13, 13, 0), (2, 7, 7, 0), (3, 5, 4, 0), (6, 3, 2, 0)])
    assert rule == "pools@13:1=k13s13,2=k7s7,3=k5s4,6=k3s2" and parse_pools_rule(rule).pool(2) == (7, 7, 0)
    assert spp_bins(13, 2, rule) == [(0, 7), (7, 13)] and spp_bins(13, 3, rule) == [(0, 5), (4, 9), (8, 13)]
    assert spp_bins(12, 2, rule) == [(0, 6), (6, 12)]
    padded = pools_rule((13,), [(4, 4, 4, 2)])
    assert spp_bins(13, 4, padded) == [(0, 2), (2, 6), (6, 10), (10, 13)] == spp_bins(13, 4, "caffe")
    for bad in ("pools@13:2=k7s7,2=k6s6", "pools@13:3=k7s7", "pools@x:1=k1s1", "pools@13:1=k13s13p13"):
        with pytest.raises(InvalidInput):
            check_rule(bad)
    with pytest.raises(InvalidInput, match="no pool for level 4"):
        spp_bins(13, 4, rule)
    with pytest.raises(InvalidInput, match="plugin knows the adaptive, window and caffe rules"):
        plugin_spp(GraphBuilder(), "x", (1, 2), rule)


def caffe_pool_reference(x: np.ndarray, kernel: int, stride: int, pad: int, method: str) -> np.ndarray:
    """Caffe's pooling_layer.cpp forward, loop for loop (NOTES.md): CEIL count, last-window clip, AVE divisor."""
    height, width = x.shape[-2:]

    def count(a: int) -> int:
        pooled = math.ceil((a + 2 * pad - kernel) / stride) + 1
        return pooled - 1 if pad and (pooled - 1) * stride >= a + pad else pooled

    out = np.zeros((*x.shape[:2], count(height), count(width)), np.float64)
    for ph in range(out.shape[2]):
        for pw in range(out.shape[3]):
            hs, ws = ph * stride - pad, pw * stride - pad
            he, we = min(hs + kernel, height + pad), min(ws + kernel, width + pad)
            size = (he - hs) * (we - ws)
            window = x[:, :, max(hs, 0) : min(he, height), max(ws, 0) : min(we, width)]
            out[:, :, ph, pw] = window.max((2, 3)) if method == "max" else window.sum((2, 3)) / size
    return out


@pytest.mark.parametrize("method", ["max", "ave"])
def test_caffe_pooling_with_padding_matches_caffes_loops(method):
    rng = np.random.default_rng(4)
    for kernel, stride, pad in ((3, 2, 1), (2, 2, 1), (3, 1, 2), (5, 3, 2), (4, 4, 0)):
        for h, w in ((7, 9), (8, 8), (13, 6), (5, 11)):
            x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
            ours = CaffePool2d(kernel, stride, pad, method)(torch.from_numpy(x)).numpy()
            expected = caffe_pool_reference(x.astype(np.float64), kernel, stride, pad, method)
            assert ours.shape == expected.shape, (kernel, stride, pad, h, w)
            np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def test_dynamic_onnx_refuses_a_pool_whose_last_window_depends_on_the_size(files, tmp_path):
    from sppnet.export.onnx_model import model_to_onnx

    prototxt, caffemodel, _ = files
    prototxt.write_text(SMALL.replace('layer { name: "spp"', 'layer { name: "pool1" type: "Pooling" bottom: "conv1" '
                        'top: "conv1p" pooling_param { kernel_size: 2 stride: 2 pad: 1 } }\nlayer { name: "spp"')
                        .replace('bottom: "conv1" top: "spp"', 'bottom: "conv1p" top: "spp"'))
    model = load_model(Path(import_caffe(prototxt, caffemodel, tmp_path / "run")).parent)
    model_to_onnx(model, size=(33, 33))  # a fixed size is exact: the clip is decided at export
    with pytest.raises(InvalidInput, match=r"pool pool1 \(k2 s2 p1\): its last-window clip depends on the input"):
        model_to_onnx(model, spp_form="decomposed")


def test_export_refuses_sizes_where_a_level_is_uneven_and_names_sizes_that_work(tmp_path):
    from sppnet.core.models import build_model
    from sppnet.core.runs import save_trained
    from sppnet.export.caffe import export_caffe

    model = build_model("zf5_cpu", num_classes=4).eval()
    save_trained(tmp_path / "run", model, classes=list("abcd"), preprocess=model.spec.default_preprocess())
    # at 90 px conv5 is 4x4, where level 6's adaptive bins [0,1) [0,2) [1,2) [2,3) [2,4) [3,4) are uneven
    with pytest.raises(InvalidInput, match=r"at 90x90 \(conv5 4x4\) the adaptive bins of level\(s\) 6 are not "
                       r"evenly spaced.*e\.g\. --size (\d+)x") as info:
        export_caffe(tmp_path / "run", tmp_path / "caffe", size=(90, 90))
    assert "\n" not in str(info.value) and not (tmp_path / "caffe").exists()
    suggested = int(str(info.value).split("--size ")[1].split("x")[0])
    export_caffe(tmp_path / "run", tmp_path / "caffe", size=(suggested, suggested))


def test_caffe_commands_import_and_export_with_one_line_errors(files, tmp_path, capsys):
    import argparse

    from sppnet.cli import caffe
    from sppnet.core.errors import SppnetError

    parser = argparse.ArgumentParser(prog="sppnet")
    caffe.register(parser.add_subparsers(dest="command", required=True))
    prototxt, caffemodel, _ = files
    args = parser.parse_args(["caffe", "import", str(prototxt), str(caffemodel), "--out", str(tmp_path / "run"),
                              "--mean-bgr", "104,117,123", "--scale", "0.5"])
    args.run(args)
    assert "from Caffe V2, 3 classes, pyramid [1, 2] (caffe)" in capsys.readouterr().out
    assert read_run_info(tmp_path / "run").card.preprocess.mean_bgr == (104.0, 117.0, 123.0)
    args = parser.parse_args(["caffe", "export", str(tmp_path / "run"), "--out", str(tmp_path / "caffe")])
    args.run(args)
    assert (tmp_path / "caffe" / "deploy.prototxt").is_file() and (tmp_path / "caffe" / "weights.caffemodel").is_file()
    args = parser.parse_args(["caffe", "import", str(prototxt), str(prototxt), "--out", str(tmp_path / "bad")])
    with pytest.raises(SppnetError) as info:
        args.run(args)
    assert "\n" not in str(info.value) and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        parser.parse_args(["caffe", "import", "a", "b", "--out", "r", "--mean-bgr", "1,2"])
