"""Image -> network input -> route: the resize policy, the exact Caffe preprocessing, and the model that takes it.

A policy decides the input size (PAPER.md section 5); the preprocessing is the training pipeline's own
(`sppnet.core.preprocess`). The route is the exact fixed-size model when the size matches one, otherwise the
dynamic model's tightest optimisation profile that covers the size. A size no model takes is, by default, fitted
into the served range (rescaled with its aspect kept; an image too elongated for the range is also centre-cropped
along its long side) and the route records the size it was fitted from; with `outside="error"` it is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sppnet.core.bins import check_pyramid
from sppnet.core.errors import InvalidInput, RouteError
from sppnet.core.manifest import SizeRange
from sppnet.core.preprocess import (
    Preprocess,
    center_view,
    full_view,
    resize_to,
    short_side_size,
    subtract_mean,
)
from sppnet.core.profiles import Profile, profile_for
from sppnet.engines.model_set import ModelSet

POLICIES = ("full", "center-crop", "nearest", "none")
OUTSIDE = ("resize", "error")


@dataclass(frozen=True)
class Policy:
    """How an image becomes network input.

    full: the whole image, aspect kept, short side `short_side` (default: the preprocessing's crop, so a square
      image lands on the training-size engine). center-crop: the paper's 1-view test (short side, then centre
      crop; 256/224 at the paper's scale). nearest: resized to cover the fixed scale closest in size and aspect,
      then centre-cropped to it. none: the image as it is. `outside`: a size no model takes is fitted into the
      served range ("resize", the default) or refused ("error").
    """

    name: str = "full"
    short_side: int | None = None
    outside: str = "resize"

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise InvalidInput(f"unknown policy {self.name!r}: choose one of {', '.join(POLICIES)}")
        if self.outside not in OUTSIDE:
            raise InvalidInput(f"unknown outside-range action {self.outside!r}: choose one of {', '.join(OUTSIDE)}")
        if self.short_side is not None and self.short_side < 1:
            raise InvalidInput(f"policy short side must be >= 1; got {self.short_side}")

    def describe(self) -> str:
        side = f" {self.short_side}" if self.short_side else ""
        return f"{self.name}{side}" + (" (refuse sizes outside the profiles)" if self.outside == "error" else "")


@dataclass(frozen=True)
class View:
    """One image as network input: mean-subtracted float32 (h, w, 3), and the size it had before it was fitted
    into the served range (None when the policy's size was served as it was)."""

    pixels: np.ndarray
    fitted_from: tuple[int, int] | None = None


@dataclass(frozen=True)
class Route:
    """Where one image went: the model file, its profile, the input size, and the size it was fitted from."""

    model: str
    kind: str
    profile: int
    height: int
    width: int
    fitted_from: tuple[int, int] | None = None

    def key(self) -> tuple[str, int, int, int]:
        """Images with the same key can share a batch."""
        return (self.model, self.profile, self.height, self.width)

    def describe(self) -> str:
        fitted = f", fitted from {self.fitted_from[0]}x{self.fitted_from[1]}" if self.fitted_from else ""
        return f"{self.model} profile {self.profile} at {self.height}x{self.width}{fitted}"

    def to_json(self) -> dict[str, object]:
        record: dict[str, object] = {
            "model": self.model,
            "kind": self.kind,
            "profile": self.profile,
            "size": [self.height, self.width],
        }
        if self.fitted_from is not None:
            record["fitted_from"] = list(self.fitted_from)
        return record


def prepare(image: np.ndarray, policy: Policy, pre: Preprocess, models: ModelSet) -> View:
    """A BGR (H, W, 3) image as network input under `policy`, fitted into the served range unless refused.

    A size no model takes is fitted from the decoded image in one resize (the policy's size is worked out first),
    so an image as elongated as 1x2000 never becomes a huge intermediate array.
    """
    if policy.name == "center-crop":
        pixels = center_view(image, pre)
    elif policy.name == "nearest":
        scales = list(models.fixed)
        if not scales:
            raise RouteError(f"policy 'nearest' needs fixed-size models and {models.directory} has none: use 'full'")
        pixels = subtract_mean(_cover_crop(image, _nearest_scale(image.shape[0], image.shape[1], scales)), pre)
    else:
        side = policy.short_side or pre.crop
        size = short_side_size(*image.shape[:2], side) if policy.name == "full" else image.shape[:2]
        plan = None if policy.outside == "error" else _fit_plan(*size, models)
        if plan is not None:
            return View(subtract_mean(_resize_crop(image, *plan), pre), (size[0], size[1]))
        if policy.name == "full":
            return View(full_view(image, pre, side))
        return View(subtract_mean(image.astype(np.float32), pre))
    plan = None if policy.outside == "error" else _fit_plan(*pixels.shape[:2], models)
    return View(pixels) if plan is None else View(_resize_crop(pixels, *plan), pixels.shape[:2])


def _nearest_scale(height: int, width: int, scales: list[tuple[int, int]]) -> tuple[int, int]:
    """The fixed scale closest in log size and aspect."""
    return min(scales, key=lambda s: abs(math.log(s[0] / height)) + abs(math.log(s[1] / width)))


def _cover(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The size (aspect kept) that covers `target`."""
    cover = max(target[0] / height, target[1] / width)
    return max(target[0], round(height * cover)), max(target[1], round(width * cover))


def _resize_crop(image: np.ndarray, scaled: tuple[int, int], served: tuple[int, int]) -> np.ndarray:
    """Resize to `scaled`, then take the centred `served` crop."""
    if scaled != image.shape[:2]:
        image = resize_to(image, *scaled)
    top, left = (scaled[0] - served[0]) // 2, (scaled[1] - served[1]) // 2
    return np.ascontiguousarray(image[top : top + served[0], left : left + served[1]])


def _cover_crop(image: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Resize (aspect kept) to cover `target`, then centre-crop to it."""
    return _resize_crop(image, _cover(*image.shape[:2], target), target)


def fitted_size(height: int, width: int, low: int, high_h: int, high_w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(scaled, served) for an input of height x width and a range [low, high] on each axis: the size it is
    rescaled to (aspect kept) and the size served after a centre crop of its long side, which differ only when the
    aspect ratio is beyond what the range allows (the short side then goes to `low`)."""
    factor = min(high_h / height, high_w / width, 1.0)
    if factor == 1.0:
        factor = max(low / height, low / width, 1.0)
    if min(height, width) * factor < low:
        factor = low / min(height, width)
    scaled = (max(low, round(height * factor)), max(low, round(width * factor)))
    return scaled, (min(scaled[0], high_h), min(scaled[1], high_w))


def _fit_plan(height: int, width: int, models: ModelSet) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(scaled, served) sizes that bring a height x width input into what `models` serve, or None if they take it:
    the dynamic model's range, or the nearest fixed scale (cover, then centre crop) when there is none."""
    if _route_or_none(height, width, Served.of(models)) is not None:
        return None
    dynamic = models.dynamic
    if dynamic is None:
        target = _nearest_scale(height, width, list(models.fixed))
        return _cover(height, width, target), target
    low = min(p.min[2] for p in dynamic.profiles)
    high_h, high_w = max(p.max[2] for p in dynamic.profiles), max(p.max[3] for p in dynamic.profiles)
    return fitted_size(height, width, low, high_h, high_w)


@dataclass(frozen=True)
class Served:
    """What a set of models serves, as routing needs it: the fixed sizes, the dynamic model's profiles, the pyramid.

    Built from a `ModelSet` by the runtime and from a Triton repository's routing table by its clients, so both
    route the same way.
    """

    fixed: dict[tuple[int, int], str]
    dynamic: str | None
    profiles: tuple[Profile, ...]
    levels: tuple[int, ...]
    rule: str
    sizes: SizeRange

    @classmethod
    def of(cls, models: ModelSet) -> Served:
        dynamic = models.dynamic
        return cls(
            {scale: f.file for scale, f in models.fixed.items()},
            dynamic.file if dynamic else None,
            dynamic.profiles if dynamic else (),
            models.card.levels,
            models.card.rule,
            models.sizes,
        )


def _route_or_none(height: int, width: int, served: Served) -> Route | None:
    fixed = served.fixed.get((height, width))
    if fixed is not None:
        return Route(fixed, "fixed", 0, height, width)
    if served.dynamic is not None and any(p.covers(height, width) for p in served.profiles):
        return Route(served.dynamic, "dynamic", profile_for(list(served.profiles), height, width), height, width)
    return None


def route_size(height: int, width: int, served: Served, fitted_from: tuple[int, int] | None = None) -> Route:
    """The model and profile for an input of height x width; RouteError naming the ranges and options otherwise."""
    found = _route_or_none(height, width, served)
    if found is not None:
        if found.kind == "dynamic":
            _check_binnable(height, width, served)
        return Route(found.model, found.kind, found.profile, height, width, fitted_from)
    fixed = ", ".join(f"{h}x{w}" for h, w in served.fixed) or "none"
    ranges = "; ".join(p.describe() for p in served.profiles) if served.dynamic else "no dynamic model"
    raise RouteError(
        f"no model takes a {height}x{width} input (fixed sizes: {fixed}; dynamic: {ranges}): drop --outside error, "
        "use another --policy, or export with a larger --max-size"
    )


def route(view: View, models: ModelSet) -> Route:
    """The model and profile for a prepared view of `models`."""
    height, width = view.pixels.shape[:2]
    return route_size(height, width, Served.of(models), view.fitted_from)


def _check_binnable(height: int, width: int, served: Served) -> None:
    """The window and caffe rules cannot bin every conv5 size: refuse those inputs instead of pooling garbage."""
    if served.rule == "adaptive":
        return
    conv5 = served.sizes.conv5(height, width)
    try:
        if conv5 is None:
            raise InvalidInput("conv5 would be empty")
        check_pyramid(*conv5, served.levels, served.rule)
    except InvalidInput as e:
        raise RouteError(
            f"a {height}x{width} input cannot be pooled under the {served.rule} rule ({e}): use another --short-side "
            "or --policy, or a model trained with rule='adaptive'"
        ) from None
