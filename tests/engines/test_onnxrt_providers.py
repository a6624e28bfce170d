"""ONNX Runtime set up for mixed-size streams: the CUDA provider's options, the one-line refusal where the CUDA
provider is missing or does not load, and IO binding (checked on the CPU provider) equal to a plain run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sppnet.core.errors import DeviceUnavailable, InvalidInput
from sppnet.engines.backends import onnxrt
from sppnet.engines.backends.onnxrt import (
    OnnxRuntimeRunner,
    SessionFromOnnx,
    cuda_device_id,
    cuda_provider_options,
    providers_for,
)
from sppnet.engines.parity import random_images

HAS_CUDA_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()


def dynamic_file(runtime_onnx: Path) -> Path:
    return runtime_onnx / "zf5_cpu_dynamic_fp32.onnx"


def test_cuda_options_choose_heuristic_algorithms_and_no_tf32_unless_asked() -> None:
    options = cuda_provider_options()
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"  # not EXHAUSTIVE: no retuning for every new shape
    assert options["use_tf32"] == "0" and options["device_id"] == "0" and options["prefer_nhwc"] == "0"
    assert cuda_provider_options(device_id=1, tf32=True, cudnn_search="DEFAULT")["use_tf32"] == "1"
    assert all(isinstance(v, str) for v in options.values())
    with pytest.raises(InvalidInput, match="cuDNN algorithm search 'FAST' is not one of HEURISTIC, EXHAUSTIVE"):
        cuda_provider_options(cudnn_search="FAST")


def test_devices_name_their_providers() -> None:
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert cuda_device_id("cuda") == 0 and cuda_device_id("cuda:3") == 3
    for bad in ("gpu", "cuda:x", "cpu:0"):
        with pytest.raises(InvalidInput, match="is not cuda or cuda:N"):
            cuda_device_id(bad)


@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="this onnxruntime has the CUDA provider")
def test_cuda_without_the_cuda_provider_is_refused_in_one_line_with_the_fix(runtime_onnx: Path) -> None:
    for make in (lambda: providers_for("cuda"), SessionFromOnnx(dynamic_file(runtime_onnx), device="cuda")):
        with pytest.raises(DeviceUnavailable) as caught:
            make()
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"onnxruntime {ort.__version__} has no CUDA provider")
        assert "pip uninstall -y onnxruntime && pip install 'sppnet[gpu]'" in message and "--device cpu" in message


class FellBack:
    """An InferenceSession stand-in that, like ONNX Runtime when CUDA libraries are missing, runs on the CPU."""

    def __init__(self, path: str, options: Any, providers: list[Any]) -> None:
        self.providers = providers

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


def test_a_cuda_provider_that_does_not_load_is_refused(runtime_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "load_cuda_libraries", lambda: None)
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    loader = SessionFromOnnx(dynamic_file(runtime_onnx), device="cuda:1", tf32=True)
    name, options = loader.resolve_providers()[0]
    assert name == "CUDAExecutionProvider" and options["device_id"] == "1" and options["use_tf32"] == "1"
    with pytest.raises(DeviceUnavailable, match=r"CUDA provider did not load .* or pass --device cpu"):
        loader()
    # without a device named, CUDA comes first (with the stream options) and the CPU is kept as a fallback
    default = SessionFromOnnx(dynamic_file(runtime_onnx)).resolve_providers()
    assert default[0][0] == "CUDAExecutionProvider" and default[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert default[1:] == ["CPUExecutionProvider"]


def test_io_binding_and_device_tensors_give_the_plain_run(runtime_onnx: Path) -> None:
    rng = np.random.default_rng(0)
    path = dynamic_file(runtime_onnx)
    with (
        OnnxRuntimeRunner(path, device="cpu") as plain,
        OnnxRuntimeRunner(path, device="cpu", io_binding=True) as bound,
    ):
        assert plain.io_binding is False and not plain.on_cuda
        for batch, h, w in [(1, 39, 39), (3, 97, 131), (2, 300, 41)]:
            x = random_images(rng, batch, h, w, 1 / 64)
            want = plain.infer({"image": x})["logits"]
            assert np.array_equal(bound.infer({"image": x})["logits"], want)
            tensor = bound.infer_tensor(torch.from_numpy(x))
            assert tensor.dtype == torch.float32 and np.array_equal(tensor.numpy(), want)
