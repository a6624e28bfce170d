"""Argument types shared by the command modules: sizes, lists of integers, scales, precisions."""

from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '180x240' -> (180, 240) as (height, width)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is not H or HxW with positive integers (e.g. 224 or 180x240)")
    return (sizes[0], sizes[-1])


def _int_list(text: str, what: str, example: str, minimum: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r} are not comma-separated integers >= {minimum} (e.g. {example})"
        )
    return values


def parse_levels(text: str) -> tuple[int, ...]:
    """'6,3,2,1' -> (6, 3, 2, 1)."""
    return _int_list(text, "levels", "6,3,2,1")


def parse_sizes(text: str) -> tuple[int, ...]:
    """'224,180' -> (224, 180)."""
    return _int_list(text, "sizes", "224,180")


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2)."""
    return _int_list(text, "seeds", "0,1,2", minimum=0)


def parse_epochs(text: str) -> tuple[int, ...]:
    """'6,8' -> (6, 8): epochs, as lr milestones."""
    return _int_list(text, "epochs", "6,8")


def parse_scales(text: str) -> tuple[tuple[int, int], ...]:
    """'224,180x240' -> ((224, 224), (180, 240))."""
    return tuple(parse_size(part) for part in text.split(","))


def parse_precisions(text: str) -> tuple[str, ...]:
    """'fp32,fp16' -> ('fp32', 'fp16'); bf16 too (compiled PyTorch engines; ONNX and TensorRT refuse it)."""
    values = tuple(p.strip() for p in text.split(","))
    if not values or any(v not in ("fp32", "fp16", "bf16") for v in values):
        raise argparse.ArgumentTypeError(f"precisions {text!r} are not a comma-separated list of fp32, fp16, bf16")
    return values


def parse_size_list(text: str) -> list[tuple[int, int]]:
    """'13x13,10x10' -> [(13, 13), (10, 10)]."""
    return [parse_size(s) for s in text.split(",")]
