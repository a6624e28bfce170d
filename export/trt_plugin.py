"""The SPP plugin for full TensorRT 10.x (`tensorrt.plugin`, quickly deployable plugins): a thin adapter.

All decisions live in `spp_plugin.py` (attributes, output shape, supported types) and the kernel in `spp_triton.py`;
this file only maps them onto `tensorrt.plugin`'s register / autotune / impl. Importable without TensorRT;
`register_spp_plugin()` imports it and registers once.

What cannot be verified without full TensorRT and a GPU (neither exists where CI runs; TensorRT-RTX has no plugins):
- that the installed TensorRT accepts these register / autotune / impl signatures and builds an engine with them;
- that TensorRT's ONNX parser maps a `SpatialPyramidPooling` node carrying `plugin_namespace="sppnet"` to this
  plugin, passing `levels` as an int32 array and `rule` as a string, and not `plugin_namespace`/`plugin_version`;
- that the output shape expression N x (C * sum(n^2)) built from TensorRT's ShapeExprs resolves correctly at run time
  for every profile shape;
- that `torch.as_tensor` over TensorRT's tensors gives the right dtype and shape, and that the kernel runs on the
  stream TensorRT passes;
- the plugin engine's outputs against PyTorch, and engine serialisation (a process that loads such an engine must
  call `register_spp_plugin()` first).
The implementation is a Python callback (`tensorrt.plugin.impl`), so an engine using the plugin needs Python, torch
and Triton wherever it runs; an `aot_impl` built on `spp_triton.compile_native` would lift that, and is not written.
What is verified here: everything it calls (spp_plugin, and the kernel under the Triton interpreter), that it
imports without TensorRT, that `register_spp_plugin()` returns False without side effects when TensorRT is absent,
and, against a stand-in `tensorrt.plugin`, the signatures it registers and what its shape and autotune functions
return.
"""

# No `from __future__ import annotations` here: tensorrt.plugin inspects the annotation objects themselves
# (issubclass(annotation, TensorDesc)), which string annotations would break.

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from sppnet.core.errors import BuildError
from sppnet.export.spp_plugin import (
    PLUGIN_ID,
    SPPAttributes,
    autotune_formats,
    autotune_types,
    check_combination,
    output_shape,
    parse_attributes,
)

_registered = False


def register_spp_plugin() -> bool:
    """Register `sppnet::SpatialPyramidPooling` with full TensorRT once; False, with no side effects, without it."""
    global _registered
    if _registered:
        return True
    try:
        tensorrt = importlib.import_module("tensorrt")
    except ImportError:
        return False
    try:
        trtp = importlib.import_module("tensorrt.plugin")
    except ImportError as error:
        version = getattr(tensorrt, "__version__", "?")
        raise BuildError(
            f"TensorRT {version} has no tensorrt.plugin module: install TensorRT 10.7 or newer for the SPP plugin"
        ) from error
    _define(trtp)
    _registered = True
    return True


def _define(trtp: ModuleType) -> None:
    """Register the shape, autotune and implementation functions with `tensorrt.plugin`."""

    @trtp.register(PLUGIN_ID)
    def spp_shape(inp0: trtp.TensorDesc, levels: npt.NDArray[np.int32], rule: str) -> trtp.TensorDesc:
        attributes = parse_attributes(levels, rule)
        return trtp.from_shape_expr(
            output_shape([inp0.shape_expr[i] for i in range(inp0.ndim)], attributes.levels), dtype=inp0.dtype
        )

    @trtp.autotune(PLUGIN_ID)
    def spp_autotune(inp0: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(autotune_types(), autotune_formats())]

    @trtp.impl(PLUGIN_ID)
    def spp_impl(
        inp0: trtp.Tensor, levels: npt.NDArray[np.int32], rule: str, outputs: tuple[trtp.Tensor], stream: int
    ) -> None:
        attributes = parse_attributes(levels, rule)
        check_combination(inp0.dtype, outputs[0].dtype, inp0.format, outputs[0].format)
        _launch(inp0, outputs[0], attributes, stream)


def _launch(inp0: Any, out0: Any, attributes: SPPAttributes, stream: int) -> None:
    """Run the Triton kernel on TensorRT's buffers (zero-copy torch views) on TensorRT's stream."""
    import torch

    from sppnet.export.spp_triton import spp_triton

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        x = torch.as_tensor(inp0, device="cuda")
        out = torch.as_tensor(out0, device="cuda")
        spp_triton(x, attributes.levels, attributes.rule, out=out)
