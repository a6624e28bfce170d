"""Classification testing (PAPER.md section 5): 1 crop, 10 views, the full image, and multi-view on conv5.

`evaluate` runs one protocol over a list of (H, W, 3) BGR images and returns top-1 / top-5 error; scores are
softmax probabilities averaged over each image's views. All preprocessing is `preprocess`'s.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sppnet.core.errors import InvalidInput
from sppnet.core.networks import feature_sizes, feature_stride
from sppnet.core.preprocess import (
    Preprocess,
    center_crop,
    center_view,
    full_view,
    hflip,
    resize_short_side,
    resize_to,
    short_side_size,
    subtract_mean,
    ten_crop_views,
    ten_views,
    to_chw_batch,
)
from sppnet.reproduce.windows import image_boxes_to_cells

MODES: tuple[str, ...] = ("crop", "10view", "full", "multiview")
# The paper's multi-view scales for its 224 crop (PAPER.md section 5); other crops scale them.
PAPER_SCALES: tuple[int, ...] = (224, 256, 300, 360, 448, 560)
PAPER_CROP = 224


def default_scales(crop: int) -> tuple[int, ...]:
    """The paper's multi-view scales times crop / 224, rounded half up: (112, 128, 150, 180, 224, 280) at 112."""
    return tuple((2 * s * crop + PAPER_CROP) // (2 * PAPER_CROP) for s in PAPER_SCALES)


@dataclass
class EvalResult:
    """One protocol's errors: fractions in [0, 1] over n images; `views` counts every view scored.

    `size` is the network input side (crop, 10view), the short side (full) or None (multiview, which uses
    `scales`). When kept, `top5` holds each image's predicted classes, best first, (n, min(5, classes)), and
    `scores` its view-averaged softmax, (n, classes).
    """

    mode: str
    size: int | None
    scales: tuple[int, ...] | None
    n: int
    views: int
    top1_err: float
    top5_err: float
    top5: np.ndarray | None = None
    scores: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-ready dict."""
        return {
            "mode": self.mode,
            "size": self.size,
            "scales": None if self.scales is None else list(self.scales),
            "n": self.n,
            "views": self.views,
            "top1_err": self.top1_err,
            "top5_err": self.top5_err,
            "top5": None if self.top5 is None else self.top5.tolist(),
            "scores": None if self.scores is None else self.scores.tolist(),
        }


def multiview_windows(height: int, width: int, crop: int) -> np.ndarray:
    """The multi-view windows of a height x width image: (K, 4) inclusive pixel boxes, crop x crop each.

    Caffe's oversample corners (top-left, top-right, bottom-left, bottom-right), the centre, then the middles
    of the top, bottom, left and right sides; offsets are 0, (side - crop) // 2 and side - crop as Caffe's
    centre crop. Repeated positions are dropped, so an image whose short side is the crop keeps the 3 along
    its long side (PAPER.md section 5: 6 views with flips at 224), and a crop-sized square keeps 1.
    """
    if not 1 <= crop <= min(height, width):
        raise InvalidInput(f"multiview_windows: a {crop}x{crop} window does not fit a {height}x{width} (HxW) image")
    top, mid_y, bottom = 0, (height - crop) // 2, height - crop
    left, mid_x, right = 0, (width - crop) // 2, width - crop
    corners = [(top, left), (top, right), (bottom, left), (bottom, right), (mid_y, mid_x)]
    sides = [(top, mid_x), (bottom, mid_x), (mid_y, left), (mid_y, right)]
    positions = list(dict.fromkeys(corners + sides))
    return np.array([(x, y, x + crop - 1, y + crop - 1) for y, x in positions], dtype=np.int64)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def _tensor(views: Sequence[np.ndarray] | np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(to_chw_batch(views)).to(device)


def _softmax(logits: Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def pooled_views(model: nn.Module, img: np.ndarray, pre: Preprocess, scale: int) -> Tensor:
    """SPP vectors of the multi-view windows at one scale, (2K, D): the K windows on the image's conv5, then
    the same K on its mirror's conv5 (the mirror's window set is the mirrored set, so these are the flipped
    views). conv5 is computed once for both, and all windows are pooled in one `pool_windows` call."""
    resized = resize_short_side(img, scale)
    height, width = resized.shape[:2]
    boxes = multiview_windows(height, width, pre.crop)
    views = [subtract_mean(resized, pre), subtract_mean(hflip(resized), pre)]
    maps = model.forward_features(_tensor(views, _device(model)))
    cells = torch.from_numpy(image_boxes_to_cells(boxes, feature_stride(model.spec), maps.shape[2], maps.shape[3]))
    image_index = torch.arange(2).repeat_interleave(len(boxes))
    return model.pool_windows(maps, cells.repeat(2, 1), image_index)


def _multiview_scores(model: nn.Module, img: np.ndarray, pre: Preprocess, scales: tuple[int, ...]) -> np.ndarray:
    """Softmax of every view of one image: the windows at each scale, then the full image and its mirror."""
    device = _device(model)
    pooled = [pooled_views(model, img, pre, s) for s in scales]
    full = resize_short_side(img, pre.short_side)
    full_views = _tensor([subtract_mean(full, pre), subtract_mean(hflip(full), pre)], device)
    pooled.append(model.pool(model.forward_features(full_views)))
    return _softmax(model.forward_head(torch.cat(pooled)))


def _chunks(items: Iterator[tuple[int, np.ndarray]], size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    chunk: list[tuple[int, np.ndarray]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _crop_views(img: np.ndarray, pre: Preprocess, size: int) -> np.ndarray:
    if size == pre.crop:
        return center_view(img, pre)[None]
    view = resize_to(center_crop(resize_short_side(img, pre.short_side), pre.crop), size, size)
    return subtract_mean(view, pre)[None]


def _ten_views(img: np.ndarray, pre: Preprocess, size: int) -> np.ndarray:
    if size == pre.crop:
        return ten_crop_views(img, pre)
    views = ten_views(resize_short_side(img, pre.short_side), pre.crop)
    return np.stack([subtract_mean(resize_to(view, size, size), pre) for view in views])


def _score_views(
    model: nn.Module,
    groups: Sequence[Sequence[int]],
    views_of: Callable[[int], np.ndarray],
    batch_size: int,
    num: int,
    classes: int,
) -> tuple[np.ndarray, int]:
    """Average softmax per image over the views `views_of(image_index)` gives; batch_size inputs per forward,
    a batch never mixing two groups (full mode groups images by resized shape)."""
    device = _device(model)
    sums = np.zeros((num, classes))
    counts = np.zeros(num, dtype=np.int64)
    for group in groups:
        stream = ((i, view) for i in group for view in views_of(i))
        for chunk in _chunks(stream, batch_size):
            index = np.array([i for i, _ in chunk])
            probs = _softmax(model(_tensor([view for _, view in chunk], device)))
            np.add.at(sums, index, probs)
            np.add.at(counts, index, 1)
    return sums / counts[:, None], int(counts.sum())


def _check_size(model: nn.Module, mode: str, size: int, what: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidInput(f"evaluate: mode {mode!r} needs a positive integer {what}; got {size!r}")
    try:
        feature_sizes(model.spec, int(size), int(size))
    except ValueError as err:
        raise InvalidInput(f"evaluate: mode {mode!r} {what} {size} is too small for the network: {err}") from None


def _setting(
    model: nn.Module, mode: str, pre: Preprocess, size: int | None, scales: Sequence[int] | int | None
) -> tuple[int | None, tuple[int, ...] | None]:
    """Validate a protocol and resolve its defaults: (size, scales)."""
    if mode not in MODES:
        raise InvalidInput(f"evaluate: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("full", "multiview") and not model.config.spp:
        raise InvalidInput(
            f"evaluate: mode {mode!r} needs an SPP model (spp=True); the no-SPP baseline's fc6 takes one input "
            "size: use 'crop' or '10view'"
        )
    if mode != "multiview":
        if scales is not None:
            raise InvalidInput(f"evaluate: scales are for mode 'multiview'; mode {mode!r} takes size")
        size = (pre.short_side if mode == "full" else pre.crop) if size is None else size
        _check_size(model, mode, size, "short side" if mode == "full" else "size")
        return int(size), None
    if size is not None:
        raise InvalidInput("evaluate: mode 'multiview' takes scales, not size (its full views use pre.short_side)")
    scales = default_scales(pre.crop) if scales is None else scales
    scales = (scales,) if isinstance(scales, (int, np.integer)) else tuple(scales)
    if not scales:
        raise InvalidInput("evaluate: mode 'multiview' needs at least one scale")
    for s in scales:
        _check_size(model, mode, s, "scale")
        if s < pre.crop:
            raise InvalidInput(f"evaluate: multiview scale {s} is below the crop {pre.crop}: its windows would not fit")
    _check_size(model, mode, pre.short_side, "pre.short_side (full views)")
    return None, tuple(int(s) for s in scales)


def _check_data(images: Sequence[np.ndarray], labels: Sequence[int], classes: int) -> np.ndarray:
    if len(images) == 0:
        raise InvalidInput("evaluate got no images; pass at least one (H, W, 3) BGR array")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise InvalidInput(f"evaluate got {len(images)} images but labels of shape {labels.shape}: one label per image")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes:
        raise InvalidInput(
            f"evaluate: labels must be integers in [0, {classes}); got {labels.dtype} in "
            f"[{labels.min()}, {labels.max()}]"
        )
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            shape = img.shape if isinstance(img, np.ndarray) else type(img).__name__
            raise InvalidInput(f"evaluate: image {i} has shape {shape}; expected an (H, W, 3) BGR array")
    return labels.astype(np.int64)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(training)


def _errors(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Top-1 and top-5 error and the top-5 classes; ties go to the lower class index."""
    top5 = np.argsort(-probs, axis=1, kind="stable")[:, : min(5, probs.shape[1])]
    top1_err = float(np.mean(top5[:, 0] != labels))
    top5_err = float(np.mean(~(top5 == labels[:, None]).any(axis=1)))
    return top1_err, top5_err, top5


def evaluate(
    model: nn.Module,
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    *,
    mode: str,
    pre: Preprocess,
    size: int | None = None,
    scales: Sequence[int] | None = None,
    batch_size: int = 32,
    keep_predictions: bool = False,
) -> EvalResult:
    """Test `model` (an `SPPNet`) on (H, W, 3) BGR images of any size with one protocol of PAPER.md section 5.

    Args:
        mode: "crop" (short side pre.short_side, centre pre.crop crop, resized to size x size when size is given),
            "10view" (`ten_views` at pre.crop, each resized to size), "full" (whole image, short side `size`,
            default pre.short_side) or "multiview" (conv5 once per scale and mirror, windows pooled from it,
            plus the full image and its mirror at pre.short_side; scales default to `default_scales(pre.crop)`).
        batch_size: network inputs per forward pass (full mode batches images of equal resized shape).
        keep_predictions: store each image's top-5 classes and averaged softmax in the result.
    """
    if batch_size < 1:
        raise InvalidInput(f"evaluate: batch_size must be >= 1; got {batch_size}")
    size, scales = _setting(model, mode, pre, size, scales)
    classes = model.config.num_classes
    labels = _check_data(images, labels, classes)
    num = len(images)
    with _eval_mode(model):
        if mode in ("crop", "10view"):
            make = _crop_views if mode == "crop" else _ten_views
            probs, views = _score_views(
                model, [range(num)], lambda i: make(images[i], pre, size), batch_size, num, classes
            )
        elif mode == "full":
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, img in enumerate(images):
                by_shape.setdefault(short_side_size(img.shape[0], img.shape[1], size), []).append(i)
            probs, views = _score_views(
                model,
                list(by_shape.values()),
                lambda i: full_view(images[i], pre, size)[None],
                batch_size,
                num,
                classes,
            )
        else:
            per_image = [_multiview_scores(model, img, pre, scales) for img in images]
            probs = np.stack([p.mean(axis=0) for p in per_image])
            views = sum(len(p) for p in per_image)
    top1_err, top5_err, top5 = _errors(probs, labels)
    if not keep_predictions:
        return EvalResult(mode, size, scales, num, views, top1_err, top5_err)
    return EvalResult(mode, size, scales, num, views, top1_err, top5_err, top5, probs)


def evaluate_many(
    model: nn.Module,
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    pre: Preprocess,
    plan: Sequence[tuple[str, Any]],
    *,
    batch_size: int = 32,
    keep_predictions: bool = False,
) -> list[EvalResult]:
    """Evaluate several protocols, one `EvalResult` each: plan entries are (mode, size), where for "multiview"
    the second item is its scales (None for the default, an int or a sequence). Every entry is checked first."""
    plan = [(mode, value) for mode, value in plan]
    for mode, value in plan:
        _setting(model, mode, pre, *((None, value) if mode == "multiview" else (value, None)))
    return [
        evaluate(
            model,
            images,
            labels,
            mode=mode,
            pre=pre,
            **({"scales": value} if mode == "multiview" else {"size": value}),
            batch_size=batch_size,
            keep_predictions=keep_predictions,
        )
        for mode, value in plan
    ]


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    split: str = "test",
    *,
    mode: str,
    size: int | None = None,
    device: str = "auto",
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> EvalResult:
    """`sppnet evaluate`: a run on DIR/<split> (ImageFolder layout) with one protocol on `device`; bad images are
    skipped and reported through `log`."""
    from sppnet.core.devices import resolve_device
    from sppnet.core.runs import load_model, load_preprocess
    from sppnet.reproduce.datasets import builtin_split, load_images

    model, pre = load_model(run_dir).to(resolve_device(device)), load_preprocess(run_dir)
    images, kept, bad = load_images(builtin_split(data_dir, split), on_bad="skip")
    for item in bad:
        log(f"skipped {item.path}: {item.reason}")
    labels = [sample.label for sample in kept.samples]
    return evaluate(model, images, labels, mode=mode, pre=pre, size=size)
