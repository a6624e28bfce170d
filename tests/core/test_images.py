"""load_bgr / decode_bgr: every mode becomes (H, W, 3) float32 BGR 0..255, every failure an ImageError naming it."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet.core.images import ImageError, decode_bgr, load_bgr

RNG = np.random.default_rng(20140618)


def _save(tmp_path: Path, image: Image.Image, name: str, **options: object) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def _random_rgb(height: int = 7, width: int = 11) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A greyscale PNG whose IHDR claims width x height, with one row of data (never decoded by these tests)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_rgb_png_comes_back_as_bgr_float32_exactly(tmp_path: Path) -> None:
    rgb = _random_rgb()
    out = load_bgr(_save(tmp_path, Image.fromarray(rgb), "a.png"))
    assert out.dtype == np.float32 and out.shape == (7, 11, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out[:, :, 0], rgb[:, :, 2])
    np.testing.assert_array_equal(out[:, :, 1], rgb[:, :, 1])
    np.testing.assert_array_equal(out[:, :, 2], rgb[:, :, 0])


def test_decode_bgr_on_bytes_equals_load_bgr(tmp_path: Path) -> None:
    path = _save(tmp_path, Image.fromarray(_random_rgb()), "a.png")
    np.testing.assert_array_equal(decode_bgr(path.read_bytes()), load_bgr(path))


def test_greyscale_is_repeated_over_three_channels(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    out = load_bgr(_save(tmp_path, Image.fromarray(grey, "L"), "g.png"))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32))


def test_one_bit_is_0_or_255(tmp_path: Path) -> None:
    bits = RNG.integers(0, 2, (4, 9)).astype(bool)
    out = load_bgr(_save(tmp_path, Image.fromarray(bits), "b.png"))
    np.testing.assert_array_equal(out, np.repeat(bits[:, :, None] * 255.0, 3, axis=2))


def test_palette_gives_the_palette_colours(tmp_path: Path) -> None:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    out = load_bgr(_save(tmp_path, image, "p.png", transparency=3))
    np.testing.assert_array_equal(out, palette[index][:, :, ::-1].astype(np.float32))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path: Path, mode: str) -> None:
    rgba = _random_rgb(6, 8)
    alpha = RNG.integers(0, 256, (6, 8, 1), dtype=np.uint8)
    alpha[0, 0] = 0
    if mode == "LA":
        rgba = np.repeat(rgba[:, :, :1], 3, axis=2)
        image = Image.fromarray(np.concatenate([rgba[:, :, :1], alpha], axis=2), "LA")
    else:
        image = Image.fromarray(np.concatenate([rgba, alpha], axis=2), "RGBA")
    out = load_bgr(_save(tmp_path, image, "t.png"))
    np.testing.assert_array_equal(out, rgba[:, :, ::-1].astype(np.float32))


def test_cmyk_matches_pillows_own_conversion(tmp_path: Path) -> None:
    cmyk = Image.fromarray(RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8), "CMYK")
    expected = np.asarray(cmyk.convert("RGB"))[:, :, ::-1].astype(np.float32)
    np.testing.assert_array_equal(load_bgr(_save(tmp_path, cmyk, "c.tif")), expected)


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_sixteen_bit_grey_is_divided_by_257(tmp_path: Path, suffix: str) -> None:
    grey = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    grey[0, :2] = (0, 65535)
    out = load_bgr(_save(tmp_path, Image.fromarray(grey), f"s.{suffix}"))
    expected = np.repeat((grey.astype(np.float64) / 257.0)[:, :, None], 3, axis=2)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out[0, 0, 0] == 0.0 and out[0, 1, 0] == 255.0


# EXIF Orientation 6: the stored picture is shown rotated 90 degrees clockwise; 8: counter-clockwise.
@pytest.mark.parametrize(("orientation", "quarter_turns"), [(6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, quarter_turns: int) -> None:
    colours = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], dtype=np.uint8)
    stored = np.kron(colours, np.ones((16, 24, 1), dtype=np.uint8))  # 32 x 48, one colour per quadrant
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_bgr(_save(tmp_path, Image.fromarray(stored), "r.jpg", exif=exif, quality=95))
    assert out.shape == (48, 32, 3)
    shown = np.rot90(stored, quarter_turns)[:, :, ::-1].astype(np.float32)
    for y, x in [(4, 4), (4, 27), (43, 4), (43, 27)]:  # well inside each quadrant, away from JPEG edges
        np.testing.assert_allclose(out[y, x], shown[y, x], atol=8)


def _expect_error(path: Path, reason: str, **kwargs: int) -> ImageError:
    with pytest.raises(ImageError) as caught:
        load_bgr(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message and reason in message and "\n" not in message, message
    assert isinstance(caught.value, ValueError)
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.jpg", "not found")


def test_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path, "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    _expect_error(path, "not an image")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    whole = _save(tmp_path, Image.fromarray(_random_rgb(64, 64)), f"whole.{suffix}")
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _expect_error(cut, "truncated")


def test_smaller_than_min_side(tmp_path: Path) -> None:
    path = _save(tmp_path, Image.fromarray(_random_rgb(1, 1)), "dot.png")
    assert load_bgr(path).shape == (1, 1, 3)
    _expect_error(path, "min_side=2", min_side=2)


def test_size_is_refused_from_the_header_before_decoding(tmp_path: Path) -> None:
    # The data is cut in half: had it been decoded, the error would say it is truncated instead.
    whole = _save(tmp_path, Image.fromarray(_random_rgb(200, 300)), "whole.png")
    path = tmp_path / "wide.png"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _expect_error(path, "max_pixels=59999", max_pixels=59_999)
    _expect_error(path, "truncated", max_pixels=60_000)


def test_pillow_bomb_warning_and_error_do_not_escape(tmp_path: Path) -> None:
    warned = tmp_path / "warned.png"  # 100M pixels: above Pillow's warning limit, below its error limit
    warned.write_bytes(_png_header_only(10_000, 10_000))
    bomb = tmp_path / "bomb.png"  # 400M pixels: Pillow raises DecompressionBombError at open
    bomb.write_bytes(_png_header_only(20_000, 20_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _expect_error(warned, "max_pixels", max_pixels=50_000_000)
        _expect_error(bomb, "400000000 pixels")


def test_decode_bgr_names_its_source_in_errors() -> None:
    with pytest.raises(ImageError, match=r"^upload\.jpg: file is empty"):
        decode_bgr(b"", "upload.jpg")
    buffer = io.BytesIO()
    Image.fromarray(_random_rgb()).save(buffer, "PNG")
    with pytest.raises(ImageError, match=r"^<bytes>: .*min_side"):
        decode_bgr(buffer.getvalue(), min_side=100)
