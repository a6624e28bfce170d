"""SPP as ONNX: the static and decomposed forms equal a per-bin loop exactly in ONNX Runtime, for every rule, at
fixed sizes and (decomposed) at any runtime size; the plugin form is one custom node with the pyramid's attributes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sppnet.engines.backends.onnxrt import SessionFromOnnx
from sppnet.export.onnx_builder import GraphBuilder
from sppnet.export.onnx_spp import bin_edges, decomposed_spp, plugin_spp, static_spp
from sppnet.export.spp_plugin import ONNX_DOMAIN, ONNX_OP_TYPE

from ..core import brute_force
from ..core.brute_force import NoBins

RULES = ("adaptive", "window", "caffe")
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def _session(g: GraphBuilder, output: str, height: int | str = "h", width: int | str = "w") -> object:
    x = helper.make_tensor_value_info("x", g.onnx_dtype, ["n", "c", height, width])
    y = helper.make_tensor_value_info(output, g.onnx_dtype, ["n", "d"])
    model = g.model("spp", [x], [y])
    onnx.checker.check_model(model)
    return onnx_session_from_model(model)


def onnx_session_from_model(model: onnx.ModelProto) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _binnable(h: int, w: int, levels: tuple[int, ...], rule: str) -> bool:
    try:
        brute_force.spp(np.zeros((1, 1, h, w)), levels, rule)
    except NoBins:
        return False
    return True


def test_the_decomposed_bin_edges_are_the_rules_edges_for_every_length() -> None:
    for rule in RULES:
        for n in range(1, 9):
            g = GraphBuilder()
            a = g.node("Squeeze", ["a"])
            start, end = bin_edges(g, a, n, rule)
            ins = [helper.make_tensor_value_info("a", TensorProto.INT64, [1])]
            outs = [helper.make_tensor_value_info(t, TensorProto.INT64, [n]) for t in (start, end)]
            session = onnx_session_from_model(g.model("edges", ins, outs))
            for length in range(1, 90):
                try:
                    want = brute_force.RULES[rule](length, n)
                except NoBins:
                    continue
                got_start, got_end = session.run(None, {"a": np.array([length], np.int64)})
                assert list(zip(got_start.tolist(), got_end.tolist(), strict=True)) == want, (rule, n, length)


SIZES = [
    (12, 25),
    (6, 18),
    (24, 37),
    (1, 1),
    (1, 7),
    (2, 60),
    (60, 2),
    (3, 3),
    (5, 9),
    (10, 10),
    (13, 13),
    (13, 17),
    (11, 14),
    (23, 31),
    (37, 8),
]
LEVELS = [(6, 3, 2, 1), (4, 2, 1), (5,)]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("rule", RULES)
def test_static_spp_equals_a_per_bin_loop_at_every_binnable_size(rule: str, precision: str) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for levels in LEVELS:
        for h, w in SIZES:
            if not _binnable(h, w, levels, rule):
                continue
            g = GraphBuilder(precision)
            session = _session(g, static_spp(g, "x", h, w, levels, rule), h, w)
            x = rng.normal(size=(2, 5, h, w)).astype(DTYPES[precision])
            got = session.run(None, {"x": x})[0]
            assert np.array_equal(got, brute_force.spp(x, levels, rule)), (levels, h, w)
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("rule", RULES)
def test_one_decomposed_graph_equals_a_per_bin_loop_at_every_runtime_size(rule: str, precision: str) -> None:
    rng = np.random.default_rng(1)
    extra = [tuple(int(v) for v in rng.integers(1, 40, 2)) for _ in range(25)]
    for levels in LEVELS:
        g = GraphBuilder(precision)
        session = _session(g, decomposed_spp(g, "x", levels, rule))
        checked = 0
        for h, w in SIZES + extra:
            if not _binnable(h, w, levels, rule):
                continue
            x = rng.normal(size=(2, 3, h, w)).astype(DTYPES[precision])
            got = session.run(None, {"x": x})[0]
            assert np.array_equal(got, brute_force.spp(x, levels, rule)), (levels, h, w)
            checked += 1
        assert checked >= 4, (levels, checked)


def test_the_static_form_is_one_maxpool_per_level_where_the_bins_are_even() -> None:
    # ZF-5 at 224 (conv5 13x13): every adaptive level is evenly spaced (level 6: windows of 3 every 2 cells).
    g = GraphBuilder()
    static_spp(g, "x", 13, 13, (6, 3, 2, 1), "adaptive")
    assert [n.op_type for n in g.nodes].count("MaxPool") == 4
    assert not any(n.op_type == "Slice" for n in g.nodes)
    # At 180 (conv5 10x10) level 6's bins are 2 or 3 cells wide: one Slice + ReduceMax per bin and axis.
    g = GraphBuilder()
    static_spp(g, "x", 10, 10, (6,), "adaptive")
    assert [n.op_type for n in g.nodes].count("Slice") == 12


def test_the_plugin_form_is_one_custom_node_carrying_levels_and_rule() -> None:
    g = GraphBuilder()
    plugin_spp(g, "x", (6, 3, 2, 1), "caffe")
    (node,) = g.nodes
    assert (node.op_type, node.domain) == (ONNX_OP_TYPE, ONNX_DOMAIN)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["levels"] == [6, 3, 2, 1] and attrs["rule"] == b"caffe"
    assert g.domains[ONNX_DOMAIN] == 1


def test_an_unknown_rule_is_refused_by_every_form() -> None:
    for build in (
        lambda g: static_spp(g, "x", 13, 13, (6,), "floor"),
        lambda g: decomposed_spp(g, "x", (6,), "floor"),
        lambda g: plugin_spp(g, "x", (6,), "floor"),
    ):
        with pytest.raises(ValueError, match="unknown SPP rule 'floor'"):
            build(GraphBuilder())


def test_a_size_the_rule_cannot_bin_is_refused_at_export() -> None:
    with pytest.raises(ValueError, match="window rule"):
        static_spp(GraphBuilder(), "x", 10, 10, (6,), "window")


def test_an_exported_spp_graph_runs_from_its_file(tmp_path) -> None:
    g = GraphBuilder()
    out = static_spp(g, "x", 4, 4, (2,), "adaptive")
    model = g.model(
        "spp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "spp.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    session = SessionFromOnnx(path, providers=["CPUExecutionProvider"])()
    assert session.run(None, {"x": x})[0].tolist() == [[5.0, 7.0, 13.0, 15.0]]
