"""A small ONNX graph builder: unique names, constants and initializers in one precision, node by node."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sppnet.core.errors import InvalidInput

OPSET = 17
IR_VERSION = 8  # opset 17's IR; readable by ONNX Runtime >= 1.13 and TensorRT 8.6+/TensorRT-RTX
PRECISIONS = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}


class GraphBuilder:
    """Accumulates nodes and initializers; float constants and weights are stored in the graph's precision."""

    def __init__(self, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise InvalidInput(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.np_dtype, self.onnx_dtype = PRECISIONS[precision]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.domains: dict[str, int] = {"": OPSET}
        self._counts: dict[str, int] = {}
        self._neg_inf: str | None = None

    def name(self, stem: str) -> str:
        """A fresh tensor or node name starting with `stem`."""
        count = self._counts.get(stem, 0)
        self._counts[stem] = count + 1
        return stem if count == 0 else f"{stem}_{count}"

    def node(self, op: str, inputs: list[str], *, name: str | None = None, domain: str = "", **attrs: Any) -> str:
        """Append one single-output node; returns its output's name."""
        out = self.name(name or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float initializer, cast to the graph's precision."""
        return self._initializer(name, np.asarray(array, dtype=self.np_dtype))

    def const(self, array: np.ndarray, stem: str = "const") -> str:
        """A constant initializer kept in its own dtype (shape and index arithmetic)."""
        return self._initializer(stem, np.asarray(array))

    def neg_inf(self) -> str:
        """The scalar -inf in the graph's precision, shared by every masked max."""
        if self._neg_inf is None:
            self._neg_inf = self.weight("neg_inf", np.array(-np.inf))
        return self._neg_inf

    def use_domain(self, domain: str, version: int) -> None:
        """Declare a custom operator domain the graph uses."""
        self.domains[domain] = version

    def annotate(self, tensor: str, elem_type: int, shape: list[int | str | None]) -> None:
        """Record a tensor's type and shape (for outputs of nodes shape inference cannot see into)."""
        self.value_info.append(helper.make_tensor_value_info(tensor, elem_type, shape))

    def _initializer(self, stem: str, array: np.ndarray) -> str:
        out = self.name(stem)
        self.initializers.append(numpy_helper.from_array(array, out))
        return out

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], doc: str = ""
    ) -> onnx.ModelProto:
        """The finished model, with its opsets and IR version."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers, value_info=self.value_info)
        opsets = [helper.make_opsetid(domain, version) for domain, version in self.domains.items()]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="sppnet")
        model.doc_string = doc
        return model
