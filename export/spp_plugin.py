"""The SPP TensorRT plugin's plain logic: names, attributes, output shape, supported types and launch grid.

No tensorrt import here: `trt_plugin.py` only adapts these functions to `tensorrt.plugin`, so everything the plugin
decides is unit-tested on any machine. The kernel itself is `spp_triton.py`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sppnet.core.bins import DEFAULT_LEVELS, RULES, check_levels, check_rule
from sppnet.core.errors import InvalidInput

PLUGIN_NAME = "SpatialPyramidPooling"
PLUGIN_NAMESPACE = "sppnet"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
ONNX_OP_TYPE = PLUGIN_NAME
ONNX_DOMAIN = PLUGIN_NAMESPACE
# TensorRT's ONNX parser finds a plugin by the node's op type and these two string attributes, not by its domain.
ONNX_PLUGIN_ATTRIBUTES: Mapping[str, str] = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}

# The kernel's tl.constexpr RULE: one compiled variant per rule.
RULE_CODES: Mapping[str, int] = {rule: code for code, rule in enumerate(RULES)}

SUPPORTED_DTYPES: tuple[str, ...] = ("float32", "float16")
SUPPORTED_FORMATS: tuple[str, ...] = ("linear",)
_DTYPE_NAMES = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "kfloat": "float32",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "khalf": "float16",
}
_AUTOTUNE_DTYPES = {"float32": "FP32", "float16": "FP16"}

MAX_BLOCK_C = 64
# CUDA's limits on a grid's x and y extents.
MAX_GRID = (2**31 - 1, 65535)

Dim = TypeVar("Dim")


@dataclass(frozen=True)
class SPPAttributes:
    """The plugin's validated attributes: the pyramid's bin counts (in output order) and the binning rule."""

    levels: tuple[int, ...] = DEFAULT_LEVELS
    rule: str = "adaptive"

    def __post_init__(self) -> None:
        if (
            not isinstance(self.levels, tuple)
            or any(type(n) is not int or n < 1 for n in self.levels)
            or not self.levels
        ):
            raise InvalidInput(
                f"SPPAttributes.levels must be a tuple of ints >= 1; got {self.levels!r}: use parse_attributes"
            )
        kernel_rule_code(self.rule)

    @property
    def rule_code(self) -> int:
        """The integer the kernel's RULE constexpr uses for this rule."""
        return RULE_CODES[self.rule]

    @property
    def bins_per_channel(self) -> int:
        """sum(n^2): output values per channel."""
        return sum(n * n for n in self.levels)

    def onnx_attributes(self) -> dict[str, Any]:
        """The attributes of the ONNX `SpatialPyramidPooling` node, including the ones TensorRT's parser needs."""
        return {"levels": list(self.levels), "rule": self.rule, **ONNX_PLUGIN_ATTRIBUTES}


def kernel_rule_code(rule: str) -> int:
    """The kernel's RULE code of a rule; a file's "pools@" rule (or any other) is refused with the fix."""
    check_rule(rule)
    if rule not in RULE_CODES:
        raise InvalidInput(
            f"the SPP kernel and plugin know the rules {', '.join(RULES)}, not {rule!r}: "
            "use the decomposed dynamic ONNX form (or the PyTorch layer) for this model"
        )
    return RULE_CODES[rule]


def parse_levels(levels: Iterable[Any]) -> tuple[int, ...]:
    """ONNX `levels` (ints: a list, tuple or 1-D integer array) as a validated tuple of bin counts."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise InvalidInput(f"SPP attribute 'levels' must be a list of ints such as [6, 3, 2, 1]; got {levels!r}")
    values = list(levels)
    try:
        if any(isinstance(v, bool) or getattr(v, "ndim", 0) != 0 for v in values):
            raise TypeError
        counts = [operator.index(v) for v in values]
    except TypeError:
        raise InvalidInput(
            f"SPP attribute 'levels' must hold integers only; got {values!r}: write the bin counts as ints"
        ) from None
    return check_levels(counts)


def parse_rule(rule: str | bytes) -> str:
    """ONNX `rule` (a string, or bytes as TensorRT plugin fields may carry it) as a validated rule name."""
    rule = _text(rule, "rule")
    check_rule(rule)
    return rule


def _text(value: object, what: str) -> str:
    """A string attribute as str: bytes are decoded as ASCII with trailing NULs (C strings) dropped."""
    if isinstance(value, bytes):
        try:
            return value.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise InvalidInput(f"SPP attribute {what!r} is not ASCII: {value!r}") from None
    if not isinstance(value, str):
        raise InvalidInput(f"SPP attribute {what!r} must be a string; got {type(value).__name__} {value!r}")
    return value


def parse_attributes(levels: Iterable[Any], rule: str | bytes) -> SPPAttributes:
    """Validated `SPPAttributes` from the plugin's raw `levels` and `rule` fields."""
    return SPPAttributes(parse_levels(levels), parse_rule(rule))


def attributes_from_onnx(attributes: Mapping[str, Any]) -> SPPAttributes:
    """Validated `SPPAttributes` from an ONNX node's attribute mapping (name -> value).

    `plugin_namespace` and `plugin_version` may be present and must then name this plugin; any other unknown
    attribute is refused rather than silently ignored.
    """
    missing = {"levels", "rule"} - set(attributes)
    if missing:
        raise InvalidInput(
            f"SpatialPyramidPooling node lacks attribute(s) {sorted(missing)}: export it with levels and rule"
        )
    unknown = set(attributes) - {"levels", "rule", *ONNX_PLUGIN_ATTRIBUTES}
    if unknown:
        raise InvalidInput(f"SpatialPyramidPooling node has unknown attribute(s) {sorted(unknown)}: remove them")
    for name, expected in ONNX_PLUGIN_ATTRIBUTES.items():
        if name in attributes and _text(attributes[name], name) != expected:
            raise InvalidInput(
                f"SpatialPyramidPooling node has {name}={attributes[name]!r}; this plugin needs {expected!r}"
            )
    return parse_attributes(attributes["levels"], attributes["rule"])


def output_shape(input_dims: Sequence[Dim], levels: Sequence[int]) -> tuple[Dim, Dim]:
    """(N, C * sum(n^2)) from (N, C, H, W).

    Works on ints and on TensorRT shape expressions alike: it only indexes the dims and multiplies C by an int.
    """
    dims = tuple(input_dims)
    if len(dims) != 4:
        raise InvalidInput(f"SpatialPyramidPooling needs a 4-D (N, C, H, W) input; got {len(dims)} dims: reshape it")
    return dims[0], dims[1] * sum(n * n for n in check_levels(levels))


def dtype_name(dtype: object) -> str:
    """Canonical name of a data type given as a string, a TensorRT/NumPy/torch dtype or an enum (by its name)."""
    name = getattr(dtype, "name", None)
    text = name if isinstance(name, str) else str(dtype)
    text = text.lower().rsplit(".", 1)[-1]
    return _DTYPE_NAMES.get(text, text)


def format_name(tensor_format: object) -> str:
    """Canonical name of a tensor format given as a string or an enum (by its name), e.g. 'linear'."""
    name = getattr(tensor_format, "name", None)
    text = name if isinstance(name, str) else str(tensor_format)
    return text.lower().rsplit(".", 1)[-1].removeprefix("k")


def supports_combination(
    input_dtype: object, output_dtype: object, input_format: object, output_format: object
) -> bool:
    """Whether the kernel runs this input/output (dtype, format): float32 or float16, same for both, linear NCHW."""
    dtype_in, dtype_out = dtype_name(input_dtype), dtype_name(output_dtype)
    formats = (format_name(input_format), format_name(output_format))
    return dtype_in == dtype_out and dtype_in in SUPPORTED_DTYPES and all(f in SUPPORTED_FORMATS for f in formats)


def check_combination(input_dtype: object, output_dtype: object, input_format: object, output_format: object) -> None:
    """Raise a ValueError naming the supported types when `supports_combination` is False."""
    if not supports_combination(input_dtype, output_dtype, input_format, output_format):
        raise InvalidInput(
            f"SpatialPyramidPooling runs float32 or float16 (input and output alike) in linear NCHW only; got "
            f"{dtype_name(input_dtype)}/{format_name(input_format)} -> {dtype_name(output_dtype)}/"
            f"{format_name(output_format)}: cast the input or build with those types"
        )


def autotune_types() -> str:
    """`tensorrt.plugin.AutoTuneCombination` type spec: the input and output share one of the supported dtypes."""
    one = "|".join(_AUTOTUNE_DTYPES[d] for d in SUPPORTED_DTYPES)
    return f"{one}, {one}"


def autotune_formats() -> str:
    """`tensorrt.plugin.AutoTuneCombination` format spec: linear layout only."""
    return "|".join(f.upper() for f in SUPPORTED_FORMATS)


def block_channels(channels: int) -> int:
    """Channels per kernel program: the next power of two >= C, capped at MAX_BLOCK_C."""
    if channels < 1:
        raise InvalidInput(f"SPP needs at least one channel; got {channels}")
    return min(MAX_BLOCK_C, 1 << (channels - 1).bit_length())


def launch_grid(batch: int, channels: int, levels: Sequence[int], block_c: int) -> tuple[int, int]:
    """Kernel grid: axis 0 is (image, output bin over all levels), axis 1 the channel blocks."""
    if block_c < 1 or block_c & (block_c - 1):
        raise InvalidInput(f"block_c must be a power of two >= 1 (Triton's arange); got {block_c}")
    if batch < 0 or channels < 1:
        raise InvalidInput(f"SPP launch needs batch >= 0 and channels >= 1; got batch {batch}, channels {channels}")
    grid = (batch * sum(n * n for n in check_levels(levels)), -(-channels // block_c))
    if grid[0] > MAX_GRID[0] or grid[1] > MAX_GRID[1]:
        raise InvalidInput(f"SPP launch grid {grid} exceeds CUDA's {MAX_GRID}: split the batch or raise block_c")
    return grid
