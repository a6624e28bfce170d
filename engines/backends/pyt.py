"""PyTorch backend: a run's model itself, the reference every other backend is compared with.

`ModelFromRun(run_dir)` is the lazy loader (the run's weights, verified); `TorchRunner` runs any loader's model in
eval mode without autograd, in fp32, fp16 or bf16, on the CPU or a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.errors import BackendError, DeviceUnavailable, InvalidInput, OutOfMemory, one_line
from sppnet.core.manifest import INPUT_NAME, OUTPUT_NAME
from sppnet.engines.backends.base import Runner, TensorMeta

PRECISIONS = ("fp32", "fp16", "bf16")


class ModelFromRun:
    """Lazy loader: the network of a run directory (weights checked by sha256) when called."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)

    def __call__(self) -> Any:
        from sppnet.core.runs import load_model

        return load_model(self.run_dir)


class TorchRunner(Runner):
    """Runs a model from a loader (or a run directory) on `device` ("cpu", "cuda", or None: cuda if present)."""

    name = "torch"

    def __init__(
        self,
        model: str | os.PathLike[str] | Callable[[], Any],
        *,
        precision: str = "fp32",
        device: str | None = None,
        input_name: str = INPUT_NAME,
        output_name: str = OUTPUT_NAME,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise InvalidInput(f"the torch backend runs {', '.join(PRECISIONS)}, not {precision!r}")
        self.loader = model if callable(model) else ModelFromRun(model)
        self.precision, self.device = precision, device
        self.model: Any = None
        self.input_name, self.output_name = input_name, output_name

    def _activate_impl(self) -> None:
        import torch

        if self.device is not None and self.device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceUnavailable(f"--device {self.device}: torch {torch.__version__} sees no CUDA GPU; use cpu")
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = self.loader().eval().to(self.device, dtype=self._dtype())
        self.classes = self.model.config.num_classes

    def _dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        import torch

        (x,) = feed.values()
        try:
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(x).to(self.device, dtype=self._dtype()))
        except torch.cuda.OutOfMemoryError as e:
            raise OutOfMemory(f"PyTorch ran out of GPU memory on a batch of {len(x)}: use smaller batches") from e
        except InvalidInput:
            raise
        except (RuntimeError, ValueError) as e:
            first = one_line(e)
            raise BackendError(f"PyTorch failed on input {tuple(x.shape)}: {first}") from e
        return {self.output_name: logits.float().cpu().numpy()}

    def _inputs_impl(self) -> list[TensorMeta]:
        return [TensorMeta(self.input_name, np.dtype(np.float32), (None, 3, None, None))]

    def _outputs_impl(self) -> list[TensorMeta]:
        return [TensorMeta(self.output_name, np.dtype(np.float32), (None, self.classes))]

    def _deactivate_impl(self) -> None:
        self.model = None
