"""Which device and precision a command runs on: `auto` is CUDA when a GPU is present, else the CPU; a device or
precision this machine cannot give is refused in one line."""

from __future__ import annotations

import torch

from sppnet.core.errors import DeviceUnavailable, InvalidInput

DEVICES = ("auto", "cpu", "cuda")
TRAIN_PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda if torch sees a GPU, else cpu; `cuda` (or `cuda:N`) without a GPU is a DeviceUnavailable."""
    kind = name.split(":", 1)[0]
    if kind not in DEVICES or (kind != "cuda" and ":" in name):
        raise InvalidInput(f"unknown device {name!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"--device {name}: torch {torch.__version__} sees no CUDA GPU (a CPU build, or no driver); "
            "use --device cpu or auto"
        )
    return torch.device(name)


def check_precision(device: torch.device, precision: str) -> str:
    """`precision` if `device` can train in it (bf16: autocast on a GPU with bf16, or the CPU's), else refused."""
    if precision not in TRAIN_PRECISIONS:
        raise InvalidInput(f"unknown training precision {precision!r}: choose one of {', '.join(TRAIN_PRECISIONS)}")
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            raise DeviceUnavailable(f"{name} has no bfloat16 support: train with --precision fp32")
        if not torch.amp.is_autocast_available(device.type):
            raise DeviceUnavailable(f"torch has no bf16 autocast on {device.type}: train with --precision fp32")
    return precision
