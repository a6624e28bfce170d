"""TensorRT engine building as lazy, composable loaders: `EngineFromNetwork(NetworkFromOnnx(path), ...)()`.

The builder module is chosen at run time: full `tensorrt` first (plugins, timing cache; needs a GPU to build),
then `tensorrt_rtx` (TensorRT for RTX: builds on a machine without a GPU, has no plugins and ignores timing
caches). Networks are always strongly typed, so each ONNX graph's own Casts decide its precision.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.atomic import write_atomic
from sppnet.core.errors import BuildError, InvalidInput
from sppnet.core.profiles import Profile
from sppnet.export.trt_module import Backend, load_backend, logger, recording, summary

# TensorRT-RTX's documented default targets for a CPU-only (ahead-of-time) build: Ampere and later; Turing (7.5)
# only when asked for explicitly (docs.nvidia.com/deeplearning/tensorrt-rtx, "CPU-Only AOT and TensorRT-RTX Engines").
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")
RTX_NO_TIMING_CACHE = "TensorRT-RTX ignores timing caches (its timing cache calls are no-ops, deprecated since 1.2)"


def custom_ops(path: Path) -> list[str]:
    """`domain::op_type` of every node outside the standard ONNX domains (custom ops need a TensorRT plugin)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: list[str] = []

    def visit(graph: Any) -> None:
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                found.append(f"{node.domain}::{node.op_type}")
            for attribute in node.attribute:
                for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    visit(sub)

    visit(model.graph)
    return sorted(set(found))


@dataclass
class ParsedNetwork:
    """A parsed network with the builder and parser that own it (the parser holds the network's weights)."""

    backend: Backend
    builder: Any
    network: Any
    parser: Any
    source: Path


class NetworkFromOnnx:
    """Lazy loader: parse an ONNX file into a strongly typed TensorRT network when called."""

    def __init__(self, path: str | os.PathLike[str], *, backend: Backend | None = None) -> None:
        self.path = Path(path)
        self.backend = backend

    def __call__(self) -> ParsedNetwork:
        backend = self.backend or load_backend()
        trt = backend.trt
        if not self.path.is_file():
            raise BuildError(f"no ONNX file at {self.path}: export it first with `sppnet export`")
        if not backend.supports_plugins:
            ops = custom_ops(self.path)
            if ops:  # never hand these to TensorRT-RTX: it has no plugins to build them
                raise BuildError(
                    f"{self.path.name} has custom ops ({', '.join(ops)}) that need a TensorRT plugin, which "
                    f"{backend.describe()} cannot load: build the decomposed dynamic model instead"
                )
        with recording(backend) as log:
            builder = trt.Builder(logger(backend))
            flags = 0
            if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
                flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger(backend))
            ok = parser.parse_from_file(str(self.path))
            if not ok:
                messages = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
                raise BuildError(
                    f"{self.path.name}: the {backend.describe()} ONNX parser refused it: "
                    f"{summary(messages or log.errors())}"
                )
        return ParsedNetwork(backend, builder, network, parser, self.path)


@dataclass(frozen=True)
class BuiltEngine:
    """A serialised engine and how it was built."""

    data: bytes
    builder: dict[str, str]
    target: dict[str, Any]
    timing_cache: dict[str, Any]
    seconds: float


def target_capabilities(backend: Backend, targets: Sequence[str]) -> list[Any]:
    """TensorRT-RTX's ComputeCapability values for targets such as "8.6"; a BuildError for any it does not know."""
    if not backend.is_rtx:
        raise BuildError(
            "compute capability targets are a TensorRT-RTX option: full TensorRT builds for the GPU it runs on; "
            "drop the targets or build with tensorrt_rtx"
        )
    if not targets:
        raise BuildError("no compute capability targets given: name at least one (e.g. 8.6) or leave the default")
    enum = backend.trt.ComputeCapability
    known = [m[2:-1] + "." + m[-1] for m in enum.__members__ if m.startswith("SM")]
    values = []
    for text in targets:
        member = "SM" + text.replace(".", "")
        if text not in known or not hasattr(enum, member):
            raise BuildError(
                f"compute capability {text!r} is not a TensorRT-RTX target: choose from {', '.join(known)}"
            )
        values.append(getattr(enum, member))
    return values


class EngineFromNetwork:
    """Lazy loader: build and serialise an engine from a network loader with the given profiles when called.

    Args:
        network: a callable returning a ParsedNetwork (e.g. NetworkFromOnnx).
        profiles: optimisation profiles for the network's one input.
        workspace_mb: scratch memory the builder's tactics may use; None keeps the builder's default.
        timing_cache: file the timing cache is loaded from and saved to (full TensorRT only).
        compute_capabilities: TensorRT-RTX target GPUs such as ("8.6", "12.0"); None keeps its defaults.
    """

    def __init__(
        self,
        network: Callable[[], ParsedNetwork],
        *,
        profiles: Sequence[Profile],
        workspace_mb: int | None = None,
        timing_cache: str | os.PathLike[str] | None = None,
        compute_capabilities: Sequence[str] | None = None,
    ) -> None:
        if not profiles:
            raise InvalidInput("an engine needs at least one optimisation profile")
        if workspace_mb is not None and workspace_mb < 1:
            raise InvalidInput(f"workspace must be at least 1 MiB; got {workspace_mb}")
        self.network = network
        self.profiles = list(profiles)
        self.workspace_mb = workspace_mb
        self.timing_cache = Path(timing_cache) if timing_cache is not None else None
        self.compute_capabilities = list(compute_capabilities) if compute_capabilities is not None else None

    def _targets(self, backend: Backend, config: Any) -> dict[str, Any]:
        if self.compute_capabilities is not None:
            values = target_capabilities(backend, self.compute_capabilities)
            config.num_compute_capabilities = len(values)
            for index, value in enumerate(values):
                if not config.set_compute_capability(value, index):
                    raise BuildError(f"{backend.describe()} refused target {self.compute_capabilities[index]}")
            return {
                "compute_capabilities": list(self.compute_capabilities),
                "and_later": False,
                "set_by": "build option",
            }
        if backend.is_rtx:
            return {
                "compute_capabilities": list(RTX_DEFAULT_TARGETS),
                "and_later": True,
                "set_by": f"{backend.describe()} default",
            }
        return {
            "compute_capabilities": None,
            "set_by": "the building GPU (full TensorRT engines are specific to the GPU model that built them)",
        }

    def _load_cache(self, backend: Backend, config: Any) -> dict[str, Any]:
        if self.timing_cache is None:
            return {"file": None, "reason": "not requested"}
        if not backend.supports_timing_cache:
            return {"file": None, "reason": RTX_NO_TIMING_CACHE}
        blob = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, False):
            raise BuildError(
                f"{backend.describe()} could not use the timing cache {self.timing_cache}: delete it "
                "to start a fresh one"
            )
        return {"file": self.timing_cache.name, "loaded_bytes": len(blob)}

    def _save_cache(self, config: Any, record: dict[str, Any]) -> None:
        if record.get("file") is None or self.timing_cache is None:
            return
        data = bytes(config.get_timing_cache().serialize())
        write_atomic(self.timing_cache, data)
        record["saved_bytes"] = len(data)

    def __call__(self) -> BuiltEngine:
        start = time.perf_counter()  # parsing included: it is part of what a build costs
        parsed = self.network()
        backend, trt = parsed.backend, parsed.backend.trt
        name = parsed.source.name
        with recording(backend) as log:
            config = parsed.builder.create_builder_config()
            if self.workspace_mb is not None:
                config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
            target = self._targets(backend, config)
            if parsed.network.num_inputs != 1:
                raise BuildError(f"{name}: expected one network input, found {parsed.network.num_inputs}: re-export it")
            input_name = parsed.network.get_input(0).name
            for profile in self.profiles:
                optimisation = parsed.builder.create_optimization_profile()
                optimisation.set_shape(input_name, profile.min, profile.opt, profile.max)
                if config.add_optimization_profile(optimisation) < 0:
                    raise BuildError(
                        f"{name}: {backend.describe()} refused the profile {profile.describe()} for "
                        f"input {input_name!r}: {summary(log.errors())}"
                    )
            cache = self._load_cache(backend, config)
            serialized = parsed.builder.build_serialized_network(parsed.network, config)
            if serialized is None:
                raise BuildError(f"{name}: the {backend.describe()} builder failed: {summary(log.errors())}")
        data = bytes(serialized)
        del serialized
        self._save_cache(config, cache)
        return BuiltEngine(
            data=data,
            builder={"module": backend.name, "version": backend.version},
            target=target,
            timing_cache=cache,
            seconds=time.perf_counter() - start,
        )
