"""TensorRT optimisation profiles for the fixed-size and dynamic engines, and which profile takes an image.

Plain code (no TensorRT, no torch): the builder turns these into `IOptimizationProfile`s and the runtime reads
them back from the engine manifest to route each image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sppnet.core.errors import InvalidInput

Shape = tuple[int, int, int, int]  # (N, C, H, W)


@dataclass(frozen=True)
class Profile:
    """One optimisation profile of an NCHW input: the smallest, tuned-for and largest shapes it accepts."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        shapes = (self.min, self.opt, self.max)
        if any(len(s) != 4 or not all(isinstance(d, int) and d >= 1 for d in s) for s in shapes):
            raise InvalidInput(f"profile shapes must be 4 positive integers (N, C, H, W); got {shapes}")
        if not all(lo <= mid <= hi for lo, mid, hi in zip(*shapes, strict=True)):
            raise InvalidInput(
                f"profile needs min <= opt <= max on every axis; got min {self.min}, opt {self.opt}, max {self.max}"
            )
        if not self.min[1] == self.opt[1] == self.max[1]:
            raise InvalidInput(f"profile channels must be fixed; got {self.min[1]}, {self.opt[1]}, {self.max[1]}")

    @property
    def max_batch(self) -> int:
        """The largest batch this profile accepts (the runtime splits larger batches)."""
        return self.max[0]

    def covers(self, height: int, width: int) -> bool:
        """Whether an image of `height` x `width` fits this profile's spatial range."""
        return self.min[2] <= height <= self.max[2] and self.min[3] <= width <= self.max[3]

    def describe(self) -> str:
        """The spatial range as `HxW..HxW` (batch 1..N), for messages."""
        return f"{self.min[2]}x{self.min[3]}..{self.max[2]}x{self.max[3]} (batch {self.min[0]}..{self.max[0]})"

    def to_json(self) -> dict[str, list[int]]:
        """A JSON-ready record for the engine manifest."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, record: Any) -> Profile:
        """Inverse of `to_json`; a malformed record is a ValueError."""
        if not isinstance(record, dict) or set(record) != {"min", "opt", "max"}:
            raise InvalidInput(f"a profile record needs exactly the keys min, opt, max; got {record!r}")
        shapes = []
        for key in ("min", "opt", "max"):
            value = record[key]
            if not isinstance(value, list) or len(value) != 4 or not all(type(d) is int for d in value):
                raise InvalidInput(f"profile {key} must be a list of 4 integers; got {value!r}")
            shapes.append((value[0], value[1], value[2], value[3]))
        return cls(*shapes)


def _check_batches(opt_batch: int, max_batch: int) -> None:
    if not 1 <= opt_batch <= max_batch:
        raise InvalidInput(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch}): re-export with valid ones")


def fixed_profile(height: int, width: int, *, opt_batch: int, max_batch: int, channels: int = 3) -> Profile:
    """The one profile of a fixed-size engine: spatial size pinned, batch 1..max_batch tuned at opt_batch."""
    _check_batches(opt_batch, max_batch)
    if height < 1 or width < 1:
        raise InvalidInput(f"a fixed engine needs a positive size; got {height}x{width}")
    return Profile(
        (1, channels, height, width), (opt_batch, channels, height, width), (max_batch, channels, height, width)
    )


def dynamic_profiles(
    *,
    min_size: int,
    max_size: int,
    scales: Sequence[Sequence[int]],
    opt_batch: int,
    max_batch: int,
    channels: int = 3,
) -> list[Profile]:
    """Profiles of the dynamic engine covering `min_size..max_size` on H and W independently.

    Most images sit at or below the export scales, so the first profile spans min_size up to the largest export
    scale (per axis) and is tuned there at full batch. Larger images go to a second profile over the whole range,
    tuned midway to max_size, whose max batch shrinks with the area (down to 1) so its activation memory stays
    within the first profile's. Without export scales, one profile tuned at the middle of the range.
    """
    _check_batches(opt_batch, max_batch)
    if not 1 <= min_size <= max_size:
        raise InvalidInput(f"need 1 <= min size ({min_size}) <= max size ({max_size}); re-export with a valid range")
    for scale in scales:
        if len(scale) != 2 or min(scale) < 1:
            raise InvalidInput(f"an export scale must be (height, width) with positive sizes; got {scale!r}")
    lo = (1, channels, min_size, min_size)
    hi = (max_batch, channels, max_size, max_size)
    if not scales:
        middle = (min_size + max_size) // 2
        return [Profile(lo, (opt_batch, channels, middle, middle), hi)]
    top_h = min(max(min_size, max(s[0] for s in scales)), max_size)
    top_w = min(max(min_size, max(s[1] for s in scales)), max_size)
    common = Profile(lo, (opt_batch, channels, top_h, top_w), (max_batch, channels, top_h, top_w))
    if (top_h, top_w) == (max_size, max_size):
        return [common]
    large_batch = max(1, max_batch * top_h * top_w // (max_size * max_size))
    large_opt = (min(opt_batch, large_batch), channels, (top_h + max_size) // 2, (top_w + max_size) // 2)
    large = Profile(lo, large_opt, (large_batch, channels, max_size, max_size))
    return [common, large]


def profile_for(profiles: Sequence[Profile], height: int, width: int) -> int:
    """The index of the first profile that covers `height` x `width` (the tightest, as profiles go small to large)."""
    for index, profile in enumerate(profiles):
        if profile.covers(height, width):
            return index
    ranges = ", ".join(p.describe() for p in profiles) or "none"
    raise InvalidInput(
        f"an image of {height}x{width} is outside every engine profile ({ranges}): resize it into range "
        "or re-export and rebuild with a wider size range"
    )
