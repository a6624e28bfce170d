"""Object proposals: selective search in fast mode (PAPER.md section 7 step 1), cached per image on disk.

Uses OpenCV contrib's implementation (`cv2.ximgproc.segmentation`, fast mode: HSV and Lab, k = 150, 300, 450,
sigma 0.8). Boxes are float64 (K, 4) (x1, y1, x2, y2), 0-based, right/bottom pixel included, as everywhere in
`sppnet.reproduce.detection`. OpenCV ranks regions by C `rand()` times their hierarchy level (Uijlings' pseudo-random
ranking), so the order, and so which boxes survive a cut at `max_proposals`, can change between runs; the cache pins
them per image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from sppnet.core.atomic import sha256, write_atomic
from sppnet.core.errors import InvalidInput
from sppnet.core.images import ImageError, decode_bgr
from sppnet.reproduce.detection.boxes import valid_boxes

CACHE_FORMAT = 1


@dataclass(frozen=True)
class ProposalSettings:
    """What selective search returns for one image.

    Attributes:
        max_proposals: keep at most this many boxes, in OpenCV's ranked order (the paper's ~2000).
        min_size: drop boxes narrower or shorter than this many pixels of the original image (R-CNN's
            selective-search script used 20).
        max_side: if set, images whose long side exceeds it are downscaled to it first and the boxes scaled back
            (faster, fewer and coarser boxes). None, the default, runs on the original image as the paper did.
    """

    max_proposals: int = 2000
    min_size: int = 20
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.max_proposals < 1 or self.min_size < 1 or (self.max_side is not None and self.max_side < 16):
            raise InvalidInput(f"ProposalSettings needs max_proposals >= 1, min_size >= 1, max_side >= 16; got {self}")


def selective_search(image: np.ndarray, settings: ProposalSettings = ProposalSettings()) -> np.ndarray:
    """Proposal boxes (K, 4) for an (H, W, 3) BGR image in 0..255 (uint8, or float as `load_bgr` gives).

    Boxes are clipped to the image, deduplicated (first occurrence kept), at least `min_size` pixels wide and high,
    and at most `max_proposals`, in OpenCV's order. An image with no proposal left gives a (0, 4) array.
    """
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InvalidInput(f"selective_search expects an (H, W, 3) BGR image; got shape {image.shape}")
    bgr = image if image.dtype == np.uint8 else np.rint(np.clip(image, 0, 255)).astype(np.uint8)
    height, width = bgr.shape[:2]
    scale = 1.0
    if settings.max_side is not None and max(height, width) > settings.max_side:
        scale = settings.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)

    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(bgr))
    search.switchToSelectiveSearchFast()
    rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)

    # (x, y, w, h) covers columns x .. x + w - 1; a downscaled box is mapped back to the pixels it covers.
    boxes = np.stack(
        [
            np.floor(rects[:, 0] / scale),
            np.floor(rects[:, 1] / scale),
            np.ceil((rects[:, 0] + rects[:, 2]) / scale) - 1,
            np.ceil((rects[:, 1] + rects[:, 3]) / scale) - 1,
        ],
        axis=1,
    )
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - 1)
    boxes = boxes[valid_boxes(boxes, settings.min_size)]
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)][: settings.max_proposals].reshape(-1, 4)


class ProposalCache:
    """Selective-search boxes cached as `directory/<key>.npy`, the key a sha256 of the image bytes and settings.

    Files are written atomically, so a second `get` for the same image and settings is one file read. A cache
    file that cannot be read back as valid boxes is recomputed and rewritten; the first such file is reported
    with a RuntimeWarning and all of them are counted in `recomputed`.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.recomputed = 0

    def path(self, image_bytes: bytes, settings: ProposalSettings = ProposalSettings()) -> Path:
        """The cache file for an image file's bytes under `settings`."""
        record = {"format": CACHE_FORMAT, "image_sha256": sha256(image_bytes), **asdict(settings)}
        key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        return self.directory / f"{key}.npy"

    def get(
        self,
        image_path: str | os.PathLike[str],
        image: np.ndarray | None = None,
        settings: ProposalSettings = ProposalSettings(),
    ) -> np.ndarray:
        """Proposals for the image file at `image_path`, from the cache or computed and stored.

        `image`, if given, is that file already decoded to BGR (as `load_bgr` gives it) and saves decoding it.
        """
        try:
            data = Path(image_path).read_bytes()
        except OSError as error:
            raise ImageError(
                os.fspath(image_path), f"cannot read the file ({error.strerror or error})", "check the path"
            ) from None
        file = self.path(data, settings)
        if file.exists():
            cached = _read_boxes(file)
            if cached is not None:
                return cached
            self.recomputed += 1
            if self.recomputed == 1:
                warnings.warn(
                    f"proposal cache file {file} is corrupt: recomputing it (further corrupt files in "
                    f"{self.directory} are recomputed without a warning)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if image is None:
            image = decode_bgr(data, os.fspath(image_path))
        boxes = selective_search(image, settings)
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, boxes, allow_pickle=False)
        write_atomic(file, buffer.getvalue())
        return boxes


def _read_boxes(file: Path) -> np.ndarray | None:
    """The (K, 4) float64 boxes stored in `file`, or None if it is unreadable or holds anything else."""
    try:
        boxes = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(boxes, np.ndarray) or boxes.dtype != np.float64 or boxes.ndim != 2 or boxes.shape[1] != 4:
        return None
    if not valid_boxes(boxes).all() or (boxes[:, :2] < 0).any():
        return None
    return boxes
