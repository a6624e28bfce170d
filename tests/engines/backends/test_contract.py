"""One contract for every backend's runner (ONNX Runtime, PyTorch, TensorRT), so none drifts from the others:
`inputs()`/`outputs()` describe the model once active, `infer` returns each output name with (N, classes) float32
for batches of 1 and N, outputs equal the PyTorch model on the same input within the comparator's tolerance, and an
inactive runner or a feed with the wrong names is a `BackendError`.

TensorRT runs through the stand-ins of test_trt.py (a fake TensorRT module and a numpy CUDA): its "engine" files
are copies of the ONNX files, which the fake runtime deserialises into ONNX Runtime sessions, so the TensorRT
runner's buffers, profiles, copies and graph replays carry real logits. Real engines are checked on a GPU
(test_trt.py, `python -m sppnet.engines.gpu_check`).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sppnet.core.errors import BackendError
from sppnet.core.manifest import Builder, EngineManifest, read_engine_manifest, read_export_manifest, write_manifest
from sppnet.core.runs import load_model
from sppnet.engines.backends.base import Runner, TensorMeta
from sppnet.engines.backends.onnxrt import OnnxRuntimeRunner, SessionFromOnnx
from sppnet.engines.backends.pyt import TorchRunner
from sppnet.engines.backends.trt import TensorRTRunner
from sppnet.engines.compare import TOLERANCE, compare

from .test_trt import use_fakes

BACKENDS = ("onnxruntime", "torch", "tensorrt")
CASES = {"fixed": ("zf5_cpu_112x112", (112, 112)), "dynamic": ("zf5_cpu_dynamic", (100, 76))}


@pytest.fixture(scope="module")
def engine_dir(runtime_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine directory whose engines are the ONNX files themselves (the fake TensorRT runs them in ONNX Runtime)."""
    out = tmp_path_factory.mktemp("contract") / "engines"
    out.mkdir()
    export = read_export_manifest(runtime_onnx)
    files = []
    for entry in export.files:
        engine = Path(entry.file).stem + ".engine"
        shutil.copyfile(runtime_onnx / entry.file, out / engine)
        files.append(replace(entry, file=engine, source_file=entry.file, source_sha256=entry.sha256))
    manifest = EngineManifest(
        export.card,
        export.sizes,
        export.max_batch,
        export.opt_batch,
        tuple(files),
        Builder("tensorrt", "10.99"),
        str(runtime_onnx),
        "0" * 64,
        target={"compute_capabilities": None, "set_by": "the building GPU"},
    )
    write_manifest(out, manifest)
    return out


def onnx_function(data: bytes):
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def make_runner(
    backend: str, kind: str, precision: str, *, runtime_onnx: Path, engine_dir: Path, trained_run: Path, monkeypatch
) -> Runner:
    stem = f"{CASES[kind][0]}_{precision}"
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(SessionFromOnnx(runtime_onnx / f"{stem}.onnx", providers=["CPUExecutionProvider"]))
    if backend == "torch":
        return TorchRunner(trained_run, precision=precision, device="cpu")
    manifest = read_engine_manifest(engine_dir)
    use_fakes(
        monkeypatch, "tensorrt", "10.99", manifest.files, classes=manifest.card.num_classes, compute=onnx_function
    )
    entry = next(f for f in manifest.files if f.file == f"{stem}.engine")
    return TensorRTRunner(engine_dir / entry.file, manifest, entry)


@pytest.fixture
def runner_for(runtime_onnx: Path, engine_dir: Path, trained_run: Path, monkeypatch: pytest.MonkeyPatch):
    def make(backend: str, kind: str, precision: str) -> Runner:
        paths = {"runtime_onnx": runtime_onnx, "engine_dir": engine_dir, "trained_run": trained_run}
        return make_runner(backend, kind, precision, **paths, monkeypatch=monkeypatch)

    return make


@pytest.fixture(scope="module")
def reference(trained_run: Path):
    """The run's PyTorch model in fp32, called directly: what every backend is compared with."""
    model = load_model(trained_run)

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return logits


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_keeps_the_runner_contract(
    backend: str, kind: str, precision: str, runner_for, reference, trained_run: Path
) -> None:
    classes = load_model(trained_run).config.num_classes
    runner = runner_for(backend, kind, precision)
    size = CASES[kind][1]
    spatial = size if kind == "fixed" and backend != "torch" else (None, None)  # the PyTorch run takes any size
    rng = np.random.default_rng(0)

    with runner:
        assert runner.is_active
        assert runner.inputs() == [TensorMeta("image", np.dtype(np.float32), (None, 3, *spatial))]
        assert runner.outputs() == [TensorMeta("logits", np.dtype(np.float32), (None, classes))]
        for batch in (1, 5):
            x = (rng.normal(0.0, 60.0, (batch, 3, *size)) / 64).astype(np.float32)  # preprocessed-like pixels
            out = runner.infer({"image": x})
            assert list(out) == ["logits"]
            assert out["logits"].shape == (batch, classes) and out["logits"].dtype == np.float32
            row = compare(out["logits"], reference(x), name=f"{backend} {kind}", precision=precision, size=size)
            assert row.ok and row.max_rel <= TOLERANCE[precision], row
        for feed in ({"x": x}, {"image": x, "mask": x}, {}):
            with pytest.raises(BackendError, match=r"takes inputs \['image'\]; got .*: feed the model's input names"):
                runner.infer(feed)
        runner.activate()  # idempotent
        assert runner.is_active
    assert not runner.is_active


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_inactive_runner_refuses_every_call_naming_the_fix(backend: str, runner_for) -> None:
    runner = runner_for(backend, "fixed", "fp32")
    x = np.zeros((1, 3, 112, 112), np.float32)
    for _ in range(2):  # before activation, and after deactivation
        for call in (lambda: runner.infer({"image": x}), runner.inputs, runner.outputs):
            with pytest.raises(BackendError) as error:
                call()
            assert str(error.value) == f"{runner.name} is not active: call activate() or use it as a context manager"
        runner.activate()
        assert runner.infer({"image": x})["logits"].shape[0] == 1
        runner.deactivate()
        runner.deactivate()  # idempotent


def test_the_backends_give_the_same_top_1_on_the_same_images(runner_for) -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(0.0, 60.0, (8, 3, 100, 76)) / 64).astype(np.float32)
    top1 = {}
    for backend in BACKENDS:
        with runner_for(backend, "dynamic", "fp32") as runner:
            top1[backend] = runner.infer({"image": x})["logits"].argmax(1)
    assert all(np.array_equal(top1["torch"], labels) for labels in top1.values()), top1


@pytest.mark.parametrize(
    "feed",
    [
        np.zeros((2, 3, 112, 112), np.float64),  # not the float32 inputs() states
        np.zeros((3, 112, 112), np.float32),  # no batch axis
        np.zeros((2, 4, 112, 112), np.float32),  # four channels
    ],
    ids=["float64", "rank-3", "4-channels"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_feed_that_does_not_match_the_input_metadata_is_a_backend_error(backend: str, feed, runner_for) -> None:
    with runner_for(backend, "fixed", "fp32") as runner, pytest.raises(BackendError) as error:
        runner.infer({"image": feed})
    assert "\n" not in str(error.value)
