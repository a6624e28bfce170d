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
from sppnet.core.preprocess import (
    Preprocess,
    resize_to,
    short_side_size,
    subtract_mean,
)
from sppnet.core.profiles import profile_for
from sppnet.engines.model_set import ModelSet, Served

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
    """A BGR (H, W, 3) image as network input under `policy`, fitted into the served range unless refused: its
    `plan_view`, carried out on the CPU with OpenCV (the GPU-fed path carries out the same plan on the device)."""
    plan = plan_view(*image.shape[:2], policy, pre, models, check=False)
    pixels = subtract_mean(_apply(image.astype(np.float32, copy=False), plan.first), pre)
    if plan.second is not None:
        pixels = _apply(pixels, plan.second)
    return View(pixels, plan.fitted_from)


def _apply(image: np.ndarray, stage: Stage) -> np.ndarray:
    """One stage on the CPU: resize (bilinear, as Caffe's tools) when the size changes, then the crop."""
    if stage.resize != image.shape[:2]:
        image = resize_to(image, *stage.resize)
    if (stage.height, stage.width) == stage.resize:
        return image
    return np.ascontiguousarray(image[stage.top : stage.top + stage.height, stage.left : stage.left + stage.width])


def _nearest_scale(height: int, width: int, scales: list[tuple[int, int]]) -> tuple[int, int]:
    """The fixed scale closest in log size and aspect."""
    return min(scales, key=lambda s: abs(math.log(s[0] / height)) + abs(math.log(s[1] / width)))


def _cover(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The size (aspect kept) that covers `target`."""
    cover = max(target[0] / height, target[1] / width)
    return max(target[0], round(height * cover)), max(target[1], round(width * cover))


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
    if _route_or_none(height, width, models.served) is not None:
        return None
    dynamic = models.dynamic
    if dynamic is None:
        target = _nearest_scale(height, width, list(models.fixed))
        return _cover(height, width, target), target
    low = min(p.min[2] for p in dynamic.profiles)
    high_h, high_w = max(p.max[2] for p in dynamic.profiles), max(p.max[3] for p in dynamic.profiles)
    return fitted_size(height, width, low, high_h, high_w)


@dataclass(frozen=True)
class Stage:
    """One resampling: the source resized to `resize` (height, width), then the window at (top, left) of the
    output size cut from it (the whole resized image when there is no crop)."""

    resize: tuple[int, int]
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Plan:
    """How one image becomes network input: the stage from the decoded image (the mean is subtracted after it), the
    stage that fits a cropped view into the served range (after the mean, as `routing.prepare` orders them), and
    its route."""

    source: tuple[int, int]
    first: Stage
    second: Stage | None
    route: Route | None
    fitted_from: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        last = self.second or self.first
        return last.height, last.width


def whole(height: int, width: int) -> Stage:
    """The stage that keeps an image as it is."""
    return Stage((height, width), 0, 0, height, width)


def _resize_crop(scaled: tuple[int, int], served: tuple[int, int]) -> Stage:
    """Resize to `scaled`, then the centred `served` crop."""
    return Stage(scaled, (scaled[0] - served[0]) // 2, (scaled[1] - served[1]) // 2, *served)


def plan_view(
    height: int,
    width: int,
    policy: Policy,
    pre: Preprocess,
    models: ModelSet,
    served: Served | None = None,
    *,
    check: bool = True,
) -> Plan:
    """How an image of height x width becomes network input, from its size alone, and its route.

    The policy's size first; a size no model takes is fitted from the decoded image in one resize under `full`
    and `none` (never through the policy's own size: a 1x2000 image is not first scaled to 112x224000), then its
    long side centre-cropped where the aspect is beyond the range; under `center-crop` and `nearest` the fit comes
    after the crop (and the mean). With `check`, a size no model takes raises RouteError here; without, the plan's
    route is left to `route` (the CPU path routes after it prepares).
    """
    served = served or models.served

    def fit(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
        return None if policy.outside == "error" else _fit_plan(h, w, models)

    second, fitted = None, None
    if policy.name in ("center-crop", "nearest"):
        if policy.name == "center-crop":
            resized, crop = short_side_size(height, width, pre.short_side), pre.crop
            first = Stage(resized, (resized[0] - crop) // 2, (resized[1] - crop) // 2, crop, crop)
        else:
            scales = list(models.fixed)
            if not scales:
                raise RouteError(
                    f"policy 'nearest' needs fixed-size models and {models.directory} has none: use 'full'"
                )
            target = _nearest_scale(height, width, scales)
            first = _resize_crop(_cover(height, width, target), target)
        plan = fit(first.height, first.width)
        if plan is not None:
            second, fitted = _resize_crop(*plan), (first.height, first.width)
    else:
        size = (
            short_side_size(height, width, policy.short_side or pre.crop) if policy.name == "full" else (height, width)
        )
        plan = fit(*size)
        first = whole(*size) if plan is None else _resize_crop(*plan)
        fitted = None if plan is None else size
    final = (second.height, second.width) if second else (first.height, first.width)
    chosen = route_size(*final, served, fitted) if check else _route_or_none(*final, served)
    return Plan((height, width), first, second, chosen, fitted)


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
    return route_size(height, width, models.served, view.fitted_from)


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
