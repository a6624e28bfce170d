"""Image -> network input -> route: the resize policy, the exact Caffe preprocessing, and the model that takes it.

A policy decides the input size (PAPER.md section 5); the preprocessing is the training pipeline's own
(`sppnet.core.preprocess`). The route is the exact fixed-size model when the size matches one, otherwise the
dynamic model's tightest optimisation profile that covers the size, otherwise an error or, with
`outside="resize"`, the image rescaled (aspect kept) into the dynamic range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sppnet.core.bins import check_pyramid
from sppnet.core.caffe_shapes import feature_map_size
from sppnet.core.preprocess import (
    Preprocess,
    center_view,
    full_view,
    resize_to,
    subtract_mean,
)
from sppnet.engines.model_set import ModelSet
from sppnet.export.profiles import profile_for

POLICIES = ("full", "center-crop", "nearest", "none")
OUTSIDE = ("error", "resize")


class RouteError(ValueError):
    """No model takes this image at this size; the message names the range and the options."""


@dataclass(frozen=True)
class Policy:
    """How an image becomes network input.

    full: the whole image, aspect kept, short side `short_side` (default: the preprocessing's crop, so a square
      image lands on the training-size engine). center-crop: the paper's 1-view test (short side, then centre
      crop; 256/224 at the paper's scale). nearest: resized to cover the fixed scale closest in size and aspect,
      then centre-cropped to it. none: the image as it is. `outside`: what to do when the size is outside every
      profile.
    """

    name: str = "full"
    short_side: int | None = None
    outside: str = "error"

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}: choose one of {', '.join(POLICIES)}")
        if self.outside not in OUTSIDE:
            raise ValueError(f"unknown outside-range action {self.outside!r}: choose one of {', '.join(OUTSIDE)}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"policy short side must be >= 1; got {self.short_side}")

    def describe(self) -> str:
        side = f" {self.short_side}" if self.short_side else ""
        return f"{self.name}{side}" + (" (resize outside the profiles)" if self.outside == "resize" else "")


@dataclass(frozen=True)
class Route:
    """Where one image went: the model file, its profile, and the input size it was given."""

    model: str
    kind: str
    profile: int
    height: int
    width: int

    def key(self) -> tuple[str, int, int, int]:
        """Images with the same key can share a batch."""
        return (self.model, self.profile, self.height, self.width)

    def to_json(self) -> dict[str, object]:
        return {"model": self.model, "kind": self.kind, "profile": self.profile, "size": [self.height, self.width]}


def prepare(image: np.ndarray, policy: Policy, pre: Preprocess, models: ModelSet) -> np.ndarray:
    """A BGR uint8 (H, W, 3) image as mean-subtracted float32 (h, w, 3) network input under `policy`."""
    if policy.name == "center-crop":
        view = center_view(image, pre)
    elif policy.name == "full":
        view = full_view(image, pre, policy.short_side or pre.crop)
    elif policy.name == "nearest":
        view = _nearest(image, pre, models)
    else:
        view = subtract_mean(image.astype(np.float32), pre)
    if policy.outside == "resize" and _route_or_none(view.shape[0], view.shape[1], models) is None:
        view = _into_range(view, models)
    return view


def _nearest(image: np.ndarray, pre: Preprocess, models: ModelSet) -> np.ndarray:
    scales = list(models.fixed)
    if not scales:
        raise RouteError(f"policy 'nearest' needs fixed-size models and {models.directory} has none: use 'full'")
    h, w = image.shape[:2]
    target = min(scales, key=lambda s: abs(math.log(s[0] / h)) + abs(math.log(s[1] / w)))
    cover = max(target[0] / h, target[1] / w)
    resized = resize_to(image, max(target[0], round(h * cover)), max(target[1], round(w * cover)))
    top, left = (resized.shape[0] - target[0]) // 2, (resized.shape[1] - target[1]) // 2
    return subtract_mean(resized[top : top + target[0], left : left + target[1]], pre)


def _into_range(view: np.ndarray, models: ModelSet) -> np.ndarray:
    """Rescale (aspect kept) so the size fits the dynamic model's range, if any scale does."""
    dynamic = models.dynamic
    if dynamic is None:
        return view
    lo = dynamic.profiles[0].min[2]
    hi_h, hi_w = max(p.max[2] for p in dynamic.profiles), max(p.max[3] for p in dynamic.profiles)
    h, w = view.shape[:2]
    factor = min(hi_h / h, hi_w / w, 1.0) if h > hi_h or w > hi_w else max(lo / min(h, w), 1.0)
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    return resize_to(view, new_h, new_w) if (new_h, new_w) != (h, w) else view


def _route_or_none(height: int, width: int, models: ModelSet) -> Route | None:
    fixed = models.fixed.get((height, width))
    if fixed is not None:
        return Route(fixed.name, "fixed", 0, height, width)
    dynamic = models.dynamic
    if dynamic is not None and any(p.covers(height, width) for p in dynamic.profiles):
        return Route(dynamic.name, "dynamic", profile_for(list(dynamic.profiles), height, width), height, width)
    return None


def route(height: int, width: int, models: ModelSet) -> Route:
    """The model and profile for an input of height x width; RouteError naming the ranges otherwise."""
    found = _route_or_none(height, width, models)
    if found is not None:
        if found.kind == "dynamic":
            _check_binnable(height, width, models)
        return found
    fixed = ", ".join(f"{h}x{w}" for h, w in models.fixed) or "none"
    dynamic = models.dynamic
    ranges = "; ".join(p.describe() for p in dynamic.profiles) if dynamic else "no dynamic model"
    raise RouteError(
        f"no model takes a {height}x{width} input (fixed sizes: {fixed}; dynamic: {ranges}): use --outside resize, "
        "another --policy, or export with a larger --max-size"
    )


def _check_binnable(height: int, width: int, models: ModelSet) -> None:
    """The window and caffe rules cannot bin every conv5 size: refuse those inputs instead of pooling garbage."""
    levels, rule = models.spp["levels"], models.spp["rule"]
    if rule == "adaptive":
        return
    conv5 = feature_map_size([tuple(layer) for layer in models.manifest["sizes"]["layers"]], height, width)
    try:
        if conv5 is None:
            raise ValueError("conv5 would be empty")
        check_pyramid(*conv5, levels, rule)
    except ValueError as e:
        raise RouteError(
            f"a {height}x{width} input cannot be pooled under the {rule} rule ({e}): use another --short-side or "
            "--policy, or a model trained with rule='adaptive'"
        ) from None
