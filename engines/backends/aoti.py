"""Compiled PyTorch backend: one AOTInductor package (`sppnet.export.aoti_builder`) behind the Runner interface.

A package runs only under the torch that built it and on the kind of device it was compiled for, so activation
refuses, with the fix, a package whose manifest names another torch version, another device, another GPU
architecture or a CPU instruction set this CPU lacks, and one whose file does not match its sha256. On a GPU,
fixed-size packages replay a CUDA graph per batch size, captured on first use (the package is loaded without its
own thread synchronisation, which capture cannot contain; this runner's lock serialises calls). `run` takes and
returns device tensors (the GPU-fed path uses it); `infer` takes numpy arrays like every runner.

Verified on the CPU: refusals, loading, exactness of fixed and dynamic packages against eager PyTorch, batch
limits. Unverified until a GPU runs it (`python -m sppnet.engines.gpu_check`): CUDA packages, graph capture and
replay, pinned staging, TF32 settings, out-of-memory mapping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.errors import BackendError, DeviceUnavailable, InvalidInput, OutOfMemory, one_line
from sppnet.core.manifest import ENGINE_FORMAT, FIX, EngineManifest, ModelFile, verify_file
from sppnet.engines.backends.base import Runner, TensorMeta

BUILDER = "torch_aoti"
REBUILD = "rebuild it with `sppnet build --builder torch_aoti --onnx DIR --out ENGINE_DIR` on this machine"
# x86 instruction sets in the order torch reports them; a package built for one runs on any later one.
CPU_ISAS = ("scalar", "DEFAULT", "NO AVX", "AVX2", "AVX512")
MAX_GRAPHS = 16


def is_aoti(manifest: EngineManifest) -> bool:
    """Whether an engine directory holds AOTInductor packages rather than TensorRT engines."""
    return manifest.builder.module == BUILDER


def device_kind(device: str) -> str:
    """ "cuda" for "cuda" or "cuda:N", "cpu" for "cpu"; InvalidInput otherwise."""
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise InvalidInput(f"device {device!r} is not cpu, cuda or cuda:N")
    return kind


def check_package(manifest: EngineManifest, device: str) -> None:
    """Refuse (BackendError naming the fix) packages this torch and device cannot run; no GPU is touched here
    except to read its compute capability."""
    import torch

    if not is_aoti(manifest):
        raise BackendError(
            f"the engines were built by {manifest.builder.describe()}, not torch_aoti: serve them with "
            "--backend tensorrt, or build compiled PyTorch engines with `sppnet build --builder torch_aoti`"
        )
    if manifest.builder.version != torch.__version__:
        raise BackendError(
            f"the packages were compiled by torch {manifest.builder.version} and this is torch {torch.__version__} "
            f"(AOTInductor packages run only under the torch that built them): {REBUILD}"
        )
    target = manifest.target
    built_for, kind = target.get("device"), device_kind(device)
    if built_for != kind:
        raise BackendError(
            f"the packages were compiled for {built_for}, not {kind}: pass --device {built_for} or {REBUILD}"
        )
    if target.get("machine") not in (None, platform.machine()):
        raise BackendError(
            f"the packages were compiled for {target.get('machine')}, this is {platform.machine()}: {REBUILD}"
        )
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"torch {torch.__version__} sees no CUDA GPU for the cuda packages: {REBUILD} for cpu"
            )
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        if target.get("capability") != f"{major}.{minor}":
            raise BackendError(
                f"the packages were compiled for compute capability {target.get('capability')} "
                f"({target.get('name')}), this GPU is {major}.{minor} ({torch.cuda.get_device_name(index)}): {REBUILD}"
            )
    else:
        built, here = target.get("isa"), "scalar" if target.get("isa") == "scalar" else _cpu_isa()
        if built not in CPU_ISAS or here not in CPU_ISAS or CPU_ISAS.index(built) > CPU_ISAS.index(here):
            raise BackendError(
                f"the packages were compiled for CPU instructions {built}, this CPU has {here}: {REBUILD}"
            )


def _cpu_isa() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


class AOTIRunner(Runner):
    """Runs one package of a checked engine directory (its manifest and the file's entry).

    Args:
        path: the package (`engine_dir / entry.file`).
        manifest, entry: the engine manifest and this package's entry in it.
        device: "cpu", "cuda" or "cuda:N" (default: the device the packages were compiled for).
        cuda_graphs: on a GPU, replay a CUDA graph per batch size for a fixed-size package.
        tf32: allow TF32 in fp32 convolutions and matrix products (faster, about 5e-4 from fp32; off for parity).
    """

    name = "torch_aoti"

    def __init__(
        self,
        path: str | os.PathLike[str],
        manifest: EngineManifest,
        entry: ModelFile,
        *,
        device: str | None = None,
        cuda_graphs: bool = True,
        tf32: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.manifest, self.entry = manifest, entry
        self.device = device or str(manifest.target.get("device", "cpu"))
        self.cuda_graphs, self.tf32 = cuda_graphs, tf32
        self.max_batch = entry.max_batch
        self.info: dict[str, Any] = {}
        self._model: Any = None
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._pool: Any = None
        self._staging: Any = None

    @property
    def on_gpu(self) -> bool:
        return device_kind(self.device) == "cuda"

    @property
    def graphs_enabled(self) -> bool:
        return self.on_gpu and self.cuda_graphs and self.entry.kind == "fixed"

    def _activate_impl(self) -> None:
        import torch

        start = time.perf_counter()
        check_package(self.manifest, self.device)
        verify_file(self.path, self.entry.sha256, self.path.parent / "manifest.json", FIX[ENGINE_FORMAT])
        if self.on_gpu:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.tf32
        index = torch.device(self.device).index if self.on_gpu else None
        try:
            with _quiet_scalar_load(self.manifest):
                self._model = torch._inductor.aoti_load_package(
                    str(self.path), run_single_threaded=self.graphs_enabled, device_index=-1 if index is None else index
                )
        except Exception as e:  # the loader raises RuntimeError for a damaged or foreign package
            raise BackendError(f"torch cannot load {self.path} ({one_line(e)}): {REBUILD}") from e
        found = self._model.get_metadata().get("AOTI_DEVICE_KEY", "")
        if found and device_kind(found) != device_kind(self.device):
            raise BackendError(f"{self.path} holds code for {found}, its manifest says {self.device}: {REBUILD}")
        self._graphs = {}
        self.info = {
            "device": self.device,
            "graphs": "per batch size" if self.graphs_enabled else "off",
            "tf32": self.tf32 if self.on_gpu else None,
            "activate_seconds": round(time.perf_counter() - start, 3),
        }

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """InvalidInput unless (N, 3, H, W) fits this package: batch up to its max, its size (fixed) or range."""
        if len(shape) != 4 or shape[1] != 3 or not 1 <= shape[0] <= self.max_batch:
            raise InvalidInput(f"{self.path.name} takes (1..{self.max_batch}, 3, H, W) inputs; got {tuple(shape)}")
        height, width = shape[2], shape[3]
        if not any(p.covers(height, width) for p in self.entry.profiles):
            ranges = "; ".join(p.describe() for p in self.entry.profiles)
            raise InvalidInput(f"{self.path.name} takes {ranges}, not {height}x{width}: route the image first")

    def input_buffer(self, batch: int) -> Any:
        """The CUDA graph's own input tensor for this batch size (write the batch into it to skip a copy), or None."""
        graph = self._graphs.get(batch)
        return graph[1] if graph is not None else None

    def run(self, x: Any) -> Any:
        """float32 (N, 3, H, W) tensor on this runner's device -> float32 (N, classes) logits on the device."""
        self._check_active()
        with self._lock:
            return self._run(x)

    def _run(self, x: Any) -> Any:
        import torch

        self.check_shape(tuple(x.shape))
        try:
            with torch.inference_mode():
                return self._replay(x) if self.graphs_enabled else self._model(x)
        except torch.cuda.OutOfMemoryError as e:
            raise OutOfMemory(
                f"{self.path.name} ran out of GPU memory on a batch of {len(x)}: use smaller batches"
            ) from e
        except RuntimeError as e:
            raise BackendError(f"{self.path.name} failed on input {tuple(x.shape)}: {one_line(e)}") from e

    def _replay(self, x: Any) -> Any:
        batch = x.shape[0]
        if batch not in self._graphs and len(self._graphs) < MAX_GRAPHS:
            self._capture(x)
        graph = self._graphs.get(batch)
        if graph is None:
            return self._model(x)
        cuda_graph, static_in, static_out = graph
        if x.data_ptr() != static_in.data_ptr():
            static_in.copy_(x)
        cuda_graph.replay()
        return static_out.clone()

    def _capture(self, x: Any) -> None:
        """Capture a graph for x's batch size; on failure graphs go off for this runner, with the reason in `info`."""
        import torch

        try:
            static_in = x.detach().clone()
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the graph: lazy initialisation must not be captured
                    self._model(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self._model(static_in)
            self._graphs[x.shape[0]] = (graph, static_in, static_out)
        except RuntimeError as e:
            self.cuda_graphs = False
            self.info["graphs"] = f"off: capture failed at batch {x.shape[0]} ({one_line(e)})"

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        import torch

        (array,) = feed.values()
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if self.on_gpu:  # through a pinned buffer kept between calls (pinning per call costs more than the copy)
            if self._staging is None or self._staging.numel() < x.numel():
                self._staging = torch.empty(x.numel(), dtype=torch.float32, pin_memory=True)
            staged = self._staging[: x.numel()].view(x.shape)
            staged.copy_(x)
            x = staged.to(self.device, non_blocking=True)
        logits = self._run(x)
        return {self.manifest.card.output_name: logits.float().cpu().numpy()}

    def _inputs_impl(self) -> list[TensorMeta]:
        scale = self.entry.scale if self.entry.kind == "fixed" else (None, None)
        return [TensorMeta(self.manifest.card.input_name, np.dtype(np.float32), (None, 3, *scale))]  # type: ignore[misc]

    def _outputs_impl(self) -> list[TensorMeta]:
        return [
            TensorMeta(self.manifest.card.output_name, np.dtype(np.float32), (None, self.manifest.card.num_classes))
        ]

    def _deactivate_impl(self) -> None:
        self._graphs.clear()
        self._pool = self._staging = None
        self._model = None
        with contextlib.suppress(ImportError):
            import torch

            if self.on_gpu and torch.cuda.is_available():
                torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet_scalar_load(manifest: EngineManifest) -> Iterator[None]:
    """Silence torch's warning that a package built with scalar CPU kernels differs from this CPU's ISA: the
    manifest check above already compared them."""
    logger = logging.getLogger("torch.export.pt2_archive._package")
    level = logger.level
    if manifest.target.get("isa") == "scalar":
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
