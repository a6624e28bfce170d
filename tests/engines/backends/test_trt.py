"""The TensorRT backend's plain logic (compatibility, buffer sizes, profile choice, graph keys, cache paths, CUDA
status checks) and every refusal that happens before a GPU is touched, on a real TensorRT-RTX engine directory
built here on the CPU. The engine-vs-ONNX Runtime test runs only where a CUDA GPU and the builder module are present.
The stand-ins at the end (a fake TensorRT module and a numpy CUDA) are shared with tests/engines/backends/
test_contract.py.
"""

from __future__ import annotations

import enum
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sppnet.core.errors import BackendError, DeviceUnavailable, OutOfMemory
from sppnet.core.manifest import (
    Builder,
    EngineManifest,
    ModelCard,
    ModelFile,
    SizeRange,
    Weights,
    read_engine_manifest,
)
from sppnet.core.networks import ModelConfig
from sppnet.core.preprocess import Preprocess
from sppnet.core.profiles import dynamic_profiles, fixed_profile, profile_for
from sppnet.engines.backends.cuda import NO_GPU_FIX, check_cuda
from sppnet.engines.backends.trt import (
    RUNTIME_CACHE_SUFFIX,
    TensorRTRunner,
    buffer_plan,
    check_engine_compatibility,
    deserialize_engine,
    failure,
    graph_key,
    graph_mode,
    parse_capability,
    runtime_cache_path,
    select_profile,
)
from sppnet.export.build import build_engines
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_untrained
from sppnet.export.trt_module import load_backend

REBUILD = "rebuild with `sppnet build --onnx DIR --out ENGINE_DIR` on/for this machine"
RTX = Builder("tensorrt_rtx", "1.7.1.116")
RTX_TARGET = {"compute_capabilities": ["8.0", "8.6", "8.9", "12.0"], "and_later": True, "set_by": "default"}


def engine_manifest(builder: Builder, target: dict) -> EngineManifest:
    """An engine manifest listing no engines: what the compatibility check reads (builder and target)."""
    card = ModelCard("zf5_cpu", ModelConfig("zf5_cpu", num_classes=1), ("a",), Preprocess(), Weights("0" * 64))
    return EngineManifest(card, SizeRange(39, 224, 16, ()), 8, 4, (), builder, "onnx", "0" * 64, target)


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zf5_cpu (untrained, 10 classes) at 112 and 90 plus the dynamic engine up to 224, fp32, TensorRT-RTX."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install tensorrt-rtx-cu13) builds the engines")
    root = tmp_path_factory.mktemp("trt")
    config = ExportConfig(precisions=("fp32",), max_batch=8, opt_batch=4)
    export_onnx(source_untrained("zf5_cpu", num_classes=10), root / "onnx", config)
    build_engines(root / "onnx", root / "engines", builder="tensorrt_rtx")
    return root / "engines"


# ---------------------------------------------------------------- compatibility


def test_an_engine_dir_from_the_same_builder_for_this_gpu_is_accepted() -> None:
    manifest = engine_manifest(RTX, RTX_TARGET)
    for capability in ("8.0", "8.6", "8.9", "12.0", "9.0", "10.0", "12.1"):  # listed, or later (and_later)
        check_engine_compatibility(manifest, "tensorrt_rtx", "1.7.1.116", capability)
    check_engine_compatibility(manifest, "tensorrt_rtx", "1.7.1.116", None)  # no GPU known: versions only


def test_another_builder_module_or_version_is_refused_with_the_rebuild_command() -> None:
    manifest = engine_manifest(RTX, RTX_TARGET)
    with pytest.raises(BackendError) as e:
        check_engine_compatibility(manifest, "tensorrt", "10.13.0", "9.0")
    assert one_line(e) == (
        f"the engines were built by tensorrt_rtx 1.7.1.116 but this runtime has tensorrt 10.13.0: {REBUILD}"
    )
    with pytest.raises(
        BackendError, match=r"built by tensorrt_rtx 1\.7\.1\.116 but this runtime has tensorrt_rtx 1\.8\.0"
    ):
        check_engine_compatibility(manifest, "tensorrt_rtx", "1.8.0", "8.6")


def test_a_gpu_outside_the_targets_is_refused_respecting_and_later() -> None:
    listed = engine_manifest(RTX, {"compute_capabilities": ["8.6", "8.9"], "and_later": False})
    check_engine_compatibility(listed, "tensorrt_rtx", "1.7.1.116", "8.9")
    for capability in ("8.0", "9.0", "12.0"):
        with pytest.raises(BackendError) as e:
            check_engine_compatibility(listed, "tensorrt_rtx", "1.7.1.116", capability)
        assert one_line(e) == (
            f"the engines target compute capability 8.6, 8.9 but this GPU is {capability}: {REBUILD} "
            f"(TensorRT-RTX: add --compute-capability {capability})"
        )
    later = engine_manifest(RTX, RTX_TARGET)
    with pytest.raises(
        BackendError, match=r"target compute capability 8\.0, 8\.6, 8\.9, 12\.0 and later but this GPU is 7\.5"
    ):
        check_engine_compatibility(later, "tensorrt_rtx", "1.7.1.116", "7.5")


def test_full_tensorrt_targets_the_building_gpu_so_only_versions_are_checked() -> None:
    manifest = engine_manifest(
        Builder("tensorrt", "10.13.0"), {"compute_capabilities": None, "set_by": "the building GPU"}
    )
    check_engine_compatibility(manifest, "tensorrt", "10.13.0", "9.0")
    with pytest.raises(BackendError, match=r"built by tensorrt 10\.13\.0 but this runtime has tensorrt 10\.14\.1"):
        check_engine_compatibility(manifest, "tensorrt", "10.14.1", "9.0")


def test_a_manifest_without_targets_and_malformed_capabilities_are_one_line_errors() -> None:
    with pytest.raises(BackendError, match="records no target GPUs") as e:
        check_engine_compatibility(engine_manifest(RTX, {}), "tensorrt_rtx", "1.7.1.116", "8.6")
    assert one_line(e).endswith(REBUILD)
    for bad in ("86", "8.x", "", "sm_86"):
        with pytest.raises(ValueError, match=r"not of the form MAJOR\.MINOR"):
            parse_capability(bad)
    assert parse_capability("12.0") == (12, 0) > parse_capability("9.0")


def test_the_real_manifest_passes_for_its_own_builder(engine_dir: Path) -> None:
    manifest = read_engine_manifest(engine_dir)
    backend = load_backend(manifest.builder.module)
    check_engine_compatibility(manifest, backend.name, backend.version, "8.6")
    with pytest.raises(BackendError, match=r"this GPU is 7\.5"):
        check_engine_compatibility(manifest, backend.name, backend.version, "7.5")


# ---------------------------------------------------------------- buffers, profiles, graphs, cache files


def test_buffers_are_sized_for_each_profiles_max_shape() -> None:
    fixed = fixed_profile(112, 112, opt_batch=4, max_batch=8)
    plan = buffer_plan(fixed, 10)
    assert (plan.input_shape, plan.output_shape) == ((8, 3, 112, 112), (8, 10))
    assert (plan.input_bytes, plan.output_bytes) == (8 * 3 * 112 * 112 * 4, 8 * 10 * 4)
    small, large = dynamic_profiles(min_size=39, max_size=224, scales=[(112, 112), (90, 90)], opt_batch=4, max_batch=8)
    assert buffer_plan(large, 10).input_shape == (2, 3, 224, 224)  # the large profile's batch shrinks with area
    assert buffer_plan(small, 10, input_itemsize=2, output_itemsize=2).input_bytes == 8 * 3 * 112 * 112 * 2
    with pytest.raises(ValueError, match="at least one output class"):
        buffer_plan(fixed, 0)


def test_the_requested_profile_is_checked_and_a_better_one_named() -> None:
    profiles = dynamic_profiles(min_size=39, max_size=224, scales=[(112, 112), (90, 90)], opt_batch=4, max_batch=8)
    assert select_profile(profiles, 0, (8, 3, 100, 112)) == 0
    assert select_profile(profiles, 1, (2, 3, 224, 39)) == 1
    with pytest.raises(BackendError) as e:
        select_profile(profiles, 0, (1, 3, 200, 150))
    assert one_line(e).endswith("profile 1 (39x39..224x224 (batch 1..2)) takes it: pass profile=1")
    with pytest.raises(BackendError, match="split the batch to at most 2"):
        select_profile(profiles, 1, (3, 3, 200, 200))
    with pytest.raises(BackendError, match="resize the input into a profile's range"):
        select_profile(profiles, 1, (1, 3, 225, 100))
    with pytest.raises(BackendError, match=r"profile 2 does not exist: this engine has profiles 0\.\.1"):
        select_profile(profiles, 2, (1, 3, 100, 100))
    fixed = [fixed_profile(112, 112, opt_batch=4, max_batch=8)]
    for shape in ((1, 3, 112, 113), (1, 1, 112, 112), (9, 3, 112, 112), (3, 112, 112)):
        with pytest.raises(BackendError):
            select_profile(fixed, 0, shape)


def test_the_runner_accepts_the_profile_the_runtime_routes_to() -> None:
    profiles = dynamic_profiles(min_size=39, max_size=224, scales=[(112, 112), (90, 90)], opt_batch=4, max_batch=8)
    rng = np.random.default_rng(0)
    for h, w in rng.integers(39, 225, (200, 2)):
        index = profile_for(profiles, int(h), int(w))
        assert select_profile(profiles, index, (profiles[index].max_batch, 3, int(h), int(w))) == index


def test_graphs_are_keyed_per_profile_and_batch_for_fixed_engines_only() -> None:
    assert graph_mode("tensorrt", "fixed", True) == "manual"
    assert graph_mode("tensorrt_rtx", "fixed", True) == "tensorrt_rtx"  # its own whole-graph capture
    assert graph_mode("tensorrt", "dynamic", True) == graph_mode("tensorrt", "fixed", False) == "off"
    keys = [graph_key("manual", 0, (n, 3, 112, 112)) for n in (1, 8, 1, 4)]
    assert keys == [(0, 1), (0, 8), (0, 1), (0, 4)] and len(set(keys)) == 3
    assert graph_key("off", 0, (1, 3, 112, 112)) is None
    assert graph_key("tensorrt_rtx", 0, (1, 3, 112, 112)) is None


def test_the_runtime_cache_file_sits_beside_its_engine(tmp_path: Path) -> None:
    engine = tmp_path / "zf5_cpu_112x112_fp32.engine"
    assert runtime_cache_path(engine, True) == tmp_path / f"zf5_cpu_112x112_fp32{RUNTIME_CACHE_SUFFIX}"
    assert runtime_cache_path(engine, False) is None
    assert runtime_cache_path(engine, tmp_path / "elsewhere.cache") == tmp_path / "elsewhere.cache"


# ---------------------------------------------------------------- CUDA and TensorRT status checks


class FakeCudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorLaunchFailure = 719


def test_cuda_results_are_unpacked_and_errors_named() -> None:
    assert check_cuda((FakeCudaError.cudaSuccess,), "cudaFree") is None
    assert check_cuda((FakeCudaError.cudaSuccess, 1234), "cudaMalloc") == 1234
    assert check_cuda((FakeCudaError.cudaSuccess, 1, 2), "cudaMemGetInfo") == (1, 2)
    with pytest.raises(BackendError) as e:
        check_cuda((FakeCudaError.cudaErrorLaunchFailure,), "cudaStreamSynchronize")
    assert one_line(e) == (
        "CUDA cudaStreamSynchronize failed with cudaErrorLaunchFailure: check the GPU and its driver (nvidia-smi)"
    )
    assert not isinstance(e.value, (OutOfMemory, DeviceUnavailable))
    with pytest.raises(OutOfMemory, match="CUDA cudaMalloc failed with cudaErrorMemoryAllocation: use smaller batches"):
        check_cuda((FakeCudaError.cudaErrorMemoryAllocation, None), "cudaMalloc")


@pytest.mark.parametrize("error", [FakeCudaError.cudaErrorInsufficientDriver, FakeCudaError.cudaErrorNoDevice])
def test_no_usable_gpu_is_its_own_error_naming_the_cpu_alternative(error: FakeCudaError) -> None:
    # What `sppnet infer --engines ENGINE_DIR` meets on a machine without a GPU (issue 10): one line, the fix included.
    with pytest.raises(DeviceUnavailable) as e:
        check_cuda((error,), "cudaSetDevice")
    assert one_line(e) == f"no usable CUDA GPU (CUDA cudaSetDevice failed with {error.name}): {NO_GPU_FIX}"
    assert "--engines ONNX_DIR" in NO_GPU_FIX


def test_tensorrt_failures_carry_its_messages_and_map_out_of_memory() -> None:
    plain = failure("x.engine: execute_async_v3 failed", ["[executionContext.cpp::enqueueV3] Error Code 1: bad"])
    assert type(plain) is BackendError and str(plain).endswith("Error Code 1: bad")
    assert isinstance(failure("no context", ["Error Code 2: OutOfMemory (Requested size was 8 bytes.)"]), OutOfMemory)
    assert isinstance(failure("no context", ["cudaErrorMemoryAllocation"]), OutOfMemory)
    assert isinstance(failure("refuses it [INVALID (INSUFFICIENT_GPU_MEMORY)]", []), OutOfMemory)
    assert str(failure("nothing logged", [])) == "nothing logged: no message"


def test_tensorrt_rtx_refusing_to_deserialise_is_one_line_with_its_own_words(engine_dir: Path) -> None:
    if gpu_available():
        pytest.skip("a GPU is present: the engine deserialises (the GPU test covers it)")
    manifest = read_engine_manifest(engine_dir)
    entry = manifest.files[0]
    backend = load_backend(manifest.builder.module)
    with pytest.raises(BackendError) as e:
        deserialize_engine(backend, (engine_dir / entry.file).read_bytes(), entry.file)
    text = one_line(e)
    assert text.startswith(f"{backend.describe()} refuses {entry.file} on this machine [INVALID")
    assert ": " in text and not text.endswith(": no message")  # TensorRT-RTX's own reason follows


# ---------------------------------------------------------------- the runner's refusals before the GPU


def runner_for(engine_dir: Path, index: int = 0, **options: object) -> TensorRTRunner:
    manifest = read_engine_manifest(engine_dir)
    entry = manifest.files[index]
    return TensorRTRunner(engine_dir / entry.file, manifest, entry, **options)


def test_a_tampered_engine_is_refused_before_anything_is_loaded(engine_dir: Path, tmp_path: Path) -> None:
    runner = runner_for(engine_dir)
    copy = tmp_path / runner.path.name
    data = bytearray(runner.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    tampered = TensorRTRunner(copy, runner.manifest, runner.entry)
    with pytest.raises(BackendError) as e:
        tampered.activate()
    assert one_line(e) == (
        f"{copy} does not match its manifest (sha256 differs): "
        "rebuild it with `sppnet build --onnx DIR --out ENGINE_DIR`"
    )
    assert not tampered.is_active


def test_engines_of_a_builder_this_machine_lacks_are_refused(engine_dir: Path) -> None:
    runner = runner_for(engine_dir)
    manifest = replace(runner.manifest, builder=Builder("tensorrt", "10.13.0"))
    foreign = TensorRTRunner(runner.path, manifest, runner.entry)
    try:
        import tensorrt  # noqa: F401

        pytest.skip("full TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendError) as e:
        foreign.activate()
    assert one_line(e).startswith(
        f"cannot run {runner.path.name}: no TensorRT builder could be imported (tried tensorrt"
    )


def test_without_a_gpu_activation_fails_in_one_line_and_leaves_nothing_behind(engine_dir: Path) -> None:
    if gpu_available():
        pytest.skip("a GPU is present")
    runner = runner_for(engine_dir, cuda_api="torch")
    with pytest.raises(DeviceUnavailable) as e:
        runner.activate()
    assert one_line(e).endswith(f"sees no CUDA device (torch.cuda.is_available() is False): {NO_GPU_FIX}")
    assert not runner.is_active and runner._slots == [] and runner._engine is None
    with pytest.raises(BackendError, match="is not active"):
        runner.infer({"image": np.zeros((1, 3, 112, 112), np.float32)})
    runner.deactivate()  # idempotent on an inactive runner
    with pytest.raises(BackendError, match="unknown CUDA API 'pycuda': choose one of cuda-python, torch"):
        runner_for(engine_dir, cuda_api="pycuda").activate()


def test_without_a_gpu_cuda_python_names_the_failing_call(engine_dir: Path) -> None:
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install cuda-python)")
    if gpu_available():
        pytest.skip("a GPU is present")
    runner = runner_for(engine_dir, cuda_api="cuda-python")
    with pytest.raises(DeviceUnavailable) as e:
        runner.activate()
    assert one_line(e).startswith("no usable CUDA GPU (CUDA cudaSetDevice failed with cudaError")
    assert one_line(e).endswith(f"): {NO_GPU_FIX}")


def test_the_backend_module_imports_neither_torch_nor_tensorrt() -> None:
    code = (
        "import sys, sppnet.engines.backends.trt\n"
        "print(sorted(m for m in ('torch', 'tensorrt', 'tensorrt_rtx', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- the GPU check script, where it can run here


def test_gpu_check_cases_stay_within_the_profile_they_name(engine_dir: Path) -> None:
    from sppnet.engines.gpu_check import parity_cases

    manifest = read_engine_manifest(engine_dir)
    for entry in manifest.files:
        profiles = list(entry.profiles)
        cases = parity_cases(entry, 24, 0)
        for profile, batch, h, w in cases:
            assert select_profile(profiles, profile, (batch, 3, h, w)) == profile
        if entry.kind == "fixed":
            assert cases == [(0, 1, *entry.scale), (0, 8, *entry.scale)]
        else:
            assert len(cases) > 24 and {c[0] for c in cases} == {0, 1} and (1, 2, 168, 168) in cases


def test_gpu_check_fails_in_one_line_without_a_gpu_or_with_the_wrong_export(
    engine_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sppnet.engines.gpu_check import main

    if gpu_available():
        pytest.skip("a GPU is present")
    onnx_dir = engine_dir.parent / "onnx"
    assert main(["--engines", str(engine_dir), "--onnx", str(onnx_dir), "--cuda-api", "torch"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("gpu_check: torch ") and err.count("\n") == 1
    assert err.rstrip().endswith(f"sees no CUDA device (torch.cuda.is_available() is False): {NO_GPU_FIX}")
    report = json.loads(out)
    assert report["error"] == err.removeprefix("gpu_check: ").strip() and report["engines"] == []
    assert report["builder"]["module"] == "tensorrt_rtx"

    other = Path(shutil.copytree(onnx_dir, tmp_path / "onnx"))
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(manifest | {"opset": 18}))
    assert main(["--engines", str(engine_dir), "--onnx", str(other)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"gpu_check: {engine_dir} was not built from {other} (its manifest names the export at {onnx_dir.resolve()}): "
        "pass the ONNX directory the engines were built from\n"
    )


# ---------------------------------------------------------------- on a GPU


def test_every_engine_matches_onnx_runtime_on_the_gpu(engine_dir: Path, tmp_path: Path) -> None:
    if not gpu_available():
        pytest.skip(
            "needs a CUDA GPU (torch.cuda.is_available() is False); run python -m sppnet.engines.gpu_check there"
        )
    from sppnet.engines.backends.onnxrt import OnnxRuntimeRunner, SessionFromOnnx
    from sppnet.engines.compare import compare
    from sppnet.engines.parity import random_images

    engines = Path(shutil.copytree(engine_dir, tmp_path / "engines"))  # the runtime cache is written beside them
    manifest = read_engine_manifest(engines)
    backend = load_backend(manifest.builder.module)
    import torch

    capability = "{}.{}".format(*torch.cuda.get_device_capability())
    try:
        check_engine_compatibility(manifest, backend.name, backend.version, capability)
    except BackendError as e:  # e.g. TensorRT-RTX on Hopper (9.0), which it refuses: not this test's subject
        pytest.skip(f"these engines cannot run on this GPU: {e}")
    onnx_dir = Path(manifest.source_dir)
    rng = np.random.default_rng(0)
    for entry in manifest.files:
        reference = OnnxRuntimeRunner(SessionFromOnnx(onnx_dir / entry.source_file, providers=["CPUExecutionProvider"]))
        with TensorRTRunner(engines / entry.file, manifest, entry) as runner, reference:
            for index, profile in enumerate(entry.profiles):
                h, w = profile.opt[2], profile.opt[3]
                for batch in (1, profile.max_batch, 1):  # the repeat replays the graph captured on first use
                    x = random_images(rng, batch, h, w, 1 / 64)
                    got = runner.infer({"image": x}, index)["logits"]
                    want = reference.infer({"image": x})["logits"]
                    row = compare(got, want, name=entry.file, precision=entry.precision, size=(h, w))
                    assert row.ok, row
        if manifest.builder.module == "tensorrt_rtx":
            assert (engines / (Path(entry.file).stem + RUNTIME_CACHE_SUFFIX)).is_file()


# ---------------------------------------------------------------- the runner's control flow, on fakes
# A fake TensorRT module and a numpy-backed fake CUDA API: they check what the runner does with contexts, buffers,
# graphs, the runtime cache and failures, not how TensorRT or CUDA behave (that needs the GPU test above).


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class FakeILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass


class IOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class FakeCuda:
    """Device and pinned memory as numpy arrays by address; a captured graph replays the enqueue it recorded."""

    name = "fake"

    def __init__(self, fail_alloc_at: int | None = None) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.streams: set[int] = set()
        self.graphs: dict[int, object] = {}
        self.captures = self.launches = self.allocs = 0
        self.next = 4096
        self.fail_alloc_at = fail_alloc_at

    def capability(self) -> str:
        return "8.6"

    def make_current(self) -> None:
        pass

    def device_name(self) -> str:
        return "Fake GPU"

    def _alloc(self, nbytes: int) -> int:
        self.allocs += 1
        if self.allocs == self.fail_alloc_at:
            raise OutOfMemory(f"CUDA cudaMalloc failed with cudaErrorMemoryAllocation ({nbytes} bytes)")
        ptr, self.next = self.next, self.next + nbytes + 4096
        self.memory[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def create_stream(self) -> int:
        self.streams.add(7)
        return 7

    def destroy_stream(self, stream: int) -> None:
        self.streams.remove(stream)

    def synchronize(self, stream: int) -> None:
        assert stream in self.streams

    def alloc_device(self, nbytes: int) -> int:
        return self._alloc(nbytes)

    def alloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        ptr = self._alloc(nbytes)
        return ptr, self.memory[ptr]

    def free_device(self, ptr: int) -> None:
        del self.memory[ptr]

    free_host = free_device

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.memory[dst][:nbytes] = self.memory[src][:nbytes]

    copy_to_host = copy_to_device

    def capture(self, stream: int, enqueue: object) -> int:
        self.captures += 1
        self.graphs[self.captures] = enqueue
        return self.captures

    def launch(self, graph: int, stream: int) -> None:
        self.launches += 1
        self.graphs[graph]()

    def destroy_graph(self, graph: int) -> None:
        del self.graphs[graph]


def expected_logits(x: np.ndarray) -> np.ndarray:
    """What a fake engine computes unless told otherwise: logits[n, k] = (k + 1) * sum(x[n]), ten classes."""
    return (x.reshape(len(x), -1).sum(1, keepdims=True) * np.arange(1, 11)).astype(np.float32)


class FakeContext:
    """Runs its engine's function on the input in the bound fake device memory and writes the logits back."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.addresses, self.profile, self.shape = engine, {}, None, None
        self.executions = 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.profile = index
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, int]:
        return (self.shape[0], self.engine.classes)

    def execute_async_v3(self, stream: int) -> bool:
        if self.engine.fail_execute:
            self.engine.logger.log(Severity.ERROR, self.engine.fail_execute)
            return False
        self.executions += 1
        count = int(np.prod(self.shape))
        x = self.engine.cuda.memory[self.addresses["image"]][: 4 * count].view(np.float32).reshape(self.shape)
        logits = self.engine.function(x)
        out = self.engine.cuda.memory[self.addresses["logits"]]
        out[: logits.size * 4] = logits.astype(np.float32).reshape(-1).view(np.uint8)
        return True


class FakeCache:
    def __init__(self) -> None:
        self.blob = b"compiled kernels"

    def serialize(self) -> bytes:
        return self.blob

    def deserialize(self, blob: bytes) -> bool:
        if not blob.startswith(b"compiled"):
            return False
        self.blob = blob + b"+"
        return True


class FakeRuntimeConfig:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.cache, self.cuda_graph_strategy = engine, None, "DISABLED"

    def create_runtime_cache(self) -> FakeCache:
        return FakeCache()

    def set_runtime_cache(self, cache: FakeCache) -> bool:
        self.cache = cache
        return True


class FakeEngine:
    """An engine of the listed entry: its profiles, float32 IO named image and logits, and `function` as its math."""

    def __init__(self, runtime: object, entry: ModelFile, function: Callable[[np.ndarray], np.ndarray]) -> None:
        self.logger, self.cuda, self.classes = runtime.logger, runtime.cuda, runtime.classes
        self.function = function
        self.profiles = list(entry.profiles)
        self.num_io_tensors, self.num_optimization_profiles = 2, len(self.profiles)
        self.contexts: list[FakeContext] = []
        self.configs: list[FakeRuntimeConfig] = []
        self.fail_execute = ""

    def get_tensor_name(self, index: int) -> str:
        return ("image", "logits")[index]

    def get_tensor_mode(self, name: str) -> IOMode:
        return IOMode.INPUT if name == "image" else IOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> type:
        return np.float32

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        p = self.profiles[index]
        return [p.min, p.opt, p.max]

    def create_runtime_config(self) -> FakeRuntimeConfig:
        self.configs.append(FakeRuntimeConfig(self))
        return self.configs[-1]

    def create_execution_context(self, config: FakeRuntimeConfig | None = None) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def fake_trt(
    name: str,
    version: str,
    cuda: FakeCuda,
    entries: Sequence[ModelFile],
    *,
    classes: int = 10,
    compute: Callable[[bytes], Callable[[np.ndarray], np.ndarray]] | None = None,
) -> object:
    """A TensorRT module whose runtime deserialises the listed engines (known by sha256) as FakeEngines.

    `compute(data)` gives an engine's function from its serialised bytes (default: `expected_logits`).
    """
    import types

    from sppnet.core.atomic import sha256

    by_hash = {e.sha256: e for e in entries}
    module = types.ModuleType(name)
    module.__version__ = version
    module.Builder = object
    module.ILogger = FakeILogger
    module.TensorIOMode = IOMode
    module.nptype = lambda dtype: dtype
    module.CudaGraphStrategy = types.SimpleNamespace(WHOLE_GRAPH_CAPTURE="WHOLE_GRAPH_CAPTURE")

    class FakeRuntime:
        def __init__(self, logger: object) -> None:
            self.logger, self.cuda, self.classes = logger, cuda, classes
            module.engines = []

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            function = compute(data) if compute is not None else expected_logits
            module.engines.append(FakeEngine(self, by_hash[sha256(data)], function))
            return module.engines[-1]

    module.Runtime = FakeRuntime
    return module


@pytest.fixture
def faked(engine_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A factory of runners over the real engine files whose TensorRT module and CUDA API are the fakes above."""

    def make(module: str = "tensorrt", kind: str = "fixed", cuda: FakeCuda | None = None, **options: object):
        manifest = read_engine_manifest(engine_dir)
        target = {"compute_capabilities": None} if module == "tensorrt" else RTX_TARGET
        manifest = replace(manifest, builder=Builder(module, "10.99"), target=target)
        entry = next(e for e in manifest.files if e.kind == kind)
        cuda, trt = use_fakes(monkeypatch, module, "10.99", manifest.files, cuda)
        return TensorRTRunner(engine_dir / entry.file, manifest, entry, **options), cuda, trt

    return make


def use_fakes(
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    version: str,
    entries: Sequence[ModelFile],
    cuda: FakeCuda | None = None,
    **fake_options: object,
) -> tuple[FakeCuda, object]:
    """Make the TensorRT backend load a fake `module` (see `fake_trt`) and a FakeCuda; returns both."""
    from sppnet.engines.backends import trt as backend_tensorrt
    from sppnet.export import trt_module
    from sppnet.export.trt_module import Backend

    cuda = cuda or FakeCuda()
    trt = fake_trt(module, version, cuda, entries, **fake_options)
    monkeypatch.setattr(trt_module, "_LOGGERS", {})  # fake modules must not leave loggers behind
    monkeypatch.setattr(backend_tensorrt, "load_backend", lambda name: Backend(trt))
    monkeypatch.setattr(backend_tensorrt, "load_cuda", lambda api, device: cuda)
    return cuda, trt


def test_fixed_engines_copy_through_their_buffers_and_replay_one_graph_per_batch_size(faked) -> None:
    runner, cuda, trt = faked()
    rng = np.random.default_rng(0)
    with runner:
        assert runner.info["graphs"] == "manual" and len(trt.engines[0].contexts) == 1
        allocated = dict(cuda.memory)
        for batch in (3, 3, 8, 3, 1, 8):
            x = rng.standard_normal((batch, 3, 112, 112)).astype(np.float32)
            np.testing.assert_allclose(runner.infer({"image": x})["logits"], expected_logits(x), rtol=1e-5)
        assert cuda.captures == 3 and cuda.launches == 3  # batches 3, 8, 1 captured once; repeats replayed
        assert cuda.memory.keys() == allocated.keys()  # nothing allocated per call
        with pytest.raises(BackendError, match=r"takes float32 \(Nx3x112x112\); got float64"):
            runner.infer({"image": np.zeros((1, 3, 112, 112))})
        with pytest.raises(BackendError, match=r"takes inputs \['image'\]; got \['x'\]"):
            runner.infer({"x": np.zeros((1, 3, 112, 112), np.float32)})
        with pytest.raises(BackendError, match="outside profile 0"):
            runner.infer({"image": np.zeros((9, 3, 112, 112), np.float32)})
    assert cuda.memory == {} and cuda.streams == set() and cuda.graphs == {} and runner._engine is None


def test_dynamic_engines_keep_one_context_and_buffer_set_per_profile(faked) -> None:
    runner, cuda, trt = faked(kind="dynamic")
    with runner:
        contexts = trt.engines[0].contexts
        assert [c.profile for c in contexts] == [0, 1] and runner.info["graphs"] == "off"
        assert len({c.addresses["image"] for c in contexts}) == 2
        for batch, h, w, profile in ((8, 112, 100, 0), (2, 224, 180, 1), (1, 39, 40, 0), (1, 50, 60, 1)):
            x = np.random.default_rng(h).standard_normal((batch, 3, h, w)).astype(np.float32)
            np.testing.assert_allclose(runner.infer({"image": x}, profile)["logits"], expected_logits(x), rtol=1e-5)
        assert [c.executions for c in contexts] == [2, 2] and cuda.captures == 0
        with pytest.raises(BackendError, match="pass profile=1"):
            runner.infer({"image": np.zeros((1, 3, 200, 200), np.float32)}, 0)
    assert cuda.memory == {} and cuda.streams == set()


def test_a_failed_enqueue_says_why_and_out_of_memory_is_its_own_error(faked) -> None:
    runner, _, trt = faked()
    x = np.zeros((2, 3, 112, 112), np.float32)
    with runner:
        trt.engines[0].fail_execute = "[executionContext.cpp::enqueueV3::2666] Error Code 1: Cuda Runtime (bad)"
        with pytest.raises(BackendError) as e:
            runner.infer({"image": x})
        assert one_line(e).endswith(
            "execute_async_v3 failed: [executionContext.cpp::enqueueV3::2666] Error Code 1: Cuda Runtime (bad)"
        )
        trt.engines[0].fail_execute = "Error Code 2: OutOfMemory (Requested size was 1 bytes.)"
        with pytest.raises(OutOfMemory):
            runner.infer({"image": x})
        trt.engines[0].fail_execute = ""
        assert runner.infer({"image": x})["logits"].shape == (2, 10)


def test_a_failure_during_activation_frees_what_was_allocated(faked) -> None:
    cuda = FakeCuda(fail_alloc_at=6)  # the dynamic engine's second profile, second buffer
    runner, _, _ = faked(kind="dynamic", cuda=cuda)
    with pytest.raises(OutOfMemory, match="cudaErrorMemoryAllocation"):
        runner.activate()
    assert not runner.is_active and cuda.memory == {} and cuda.streams == set() and runner._slots == []


def test_tensorrt_rtx_uses_its_own_graphs_and_keeps_its_runtime_cache_beside_the_engine(faked, tmp_path: Path) -> None:
    cache = tmp_path / "zf5.runtime_cache"
    runner, cuda, trt = faked(module="tensorrt_rtx", runtime_cache=cache)
    with runner:
        assert trt.engines[0].configs[-1].cuda_graph_strategy == "WHOLE_GRAPH_CAPTURE"
        assert runner.info["runtime_cache"] == f"{cache}: new"
        for _ in range(3):
            runner.infer({"image": np.ones((4, 3, 112, 112), np.float32)})
        assert cuda.captures == 0  # no manual capture on top of TensorRT-RTX's
    assert cache.read_bytes() == b"compiled kernels"
    with runner:
        assert runner.info["runtime_cache"] == f"{cache}: loaded 16 bytes"
    assert cache.read_bytes() == b"compiled kernels+"
    cache.write_bytes(b"from another GPU")
    with runner:
        assert "rejected" in runner.info["runtime_cache"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # written atomically: no temporary files
    off, _, trt = faked(module="tensorrt_rtx", runtime_cache=False)
    with off:
        assert off.info["runtime_cache"] == "off"


def onnx_function(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The logits ONNX Runtime computes with the ONNX file at `path`: what an engine built from it computes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def test_gpu_check_reports_parity_and_timings_for_every_engine_on_fakes(
    engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script's plumbing: each fake engine runs its source ONNX file, which the script compares with ONNX
    Runtime through the TensorRT runner's buffers, profiles and copies."""
    from sppnet.core.atomic import sha256
    from sppnet.engines import gpu_check

    engines = Path(shutil.copytree(engine_dir, tmp_path / "engines"))  # the runtime caches are written beside them
    manifest = read_engine_manifest(engines)
    sources = {e.sha256: Path(manifest.source_dir) / e.source_file for e in manifest.files}
    cuda, _ = use_fakes(
        monkeypatch,
        "tensorrt_rtx",
        manifest.builder.version,
        manifest.files,
        compute=lambda data: onnx_function(sources[sha256(data)]),
    )
    monkeypatch.setattr(gpu_check, "load_cuda", lambda api, device: cuda)
    argv = ["--engines", str(engines), "--onnx", str(engine_dir.parent / "onnx"), "--repeat", "3", "--warmup", "1"]
    assert gpu_check.main([*argv, "--sizes", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["device"] == {"name": "Fake GPU", "capability": "8.6", "cuda_api": "fake"}
    assert [r["engine"] for r in report["engines"]] == [e.file for e in manifest.files]
    for record in report["engines"]:
        assert record["parity"]["ok"] and record["parity"]["max_rel"] <= 1e-6  # the same ONNX file on both sides
        assert record["runner"]["graphs"] == ("tensorrt_rtx" if record["kind"] == "fixed" else "off")
        rows = [(t["profile"], t["batch"]) for t in record["timing"]]
        assert rows == ([(0, 1), (0, 8)] if record["kind"] == "fixed" else [(0, 1), (0, 8), (1, 1), (1, 2)])
        assert all(t["calls"] == 3 and t["images_per_s"] > 0 for t in record["timing"])
    assert cuda.memory == {} and cuda.streams == set()
    assert len(list(engines.glob("*.runtime_cache"))) == len(manifest.files)
