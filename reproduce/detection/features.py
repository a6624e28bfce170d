"""Window features for detection (PAPER.md section 7 steps 2-5): conv5 once per image and scale, each window
mapped to conv5 cells at its chosen scale and SPP-pooled, then fc6/fc7; and R-CNN mode (crop, warp, whole net).

Boxes are float64 (K, 4) (x1, y1, x2, y2) in 0-based pixels of the original image with the right/bottom pixel
included (windows.py's convention); images are (H, W, 3) BGR arrays as `images.load_bgr` returns (uint8 works too).
Timings come back in seconds: "prep" (resizing/warping and the mean), "conv", "pool" and "fc".
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from sppnet.core.errors import InvalidInput
from sppnet.core.models import SPPNet
from sppnet.core.networks import feature_sizes, feature_stride
from sppnet.core.preprocess import Preprocess, resize_to, short_side_size, subtract_mean, to_chw_batch
from sppnet.core.spp import SpatialPyramidPooling
from sppnet.reproduce.windows import image_boxes_to_cells

Rule = Literal["paper", "release"]
RULES: tuple[str, ...] = get_args(Rule)
Layer = Literal["pool5", "fc6", "fc7"]
LAYERS: tuple[str, ...] = get_args(Layer)

PAPER_SCALES: tuple[int, ...] = (480, 576, 688, 864, 1200)
RELEASE_SCALES: tuple[int, ...] = (480, 576, 688, 874, 1200)  # the release code's 874 instead of 864
SINGLE_SCALE: tuple[int, ...] = (688,)
PAPER_TARGET = 224  # scaled window closest to 224 x 224 pixels (PAPER.md 7.3)
RELEASE_TARGET = 208  # spm_expected_scale.m: sz_conv_standard 13 cells x step_standard 16 px
RELEASE_OFFSET = 21.0  # ZF-5's offset0 and offset in the release's spm_pool_caffe_mex.cpp
RELEASE_SHRINK = 6.5


def _check_rule(rule: str, what: str) -> None:
    if rule not in RULES:
        raise InvalidInput(f"{what}: unknown rule {rule!r}; choose one of {', '.join(RULES)}")


def _check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    scales = tuple(int(s) for s in scales)
    if not scales or min(scales) < 1:
        raise InvalidInput(f"scales must be a non-empty list of short-side lengths >= 1; got {scales}")
    return scales


def _as_boxes(boxes: np.ndarray, what: str) -> np.ndarray:
    """(K, 4) finite float64 boxes with x2 >= x1 and y2 >= y1, or a one-line ValueError naming the first bad box."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidInput(f"{what} expects boxes of shape (K, 4) as (x1, y1, x2, y2); got {boxes.shape}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            f"{what}: box {i} {boxes[i].tolist()} is not finite or has x2 < x1 or y2 < y1: boxes are "
            "(x1, y1, x2, y2) with the right/bottom pixel included; drop degenerate proposals first"
        )
    return boxes


def _as_image(image_bgr: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        shape = image_bgr.shape if isinstance(image_bgr, np.ndarray) else type(image_bgr).__name__
        raise InvalidInput(f"{what} expects an (H, W, 3) BGR image; got {shape}: decode with images.load_bgr")
    if min(image_bgr.shape[:2]) < 1:
        raise InvalidInput(f"{what} got an empty image of shape {image_bgr.shape}")
    return image_bgr.astype(np.float32, copy=False)


def clip_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Boxes clipped to the image; ValueError for a non-finite or inverted box, or one wholly outside the image."""
    boxes = _as_boxes(boxes, "clip_boxes")
    height, width = image_hw
    outside = (boxes[:, 0] > width - 1) | (boxes[:, 1] > height - 1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InvalidInput(
            f"clip_boxes: box {i} {boxes[i].tolist()} lies wholly outside the {height}x{width} (HxW) image; "
            "drop it, or pass boxes in this image's pixels"
        )
    upper = np.array([width - 1, height - 1, width - 1, height - 1], dtype=np.float64)
    return np.clip(boxes, 0.0, upper)


def scale_boxes(boxes: np.ndarray, factor: float | tuple[float, float]) -> np.ndarray:
    """Boxes in an image resized by `factor` (one number, or (x, y) per axis), right/bottom pixel included.

    Pixel x covers [x, x + 1), so [x1, x2 + 1) becomes [x1 f, (x2 + 1) f) and x2' = (x2 + 1) f - 1: a whole
    W-wide image maps to the whole W f-wide one. A window narrower than one pixel after scaling keeps x2' = x1'.
    (The release scales the corners instead, (x - 1)(s - 1)/(m - 1) + 1 in 1-based pixels: under a pixel apart.)
    """
    boxes = _as_boxes(boxes, "scale_boxes")
    fx, fy = (float(factor), float(factor)) if np.isscalar(factor) else (float(factor[0]), float(factor[1]))
    if not (fx > 0 and fy > 0):
        raise InvalidInput(f"scale_boxes: factors must be > 0; got ({fx}, {fy})")
    x1, y1 = boxes[:, 0] * fx, boxes[:, 1] * fy
    x2, y2 = (boxes[:, 2] + 1) * fx - 1, (boxes[:, 3] + 1) * fy - 1
    return np.stack([x1, y1, np.maximum(x2, x1), np.maximum(y2, y1)], axis=1)


def _release_axis(
    low: np.ndarray, high: np.ndarray, stride: int, size: int, offset: float, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """Half-open 0-based cells [start, end) along one axis by spm_pool_caffe_mex.cpp's normalisation."""
    low1, high1 = low + 1.0, high + 1.0  # the release's 1-based pixels
    first = np.floor((low1 - offset + shrink) / stride + 0.5) + 1  # 1-based first cell
    last = np.ceil((high1 - offset - shrink) / stride - 0.5) + 1  # 1-based last cell, included
    # The mex collapses a crossed window to its middle cell with C integer division (towards zero), then
    # clamps each end to [1, size] on its own.
    crossed = first > last
    middle = np.fix((first + last) / 2)
    first = np.clip(np.where(crossed, middle, first), 1, size)
    last = np.clip(np.where(crossed, middle, last), 1, size)
    return (first - 1).astype(np.int64), last.astype(np.int64)


def release_boxes_to_cells(
    boxes: np.ndarray,
    stride: int,
    map_h: int,
    map_w: int,
    offset: float = RELEASE_OFFSET,
    shrink: float = RELEASE_SHRINK,
) -> np.ndarray:
    """(K, 4) pixel boxes (0-based, right/bottom included) -> (K, 4) int64 half-open cell boxes, the release's way.

    The release (PAPER.md 7.4) works in 1-based pixels X = x + 1 and 1-based cells: first = floor((X - offset +
    shrink)/S + 0.5) + 1, last = ceil((X - offset - shrink)/S - 0.5) + 1, both included, i.e. the cells whose
    centres offset + S (k - 1) lie nearest the edges moved `shrink` px inward. The 0-based half-open cells are
    [first - 1, last). A crossed window (first > last) becomes the single cell trunc((first + last)/2); each end
    is then clamped to the map, so every result holds at least one cell.
    """
    boxes = _as_boxes(boxes, "release_boxes_to_cells")
    if int(stride) != stride or stride < 1 or map_h < 1 or map_w < 1:
        raise InvalidInput(
            f"release_boxes_to_cells needs an integer stride >= 1 and a map of at least 1x1 cells; "
            f"got stride {stride}, map {map_h}x{map_w}"
        )
    x0, x1 = _release_axis(boxes[:, 0], boxes[:, 2], int(stride), map_w, offset, shrink)
    y0, y1 = _release_axis(boxes[:, 1], boxes[:, 3], int(stride), map_h, offset, shrink)
    return np.stack([x0, y0, x1, y1], axis=1)


def map_windows(boxes: np.ndarray, stride: int, map_h: int, map_w: int, rule: Rule = "paper") -> np.ndarray:
    """Pixel boxes -> half-open conv5 cell boxes by the paper's corner rule (windows.py) or the release's."""
    _check_rule(rule, "map_windows")
    if rule == "paper":
        return image_boxes_to_cells(_as_boxes(boxes, "map_windows"), stride, map_h, map_w)
    return release_boxes_to_cells(boxes, stride, map_h, map_w)


def _axis_factors(image_hw: tuple[int, int], scale: int) -> tuple[float, float]:
    """(x, y) factors of resizing an image so its short side is `scale` (preprocess.short_side_size)."""
    height, width = image_hw
    new_h, new_w = short_side_size(height, width, scale)
    return new_w / width, new_h / height


def choose_scales(
    boxes: np.ndarray,
    image_hw: tuple[int, int],
    scales: Sequence[int],
    rule: Rule = "paper",
    target: int | None = None,
) -> np.ndarray:
    """(K,) int64 index into `scales` per box; scale s resizes the image so that min(h, w) = s (PAPER.md 7.3).

    "paper": the scale whose scaled window has the pixel count closest to target^2 (224^2), with each axis's
    exact factor. "release" (spm_expected_scale.m): expected = round(target * min(h, w) / sqrt(w h)), target 208,
    then the nearest scale. Ties go to the first scale listed (MATLAB's min).
    """
    _check_rule(rule, "choose_scales")
    boxes = _as_boxes(boxes, "choose_scales")
    scales = _check_scales(scales)
    target = target or (PAPER_TARGET if rule == "paper" else RELEASE_TARGET)
    width, height = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    if rule == "paper":
        factors = np.array([_axis_factors(image_hw, s) for s in scales])  # (S, 2)
        area = (width[:, None] * factors[None, :, 0]) * (height[:, None] * factors[None, :, 1])
        return np.argmin(np.abs(area - float(target) ** 2), axis=1).astype(np.int64)
    expected = np.floor(target * min(image_hw) / np.sqrt(width * height) + 0.5)  # MATLAB round, positive values
    distance = np.abs(np.asarray(scales, dtype=np.float64)[None, :] - expected[:, None])
    return np.argmin(distance, axis=1).astype(np.int64)


@dataclass(frozen=True)
class FeatureConfig:
    """How window features are computed; defaults are the paper's five scales and rules (PAPER.md section 7).

    Single scale: scales=SINGLE_SCALE; the release: RELEASE_SCALES with both rules "release". The pyramid levels
    are the model's own (its fc6 takes exactly that length); `target` None means 224 (paper) or 208 (release).
    """

    scales: tuple[int, ...] = PAPER_SCALES
    mapping: Rule = "paper"
    scale_rule: Rule = "paper"
    target: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", _check_scales(self.scales))
        _check_rule(self.mapping, "FeatureConfig.mapping")
        _check_rule(self.scale_rule, "FeatureConfig.scale_rule")
        if self.target is not None and self.target < 1:
            raise InvalidInput(f"FeatureConfig.target must be >= 1 pixels (or None); got {self.target}")


@dataclass(frozen=True)
class Conv5Map:
    """conv5 (C, h, w) of the whole image resized from image_hw to resized_hw, whose short side is `scale`."""

    scale: int
    maps: Tensor
    image_hw: tuple[int, int]
    resized_hw: tuple[int, int]

    @property
    def factor(self) -> tuple[float, float]:
        """(x, y): resized pixels per original pixel, exact per axis."""
        return self.resized_hw[1] / self.image_hw[1], self.resized_hw[0] / self.image_hw[0]


def _device(model: SPPNet) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _inference(model: SPPNet) -> Iterator[None]:
    """Eval mode (dropout off) without gradients; the model's train/eval mode is restored afterwards."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def _new_timing() -> dict[str, float]:
    return {"prep": 0.0, "conv": 0.0, "pool": 0.0, "fc": 0.0}


def _require_spp(model: SPPNet, what: str) -> SpatialPyramidPooling:
    if not isinstance(model.pool, SpatialPyramidPooling):
        raise InvalidInput(f"{what} needs an SPP model (spp=True); use rcnn_features for the no-SPP baseline")
    return model.pool


def _pyramid(
    model: SPPNet, image: np.ndarray, pre: Preprocess, scales: tuple[int, ...], timing: dict[str, float]
) -> list[Conv5Map]:
    """`conv5_pyramid` on a checked image, adding resize/mean and conv seconds to timing["prep"], ["conv"]."""
    height, width = image.shape[:2]
    sizes = [short_side_size(height, width, s) for s in scales]
    device = _device(model)
    maps: dict[tuple[int, int], Tensor] = {}
    with _inference(model):
        for size in dict.fromkeys(sizes):
            feature_sizes(model.spec, *size)  # a clear error for a scale too small for the network
            start = time.perf_counter()
            batch = torch.from_numpy(to_chw_batch([subtract_mean(resize_to(image, *size), pre)])).to(device)
            _sync(device)
            middle = time.perf_counter()
            maps[size] = model.forward_features(batch)[0]
            _sync(device)
            timing["prep"] += middle - start
            timing["conv"] += time.perf_counter() - middle
    return [Conv5Map(s, maps[size], (height, width), size) for s, size in zip(scales, sizes, strict=True)]


def conv5_pyramid(model: SPPNet, image_bgr: np.ndarray, pre: Preprocess, scales: Sequence[int]) -> list[Conv5Map]:
    """conv5 of the whole image at each scale (short side = s), once per distinct resized size, no grad, eval mode.

    The scales of one image differ in size, so each is its own forward pass (repeated sizes share one).
    """
    return _pyramid(model, _as_image(image_bgr, "conv5_pyramid"), pre, _check_scales(scales), _new_timing())


def pool_features(
    model: SPPNet, pyramid: Sequence[Conv5Map], boxes: np.ndarray, scale_index: np.ndarray, rule: Rule = "paper"
) -> Tensor:
    """(K, C * sum(n^2)) SPP vectors: each box (original pixels) scaled to its chosen map, mapped to cells by
    `rule` and pooled with the model's pyramid, one batched `pool_windows` call per scale."""
    pool = _require_spp(model, "pool_features")
    _check_rule(rule, "pool_features")
    boxes = _as_boxes(boxes, "pool_features")
    scale_index = np.asarray(scale_index, dtype=np.int64).reshape(-1)
    in_range = scale_index.size == 0 or (scale_index.min() >= 0 and scale_index.max() < len(pyramid))
    if scale_index.shape[0] != boxes.shape[0] or not in_range:
        raise InvalidInput(
            f"pool_features: scale_index needs one index in [0, {len(pyramid)}) per box ({boxes.shape[0]}); "
            f"got shape {scale_index.shape}"
        )
    dim = pool.output_dim(model.spec.conv5_channels)
    if boxes.shape[0] == 0:
        return torch.zeros((0, dim), device=_device(model))
    boxes = clip_boxes(boxes, pyramid[0].image_hw)
    stride = feature_stride(model.spec)
    out = pyramid[0].maps.new_empty((boxes.shape[0], dim))
    with torch.no_grad():
        for i, level in enumerate(pyramid):
            chosen = np.flatnonzero(scale_index == i)
            if chosen.size == 0:
                continue
            _, map_h, map_w = level.maps.shape
            cells = map_windows(scale_boxes(boxes[chosen], level.factor), stride, map_h, map_w, rule)
            out[torch.from_numpy(chosen).to(out.device)] = pool.pool_windows(level.maps[None], torch.from_numpy(cells))
    return out


def _check_layers(layers: Sequence[str]) -> tuple[str, ...]:
    layers = tuple(dict.fromkeys(layers))
    unknown = [layer for layer in layers if layer not in LAYERS]
    if not layers or unknown:
        raise InvalidInput(f"unknown feature layer(s) {unknown or 'none given'}: choose from {', '.join(LAYERS)}")
    return layers


def _fc_outputs(model: SPPNet, pooled: Tensor, layers: Sequence[str], batch: int) -> dict[str, Tensor]:
    """fc6/fc7 after their ReLU for the requested layers, one head pass per chunk of `batch` rows."""
    wanted = [layer for layer in layers if layer != "pool5"]
    if not wanted:
        return {}
    parts: dict[str, list[Tensor]] = {layer: [] for layer in wanted}
    device = _device(model)
    with _inference(model):
        for chunk in pooled.split(max(1, batch)):
            for layer, x in model.head_features(chunk.to(device), wanted).items():
                parts[layer].append(x)
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


def fc_features(model: SPPNet, pooled: Tensor, layer: Layer = "fc7", batch: int = 1024) -> Tensor:
    """(K, fc width): pooled SPP vectors through the classifier up to `layer`'s ReLU, eval mode, in chunks."""
    if layer not in ("fc6", "fc7"):
        raise InvalidInput(f"fc_features: layer must be 'fc6' or 'fc7'; got {layer!r}")
    return _fc_outputs(model, pooled, (layer,), batch)[layer]


def _empty(model: SPPNet, layers: Sequence[str]) -> dict[str, np.ndarray]:
    widths = {
        "pool5": model.pooled_dim,
        "fc6": model.spec.fc_width,
        "fc7": model.spec.fc_width,
    }
    return {layer: np.zeros((0, widths[layer]), dtype=np.float32) for layer in layers}


def _to_numpy(outputs: dict[str, Tensor], layers: Sequence[str]) -> dict[str, np.ndarray]:
    return {layer: outputs[layer].detach().cpu().numpy().astype(np.float32, copy=False) for layer in layers}


def window_features(
    model: SPPNet,
    image_bgr: np.ndarray,
    boxes: np.ndarray,
    pre: Preprocess,
    config: FeatureConfig | None = None,
    layers: Sequence[str] = ("pool5", "fc7"),
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """SPP-net features of K windows of one image: ({layer: (K, D) float32}, {"prep", "conv", "pool", "fc": s}).

    Boxes are clipped to the image (see `clip_boxes`); each gets its scale by config.scale_rule, its cells by
    config.mapping; conv5 is computed at every configured scale, as the paper times it.
    """
    config = config or FeatureConfig()
    layers = _check_layers(layers)
    _require_spp(model, "window_features")
    image = _as_image(image_bgr, "window_features")
    boxes = clip_boxes(boxes, image.shape[:2])
    timing = _new_timing()
    if boxes.shape[0] == 0:
        return _empty(model, layers), timing
    pyramid = _pyramid(model, image, pre, config.scales, timing)
    device = _device(model)
    start = time.perf_counter()
    scale_index = choose_scales(boxes, image.shape[:2], config.scales, config.scale_rule, config.target)
    outputs = {"pool5": pool_features(model, pyramid, boxes, scale_index, config.mapping)}
    _sync(device)
    timing["pool"] = time.perf_counter() - start
    start = time.perf_counter()
    outputs |= _fc_outputs(model, outputs["pool5"], layers, batch=1024)
    _sync(device)
    timing["fc"] = time.perf_counter() - start
    return _to_numpy(outputs, layers), timing


def _matlab_round(value: float) -> int:
    """MATLAB's round: halves away from zero."""
    return int(np.sign(value) * np.floor(abs(value) + 0.5))


def rcnn_warp(
    image_bgr: np.ndarray, box: Sequence[float], size: int, pre: Preprocess, context_pad: int = 16
) -> np.ndarray:
    """One window as R-CNN feeds it (rcnn_im_crop.m, "warp"): (size, size, 3) float32, mean subtracted.

    The box is grown about its centre by size / (size - 2 context_pad) so that `context_pad` px of context
    surround it in the output, clipped to the image, and that part warped (anisotropic bilinear) to where it
    falls in the size x size output; the part outside the image stays 0 (the mean), as in R-CNN.
    """
    image = _as_image(image_bgr, "rcnn_warp")
    if context_pad < 0 or 2 * context_pad >= size:
        raise InvalidInput(f"rcnn_warp needs 0 <= context_pad < size / 2; got context_pad {context_pad}, size {size}")
    height, width = image.shape[:2]
    x1, y1, x2, y2 = clip_boxes(np.asarray([box]), (height, width))[0] + 1.0  # R-CNN's 1-based pixels
    grow = size / (size - 2 * context_pad)
    half_w, half_h = (x2 - x1 + 1) / 2, (y2 - y1 + 1) / 2
    centre_x, centre_y = x1 + half_w, y1 + half_h
    left, right = _matlab_round(centre_x - half_w * grow), _matlab_round(centre_x + half_w * grow)
    top, bottom = _matlab_round(centre_y - half_h * grow), _matlab_round(centre_y + half_h * grow)
    scale_x, scale_y = size / (right - left + 1), size / (bottom - top + 1)
    pad_x, pad_y = _matlab_round(max(0, 1 - left) * scale_x), _matlab_round(max(0, 1 - top) * scale_y)
    left, top, right, bottom = max(1, left), max(1, top), min(width, right), min(height, bottom)
    crop_w = min(_matlab_round((right - left + 1) * scale_x), size - pad_x)
    crop_h = min(_matlab_round((bottom - top + 1) * scale_y), size - pad_y)
    warped = resize_to(image[top - 1 : bottom, left - 1 : right], crop_h, crop_w)
    mean = pre.mean_for(size, size)
    if mean.ndim == 3:
        mean = mean[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w]
    out = np.zeros((size, size, 3), dtype=np.float32)
    out[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w] = (warped - mean) * np.float32(pre.scale)
    return out


def rcnn_features(
    model: SPPNet,
    image_bgr: np.ndarray,
    boxes: np.ndarray,
    pre: Preprocess,
    size: int | None = None,
    context_pad: int = 16,
    layers: Sequence[str] = ("pool5", "fc7"),
    batch_size: int = 128,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """R-CNN mode: each window warped by `rcnn_warp` and run through the whole network, `batch_size` at a time.

    size defaults to the model's input size (its training size, where SPP is the model's own pyramid); pool5 is
    the pool/SPP output of the warped window. Returns the same ({layer: (K, D)}, timing) as `window_features`.
    """
    layers = _check_layers(layers)
    size = int(size or model.config.input_size or model.spec.input_size)
    feature_sizes(model.spec, size, size)
    image = _as_image(image_bgr, "rcnn_features")
    boxes = clip_boxes(boxes, image.shape[:2])
    timing = _new_timing()
    if boxes.shape[0] == 0:
        return _empty(model, layers), timing
    device = _device(model)
    parts: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    with _inference(model):
        for lo in range(0, boxes.shape[0], max(1, batch_size)):
            start = time.perf_counter()
            crops = [rcnn_warp(image, box, size, pre, context_pad) for box in boxes[lo : lo + batch_size]]
            batch = torch.from_numpy(to_chw_batch(crops)).to(device)
            _sync(device)
            conv_start = time.perf_counter()
            maps = model.forward_features(batch)
            _sync(device)
            pool_start = time.perf_counter()
            outputs = {"pool5": model.pool(maps)}
            _sync(device)
            fc_start = time.perf_counter()
            outputs |= _fc_outputs(model, outputs["pool5"], layers, batch=batch_size)
            _sync(device)
            timing["prep"] += conv_start - start
            timing["conv"] += pool_start - conv_start
            timing["pool"] += fc_start - pool_start
            timing["fc"] += time.perf_counter() - fc_start
            for layer in layers:
                parts[layer].append(outputs[layer])
    return _to_numpy({layer: torch.cat(chunks) for layer, chunks in parts.items()}, layers), timing
