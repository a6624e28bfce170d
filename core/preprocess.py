"""Caffe preprocessing, one implementation for training, evaluation and the runtime (PAPER.md sections 4-5).

Everything works on (H, W, 3) float32 BGR arrays in 0..255 (as `images.load_bgr` returns) and returns new
arrays; `to_chw_batch` makes the (N, 3, H, W) network input. Mean subtraction is always the last step, on the
final array. No PyTorch here: the deployment runtime uses this module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Literal, get_args

import cv2
import numpy as np

from sppnet.core.errors import ArtifactError, InvalidInput

TrainCrop = Literal["five", "random"]
TRAIN_CROPS: tuple[str, ...] = get_args(TrainCrop)

# Krizhevsky et al. 2012 PCA of ImageNet RGB pixels, as fb.resnet.torch publishes it for 0..1 pixels; the
# eigenvalues are scaled by 255 for Caffe's 0..255. Columns of the matrix are the eigenvectors, rows are R, G, B.
PCA_EIGVAL_RGB = np.array([0.2175, 0.0188, 0.0045]) * 255.0
PCA_EIGVEC_RGB = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)


@dataclass(frozen=True)
class Preprocess:
    """How images become network input; defaults are the paper's (PAPER.md section 4).

    `mean_image` (a .npy BGR mean, (3, H, W) as Caffe's mean file or (H, W, 3); a (3, H, 3) array is read as
    (3, H, W)) replaces `mean_bgr` when set, as Caffe accepts one or the other. It is stretched onto each final
    array with `resize_to`, one rule for crops and whole images of any size alike; Caffe's data layer instead
    subtracts the same-size mean at the crop's offset (mirrored with the crop), which differs only by the
    mean's small spatial variation. `train_crop` "five" is the paper's centre-or-corner crop, "random" is Caffe's
    data layer (any offset). `scale` multiplies the mean-subtracted values (Caffe's transform_param scale; 1 in
    the paper, smaller for networks initialised for unit-variance inputs).
    """

    mean_bgr: tuple[float, float, float] = (128.0, 128.0, 128.0)
    mean_image: str | None = None
    short_side: int = 256
    crop: int = 224
    train_crop: TrainCrop = "five"
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean_bgr", tuple(float(v) for v in self.mean_bgr))
        if self.mean_image is not None:
            object.__setattr__(self, "mean_image", os.fspath(self.mean_image))
        if len(self.mean_bgr) != 3:
            raise InvalidInput(f"Preprocess.mean_bgr needs 3 values (B, G, R); got {self.mean_bgr}")
        if not 1 <= self.crop <= self.short_side:
            raise InvalidInput(
                f"Preprocess needs 1 <= crop <= short_side; got crop={self.crop}, short_side={self.short_side}"
            )
        if self.train_crop not in TRAIN_CROPS:
            raise InvalidInput(f"unknown Preprocess.train_crop {self.train_crop!r}: choose one of {TRAIN_CROPS}")

    def mean_for(self, height: int, width: int) -> np.ndarray:
        """The mean to subtract from an (height, width, 3) array: (3,) BGR, or the mean image resized to it."""
        if self.mean_image is None:
            return np.asarray(self.mean_bgr, dtype=np.float32)
        return resize_to(load_mean_image(self.mean_image), height, width)

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-ready dict, for checkpoints to record the preprocessing."""
        record = asdict(self)
        record["mean_bgr"] = list(self.mean_bgr)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Preprocess:
        """Inverse of `to_json`; unknown keys are an error, missing keys take the paper's defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise InvalidInput(f"Preprocess.from_json: unknown keys {unknown}; expected a subset of {sorted(known)}")
        values = dict(record)
        if "mean_bgr" in values:
            values["mean_bgr"] = tuple(values["mean_bgr"])
        return cls(**values)


@lru_cache(maxsize=8)
def load_mean_image(path: str) -> np.ndarray:
    """Read a .npy BGR mean as (H, W, 3) float32, from (3, H, W) (Caffe's layout, preferred when ambiguous)
    or (H, W, 3). Cached: do not modify the result."""
    try:
        mean = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:  # missing, unreadable, or not a plain .npy array
        raise ArtifactError(
            f"mean image {path} cannot be read ({type(e).__name__}: {e}); the preprocessing recorded with this model "
            "points at it: put the file back there, or import the Caffe model again with --mean"
        ) from e
    if mean.ndim == 3 and mean.shape[0] == 3:
        mean = mean.transpose(1, 2, 0)
    elif mean.ndim != 3 or mean.shape[2] != 3:
        raise InvalidInput(f"mean image {path}: shape {mean.shape} is neither (3, H, W) nor (H, W, 3); save a BGR mean")
    mean = np.ascontiguousarray(mean, dtype=np.float32)
    mean.flags.writeable = False
    return mean


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        shape = img.shape if isinstance(img, np.ndarray) else type(img).__name__
        raise InvalidInput(f"{what} expects an (H, W, 3) BGR array; got {shape}: decode with images.load_bgr")
    return img.astype(np.float32, copy=False)


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize to (height, width): cv2 INTER_LINEAR (half-pixel centres, edge clamped), as Caffe's tools."""
    img = _check_image(img, "resize_to")
    if height < 1 or width < 1:
        raise InvalidInput(f"resize_to: target size {height}x{width} must be at least 1x1")
    return cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=cv2.INTER_LINEAR)


def short_side_size(height: int, width: int, s: int) -> tuple[int, int]:
    """(height, width) with the short side exactly s and the long side long * s / short rounded, half up."""
    if s < 1:
        raise InvalidInput(f"short side must be >= 1; got {s}")
    short, long = min(height, width), max(height, width)
    scaled = (2 * long * s + short) // (2 * short)
    return (s, scaled) if height <= width else (scaled, s)


def resize_short_side(img: np.ndarray, s: int) -> np.ndarray:
    """Resize keeping the aspect ratio so that the short side is exactly s."""
    img = _check_image(img, "resize_short_side")
    return resize_to(img, *short_side_size(img.shape[0], img.shape[1], s))


def _crop_offsets(img: np.ndarray, size: int, what: str) -> tuple[tuple[int, int], ...]:
    """Caffe's oversample positions (top, left): top-left, top-right, bottom-left, bottom-right, centre."""
    height, width = img.shape[:2]
    if size < 1 or size > height or size > width:
        raise InvalidInput(
            f"{what}: a {size}x{size} crop does not fit a {height}x{width} (HxW) image; "
            f"resize it first (resize_short_side(img, s) with s >= {size})"
        )
    bottom, right = height - size, width - size
    return (0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)


def _crop(img: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centred size x size crop at offset ((H - size) // 2, (W - size) // 2), as Caffe's test phase."""
    img = _check_image(img, "center_crop")
    return _crop(img, *_crop_offsets(img, size, "center_crop")[4], size)


def corner_crops(img: np.ndarray, size: int) -> np.ndarray:
    """(4, size, size, 3): top-left, top-right, bottom-left, bottom-right."""
    img = _check_image(img, "corner_crops")
    return np.stack([_crop(img, top, left, size) for top, left in _crop_offsets(img, size, "corner_crops")[:4]])


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size crop at a uniform offset, top drawn before left (Caffe's data layer)."""
    img = _check_image(img, "random_crop")
    _crop_offsets(img, size, "random_crop")
    top = int(rng.integers(0, img.shape[0] - size + 1))
    left = int(rng.integers(0, img.shape[1] - size + 1))
    return _crop(img, top, left, size)


def ten_views(img: np.ndarray, size: int) -> np.ndarray:
    """(10, size, size, 3) in Caffe's `oversample` order: top-left, top-right, bottom-left, bottom-right,
    centre, then the horizontal flips of those five in the same order (PAPER.md section 5)."""
    img = _check_image(img, "ten_views")
    five = np.stack([_crop(img, top, left, size) for top, left in _crop_offsets(img, size, "ten_views")])
    return np.concatenate([five, five[:, :, ::-1]])


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(_check_image(img, "hflip")[:, ::-1])


def colour_alter(img: np.ndarray, rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
    """Krizhevsky's PCA lighting noise: add sum_j eigvec[:, j] * alpha_j * eigval_j to every pixel.

    alpha = rng.normal(0, std, 3), one per eigenvector in eigenvalue order; the shift is computed in RGB and
    added to the B, G, R channels reversed. No clipping (as Krizhevsky and fb.resnet.torch).
    """
    img = _check_image(img, "colour_alter")
    alpha = rng.normal(0.0, std, size=3)
    shift_rgb = PCA_EIGVEC_RGB @ (alpha * PCA_EIGVAL_RGB)
    return img + shift_rgb[::-1].astype(np.float32)


def subtract_mean(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """img minus the constant BGR mean (or the mean image resized to img), times Caffe's transform scale."""
    img = _check_image(img, "subtract_mean")
    centred = img - pre.mean_for(img.shape[0], img.shape[1])
    return centred if pre.scale == 1.0 else centred * np.float32(pre.scale)


def to_chw_batch(views: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Stack same-size (H, W, 3) views into a contiguous (N, 3, H, W) float32 batch."""
    views = [_check_image(view, "to_chw_batch") for view in views]
    if not views:
        raise InvalidInput("to_chw_batch got no views; pass at least one (H, W, 3) array")
    shapes = sorted({view.shape for view in views})
    if len(shapes) > 1:
        raise InvalidInput(f"to_chw_batch got views of different sizes {shapes}: batch same-size views only")
    return np.ascontiguousarray(np.stack(views).transpose(0, 3, 1, 2), dtype=np.float32)


def train_view(img: np.ndarray, pre: Preprocess, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """One training view (PAPER.md section 4): short side to pre.short_side, a pre.crop crop, random flip,
    colour altering, then (multi-size training) the crop resized to size x size, then the mean subtracted.

    The crop is one of the centre and four corners drawn uniformly (train_crop "five") or any offset
    ("random"); rng draws the crop, then the flip (probability 1/2), then the colour noise.
    """
    resized = resize_short_side(img, pre.short_side)
    if pre.train_crop == "five":
        top, left = _crop_offsets(resized, pre.crop, "train_view")[int(rng.integers(0, 5))]
        view = _crop(resized, top, left, pre.crop)
    else:
        view = random_crop(resized, pre.crop, rng)
    if rng.random() < 0.5:
        view = hflip(view)
    view = colour_alter(view, rng)
    if size is not None and size != pre.crop:
        view = resize_to(view, size, size)
    return subtract_mean(view, pre)


def center_view(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The 1-view test input (PAPER.md section 5): short side to pre.short_side, centre pre.crop crop, mean off."""
    return subtract_mean(center_crop(resize_short_side(img, pre.short_side), pre.crop), pre)


def ten_crop_views(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The 10-view test input, (10, crop, crop, 3) in `ten_views` order, mean subtracted."""
    views = ten_views(resize_short_side(img, pre.short_side), pre.crop)
    return np.stack([subtract_mean(view, pre) for view in views])


def full_view(img: np.ndarray, pre: Preprocess, short_side: int | None = None) -> np.ndarray:
    """The whole image, aspect kept, short side `short_side` (default pre.short_side), mean subtracted."""
    return subtract_mean(resize_short_side(img, pre.short_side if short_side is None else short_side), pre)
