"""Image decoding, in one place: any file Pillow reads becomes an (H, W, 3) float32 BGR array in 0..255.

BGR and 0..255 are Caffe's convention (PAPER.md section 4). Modes are converted as OpenCV's `IMREAD_COLOR`
(what Caffe's tools read with) would: EXIF orientation applied, alpha dropped without compositing, grey repeated
over the three channels. 16-bit grey (`I;16*`, and `I`, Pillow's mode for 16-bit PGM) is scaled by 1/257 so that
65535 maps to 255 (OpenCV keeps the high byte instead: at most 1 level lower); Pillow itself reduces 16-bit colour
PNGs to their high byte. Float (`F`) images are taken as already 0..255. Every failure is an `ImageError`.
Multi-frame files (GIF, TIFF) give their first frame. No PyTorch here: the deployment runtime uses this module.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sppnet.core.errors import BadImage, InvalidInput

# Twice Pillow's warning limit, which is Pillow's own hard limit (DecompressionBombError).
DEFAULT_MAX_PIXELS = 178_956_970

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class ImageError(BadImage):
    """An image that cannot be used: the message names the file, the reason and the fix, on one line."""

    def __init__(self, name: str, reason: str, fix: str) -> None:
        super().__init__(f"{name}: {reason}; {fix}")
        self.name, self.reason, self.fix = name, reason, fix


def load_bgr(path: str | os.PathLike[str], *, min_side: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the image file at `path` to (H, W, 3) float32 BGR in 0..255.

    Raises ImageError for a missing, empty, unreadable, corrupt or truncated file, for one whose header claims
    more than `max_pixels` pixels (checked before decoding), and for one with a side shorter than `min_side`.
    """
    name = os.fspath(path)
    file = Path(path)
    if not file.exists():
        raise ImageError(name, "file not found", "check the path")
    if file.is_dir():
        raise ImageError(name, "is a directory, not an image file", "pass the path of an image file")
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ImageError(name, f"cannot read the file ({error.strerror or error})", "check its permissions") from None
    return decode_bgr(data, name, min_side=min_side, max_pixels=max_pixels)


def decode_bgr(
    data: bytes, name: str = "<bytes>", *, min_side: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes (a JPEG, PNG, ... file's contents) like `load_bgr`; `name` goes in errors."""
    if min_side < 1 or max_pixels < 1:
        raise InvalidInput(f"decode_bgr: min_side ({min_side}) and max_pixels ({max_pixels}) must be >= 1")
    if len(data) == 0:
        raise ImageError(name, "file is empty (0 bytes)", "re-download or re-create it")
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that, at open; max_pixels is checked here instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _open(data, name)
        with image:
            _check_size(image.size, name, min_side, max_pixels)
            try:
                image.load()
                oriented = ImageOps.exif_transpose(image)
            except Exception as error:
                raise ImageError(
                    name, f"image data is truncated or corrupt ({_describe(error)})", "re-download or re-encode it"
                ) from None
            return _to_bgr(oriented, name)


def _open(data: bytes, name: str) -> Image.Image:
    """Read the header only (Pillow decodes lazily)."""
    fix = "check the file type or re-encode it as JPEG or PNG"
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        reason = "not an image Pillow can identify (wrong file type or corrupt header)"
    except Image.DecompressionBombError as error:
        # Above 2 * Image.MAX_IMAGE_PIXELS Pillow refuses at open, whatever max_pixels says.
        reason, fix = f"decompression-bomb guard: {error}", "downscale the image"
    except Exception as error:
        reason, fix = f"image header is truncated or corrupt ({_describe(error)})", "re-download or re-encode it"
    raise ImageError(name, reason, fix)


def _check_size(size: tuple[int, int], name: str, min_side: int, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            name,
            f"header claims {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels} "
            "(decompression-bomb guard)",
            "downscale the image or raise max_pixels",
        )
    if min(width, height) < min_side:
        raise ImageError(
            name,
            f"image is {width}x{height} (WxH), smaller than min_side={min_side} on a side",
            "drop it or upscale it",
        )


def _to_bgr(image: Image.Image, name: str) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float32) / 257.0, 0.0, 255.0)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        if not np.isfinite(grey).all():
            raise ImageError(name, "float image has NaN or infinite pixels", "re-export it with finite values")
        return np.repeat(np.clip(grey, 0.0, 255.0)[:, :, None], 3, axis=2)
    try:
        rgb = image.convert("RGB")
    except ValueError:
        try:
            rgb = image.convert("RGBA").convert("RGB")
        except ValueError:
            raise ImageError(name, f"unsupported pixel mode {image.mode!r}", "convert it to RGB first") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.float32)[:, :, ::-1])


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".replace("\n", " ")
