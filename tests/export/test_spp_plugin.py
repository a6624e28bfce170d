"""The SPP plugin's plain logic (names, attributes, output shape, types, grid) and its TensorRT adapter.

Full TensorRT is not installed where these run: the adapter is checked for importing without it, for registering
nothing without it, and against a stand-in `tensorrt.plugin` for the functions and signatures it registers.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import subprocess
import sys
import typing
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch

from sppnet.core.bins import RULES
from sppnet.core.errors import BuildError
from sppnet.core.spp import spatial_pyramid_pool
from sppnet.export import spp_plugin, trt_plugin
from sppnet.export.spp_plugin import (
    PLUGIN_ID,
    SPPAttributes,
    attributes_from_onnx,
    autotune_formats,
    autotune_types,
    block_channels,
    check_combination,
    launch_grid,
    output_shape,
    parse_attributes,
    supports_combination,
)


class DataType(enum.Enum):
    """TensorRT-like dtype enum (only the names matter)."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    BF16 = 7


class TensorFormat(enum.Enum):
    """TensorRT-like format enum."""

    LINEAR = 0
    CHW32 = 3
    HWC = 8


class ShapeExpr:
    """A symbolic dimension that supports only what TensorRT's ShapeExpr surely does and output_shape may use."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __mul__(self, other: object) -> ShapeExpr:
        if type(other) is not int:
            raise TypeError(f"ShapeExpr * {type(other).__name__}")
        return ShapeExpr(f"({self.text}*{other})")

    def _refuse(self, *args: object) -> typing.NoReturn:
        raise TypeError("output_shape must only multiply C by an int")

    __rmul__ = __add__ = __radd__ = __floordiv__ = __int__ = __index__ = __bool__ = __eq__ = _refuse
    __hash__ = None  # type: ignore[assignment]


def test_names() -> None:
    assert (spp_plugin.PLUGIN_NAME, spp_plugin.PLUGIN_NAMESPACE, spp_plugin.PLUGIN_VERSION) == (
        "SpatialPyramidPooling",
        "sppnet",
        "1",
    )
    assert PLUGIN_ID == "sppnet::SpatialPyramidPooling"
    assert (spp_plugin.ONNX_OP_TYPE, spp_plugin.ONNX_DOMAIN) == ("SpatialPyramidPooling", "sppnet")
    assert spp_plugin.ONNX_PLUGIN_ATTRIBUTES == {"plugin_namespace": "sppnet", "plugin_version": "1"}


def test_every_rule_has_its_own_kernel_code() -> None:
    assert set(spp_plugin.RULE_CODES) == set(RULES)
    assert sorted(spp_plugin.RULE_CODES.values()) == list(range(len(RULES)))


@pytest.mark.parametrize(
    ("levels", "rule", "expected"),
    [
        ([6, 3, 2, 1], "adaptive", SPPAttributes((6, 3, 2, 1), "adaptive")),
        ((4, 2, 1), b"window", SPPAttributes((4, 2, 1), "window")),
        (np.array([5], dtype=np.int32), b"caffe\0", SPPAttributes((5,), "caffe")),
        (np.array([3, 1], dtype=np.int64), np.str_("adaptive"), SPPAttributes((3, 1), "adaptive")),
        ([np.int32(2), 1], "caffe", SPPAttributes((2, 1), "caffe")),
    ],
)
def test_parse_attributes(levels: Any, rule: Any, expected: SPPAttributes) -> None:
    parsed = parse_attributes(levels, rule)
    assert parsed == expected
    assert all(type(n) is int for n in parsed.levels)


@pytest.mark.parametrize(
    ("levels", "rule", "message"),
    [
        ([], "adaptive", "non-empty"),
        ([6, 0], "adaptive", "non-empty"),
        ([6, -1], "adaptive", "non-empty"),
        ([6.0, 3], "adaptive", "integers only"),
        ([True, 2], "adaptive", "integers only"),
        (np.array([[6, 3]]), "adaptive", "integers only"),
        ("6321", "adaptive", "list of ints"),
        (6, "adaptive", "list of ints"),
        ([6, 3], "nearest", "unknown SPP rule"),
        ([6, 3], b"\xffadaptive", "not ASCII"),
        ([6, 3], 1, "must be a string"),
    ],
)
def test_parse_attributes_refuses(levels: Any, rule: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_attributes(levels, rule)


def test_attributes_are_frozen_and_validated() -> None:
    attributes = SPPAttributes()
    assert attributes == SPPAttributes((6, 3, 2, 1), "adaptive")
    assert attributes.bins_per_channel == 50
    assert attributes.rule_code == spp_plugin.RULE_CODES["adaptive"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        attributes.rule = "caffe"  # type: ignore[misc]
    for levels in ([6, 3], (6.0,), (), (2, 0)):
        with pytest.raises(ValueError, match="tuple of ints"):
            SPPAttributes(levels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown SPP rule"):
        SPPAttributes((2, 1), "max")


def test_onnx_attributes_round_trip_through_an_onnx_node() -> None:
    attributes = SPPAttributes((4, 2, 1), "caffe")
    node = onnx.helper.make_node(
        spp_plugin.ONNX_OP_TYPE, ["x"], ["y"], domain=spp_plugin.ONNX_DOMAIN, **attributes.onnx_attributes()
    )
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert values["rule"] == b"caffe" and values["plugin_namespace"] == b"sppnet"  # ONNX strings come back as bytes
    assert attributes_from_onnx(values) == attributes


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"levels": [2, 1]}, "lacks"),
        ({"levels": [2, 1], "rule": "adaptive", "mode": "max"}, "unknown attribute"),
        ({"levels": [2, 1], "rule": "adaptive", "plugin_namespace": b"other"}, "plugin_namespace"),
        ({"levels": [2, 1], "rule": "adaptive", "plugin_version": "2"}, "plugin_version"),
    ],
)
def test_attributes_from_onnx_refuses(attributes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attributes_from_onnx(attributes)


@pytest.mark.parametrize("levels", [(6, 3, 2, 1), (4, 2, 1), (5,), (1, 2, 4)])
def test_output_shape_matches_the_reference(levels: tuple[int, ...]) -> None:
    x = torch.zeros(3, 7, 11, 13)
    assert output_shape(x.shape, levels) == tuple(spatial_pyramid_pool(x, levels).shape)


def test_output_shape_on_shape_expressions_only_multiplies_c_by_an_int() -> None:
    dims = [ShapeExpr(name) for name in "NCHW"]
    batch, features = output_shape(dims, (6, 3, 2, 1))
    assert batch is dims[0]
    assert features.text == "(C*50)"


@pytest.mark.parametrize("dims", [(1, 256, 13), (1, 256, 13, 13, 1)])
def test_output_shape_needs_four_dims(dims: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="4-D"):
        output_shape(dims, (6, 3, 2, 1))


@pytest.mark.parametrize(
    ("dtypes", "formats", "supported"),
    [
        (("float32", "float32"), ("linear", "linear"), True),
        (("float16", "float16"), ("linear", "linear"), True),
        ((DataType.FLOAT, DataType.FLOAT), (TensorFormat.LINEAR, TensorFormat.LINEAR), True),
        ((DataType.HALF, DataType.HALF), (TensorFormat.LINEAR, TensorFormat.LINEAR), True),
        ((torch.float16, torch.float16), ("LINEAR", "kLINEAR"), True),
        (("FP32", "fp32"), ("LINEAR", "LINEAR"), True),
        ((DataType.FLOAT, DataType.HALF), (TensorFormat.LINEAR, TensorFormat.LINEAR), False),
        ((DataType.INT8, DataType.INT8), (TensorFormat.LINEAR, TensorFormat.LINEAR), False),
        ((DataType.BF16, DataType.BF16), (TensorFormat.LINEAR, TensorFormat.LINEAR), False),
        ((torch.float64, torch.float64), ("linear", "linear"), False),
        ((DataType.HALF, DataType.HALF), (TensorFormat.CHW32, TensorFormat.LINEAR), False),
        ((DataType.FLOAT, DataType.FLOAT), (TensorFormat.LINEAR, TensorFormat.HWC), False),
    ],
)
def test_supported_combinations(dtypes: tuple[object, object], formats: tuple[object, object], supported: bool) -> None:
    assert supports_combination(dtypes[0], dtypes[1], formats[0], formats[1]) is supported
    if supported:
        check_combination(dtypes[0], dtypes[1], formats[0], formats[1])
    else:
        with pytest.raises(ValueError, match="float32 or float16"):
            check_combination(dtypes[0], dtypes[1], formats[0], formats[1])


def test_autotune_specs_say_the_same_as_supports_combination() -> None:
    assert autotune_types() == "FP32|FP16, FP32|FP16"  # position by position: both FP32 or both FP16
    assert autotune_formats() == "LINEAR"


@pytest.mark.parametrize(("channels", "block"), [(1, 1), (5, 8), (16, 16), (17, 32), (64, 64), (256, 64)])
def test_block_channels(channels: int, block: int) -> None:
    assert block_channels(channels) == block


@pytest.mark.parametrize(
    ("batch", "channels", "levels", "block", "grid"),
    [
        (2, 5, (6, 3, 2, 1), 8, (100, 1)),
        (3, 130, (1,), 64, (3, 3)),
        (1, 256, (4, 2, 1), 64, (21, 4)),
        (0, 8, (6, 3, 2, 1), 8, (0, 1)),
    ],
)
def test_launch_grid(batch: int, channels: int, levels: tuple[int, ...], block: int, grid: tuple[int, int]) -> None:
    assert launch_grid(batch, channels, levels, block) == grid


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 8, (2,), 3), "power of two"),
        ((1, 8, (2,), 0), "power of two"),
        ((1, 0, (2,), 8), "channels >= 1"),
        ((1, 8, (), 8), "non-empty"),
        ((1, 65536 * 2, (2,), 1), "exceeds"),
    ],
)
def test_launch_grid_refuses(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launch_grid(*args)
    if args[1] < 1:
        with pytest.raises(ValueError, match="at least one channel"):
            block_channels(args[1])


# The TensorRT adapter.


def test_importing_the_adapter_imports_neither_tensorrt_nor_triton() -> None:
    code = "import sys, sppnet.export.trt_plugin; print(sorted({'tensorrt', 'triton'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_register_without_tensorrt_is_false_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setattr(trt_plugin, "_registered", False)
    before = set(sys.modules)
    assert trt_plugin.register_spp_plugin() is False
    assert set(sys.modules) == before
    assert trt_plugin._registered is False


class _FakeTrtp(ModuleType):
    """A stand-in `tensorrt.plugin` that records what is registered and checks it the way TensorRT 10 does."""

    class TensorDesc:
        def __init__(self, shape_expr: list[object], dtype: object) -> None:
            self.shape_expr, self.dtype, self.ndim = shape_expr, dtype, len(shape_expr)

    class Tensor(TensorDesc):
        def __init__(self, shape: list[int], dtype: object, tensor_format: object) -> None:
            super().__init__(shape, dtype)
            self.format = tensor_format

    class AutoTuneCombination:
        def __init__(self, types: str, formats: str) -> None:
            self.types, self.formats = types, formats

    def __init__(self) -> None:
        super().__init__("tensorrt.plugin")
        self.registered: dict[tuple[str, str], Any] = {}

    def _decorator(self, kind: str) -> Any:
        def take(plugin_id: str) -> Any:
            def record(fn: Any) -> Any:
                assert (kind, plugin_id) not in self.registered, f"{kind} registered twice"
                self.registered[kind, plugin_id] = fn
                return fn

            return record

        return take

    def register(self, plugin_id: str) -> Any:
        return self._decorator("register")(plugin_id)

    def autotune(self, plugin_id: str) -> Any:
        return self._decorator("autotune")(plugin_id)

    def impl(self, plugin_id: str) -> Any:
        return self._decorator("impl")(plugin_id)

    @staticmethod
    def from_shape_expr(shape: tuple[object, ...], dtype: object) -> SimpleNamespace:
        return SimpleNamespace(shape=shape, dtype=dtype)


@pytest.fixture
def fake_trtp(monkeypatch: pytest.MonkeyPatch) -> _FakeTrtp:
    trtp = _FakeTrtp()
    tensorrt = ModuleType("tensorrt")
    tensorrt.plugin = trtp  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(trt_plugin, "_registered", False)
    return trtp


def _params(fn: Any) -> list[tuple[str, Any]]:
    return [(name, p.annotation) for name, p in inspect.signature(fn).parameters.items()]


def test_register_defines_shape_autotune_and_impl_once(fake_trtp: _FakeTrtp) -> None:
    assert trt_plugin.register_spp_plugin() is True
    assert trt_plugin.register_spp_plugin() is True  # a second call registers nothing more
    assert set(fake_trtp.registered) == {(kind, PLUGIN_ID) for kind in ("register", "autotune", "impl")}


def test_registered_signatures_follow_tensorrt_plugin_rules(fake_trtp: _FakeTrtp) -> None:
    trt_plugin.register_spp_plugin()
    shape, autotune, impl = (fake_trtp.registered[kind, PLUGIN_ID] for kind in ("register", "autotune", "impl"))
    levels_type = npt.NDArray[np.int32]
    # tensorrt.plugin calls issubclass on these annotations: they must be objects, not strings.
    assert _params(shape) == [("inp0", fake_trtp.TensorDesc), ("levels", levels_type), ("rule", str)]
    assert inspect.signature(shape).return_annotation is fake_trtp.TensorDesc
    assert [name for name, _ in _params(autotune)] == ["inp0", "outputs"]
    assert typing.get_origin(inspect.signature(autotune).return_annotation) is list
    assert _params(impl)[:3] == [("inp0", fake_trtp.Tensor), ("levels", levels_type), ("rule", str)]
    assert [name for name, _ in _params(impl)] == ["inp0", "levels", "rule", "outputs", "stream"]
    assert typing.get_origin(_params(impl)[3][1]) is tuple and _params(impl)[4][1] is int


def test_registered_shape_and_autotune(fake_trtp: _FakeTrtp) -> None:
    trt_plugin.register_spp_plugin()
    shape = fake_trtp.registered["register", PLUGIN_ID]
    dims = [ShapeExpr(name) for name in "NCHW"]
    out = shape(fake_trtp.TensorDesc(dims, DataType.HALF), np.array([4, 2, 1], dtype=np.int32), "window")
    assert out.shape[0] is dims[0] and out.shape[1].text == "(C*21)" and out.dtype is DataType.HALF
    with pytest.raises(ValueError, match="unknown SPP rule"):
        shape(fake_trtp.TensorDesc(dims, DataType.HALF), np.array([2], dtype=np.int32), "nearest")
    with pytest.raises(ValueError, match="4-D"):
        shape(fake_trtp.TensorDesc(dims[:3], DataType.HALF), np.array([2], dtype=np.int32), "adaptive")
    (combination,) = fake_trtp.registered["autotune", PLUGIN_ID](fake_trtp.TensorDesc(dims, DataType.FLOAT), ())
    assert (combination.types, combination.formats) == ("FP32|FP16, FP32|FP16", "LINEAR")


def test_registered_impl_refuses_unsupported_types_before_touching_the_gpu(fake_trtp: _FakeTrtp) -> None:
    trt_plugin.register_spp_plugin()
    impl = fake_trtp.registered["impl", PLUGIN_ID]
    inp = fake_trtp.Tensor([1, 4, 6, 6], DataType.FLOAT, TensorFormat.LINEAR)
    out = fake_trtp.Tensor([1, 200], DataType.HALF, TensorFormat.LINEAR)
    with pytest.raises(ValueError, match="float32 or float16"):
        impl(inp, np.array([6, 3, 2, 1], dtype=np.int32), "adaptive", (out,), 0)


def test_tensorrt_without_its_plugin_module_says_which_version_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    tensorrt = ModuleType("tensorrt")
    tensorrt.__version__ = "10.3.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)
    monkeypatch.setattr(trt_plugin, "_registered", False)
    with pytest.raises(BuildError, match=r"10\.3\.0 has no tensorrt.plugin.*10\.7"):
        trt_plugin.register_spp_plugin()
