"""PyTorch backend: the trained run itself, the reference every other backend is compared with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sppnet.engines.backends.base import OutOfMemory, Runner, RunnerError


class TorchRunner(Runner):
    """Runs a training run's model (eval mode, no autograd) on `device` ("cpu", "cuda", or None: cuda if present)."""

    name = "torch"

    def __init__(
        self, run_dir: str | os.PathLike[str], *, device: str | None = None, use_compile: bool = False
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.device = device
        self.use_compile = use_compile
        self.model = None

    def _activate_impl(self) -> None:
        import torch

        from sppnet.core.runs import load_model

        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(self.run_dir).to(self.device)
        self.model = torch.compile(model, dynamic=True) if self.use_compile else model

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        import torch

        assert self.model is not None
        (x,) = feed.values()
        try:
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(x).to(self.device))
        except torch.cuda.OutOfMemoryError as e:
            raise OutOfMemory(f"PyTorch ran out of GPU memory on a batch of {len(x)}") from e
        except (RuntimeError, ValueError) as e:
            raise RunnerError(f"PyTorch failed on input {tuple(x.shape)}: {str(e).splitlines()[0]}") from e
        return {"logits": logits.float().cpu().numpy()}

    def _deactivate_impl(self) -> None:
        self.model = None
