"""Caffe preprocessing checked against independent numpy definitions (PAPER.md sections 4-5)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sppnet.core.preprocess import (
    Preprocess,
    center_crop,
    center_view,
    colour_alter,
    corner_crops,
    full_view,
    hflip,
    random_crop,
    resize_short_side,
    resize_to,
    subtract_mean,
    ten_crop_views,
    ten_views,
    to_chw_batch,
    train_view,
)

RNG = np.random.default_rng(2014)
SMALL = Preprocess(short_side=32, crop=24)


def _image(height: int, width: int) -> np.ndarray:
    return (RNG.random((height, width, 3)) * 255).astype(np.float32)


def bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV INTER_LINEAR for float input: source x = (x + 0.5) * in / out - 0.5, clamped at both edges."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(x).astype(int)
        frac = x - lo
        frac[lo < 0], lo[lo < 0] = 0.0, 0
        frac[lo >= n_in - 1], lo[lo >= n_in - 1] = 0.0, n_in - 1
        return lo, np.minimum(lo + 1, n_in - 1), frac

    y0, y1, fy = axis(img.shape[0], height)
    x0, x1, fx = axis(img.shape[1], width)
    src = img.astype(np.float64)
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def caffe_oversample(img: np.ndarray, size: int) -> np.ndarray:
    """caffe/python/caffe/io.py `oversample` for one image and a square crop, transcribed."""
    im_shape = np.array(img.shape)
    crop_dims = np.array([size, size])
    im_center = im_shape[:2] / 2.0
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in (0, im_shape[0] - size):
        for j in (0, im_shape[1] - size):
            crops_ix[curr] = (i, j, i + size, j + size)
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.stack([img[c[0] : c[2], c[1] : c[3], :] for c in crops_ix])
    crops[5:] = crops[5:, :, ::-1, :]
    return crops


# Krizhevsky's ImageNet RGB PCA (fb.resnet.torch values for 0..1 pixels); columns are eigenvectors.
EIGVAL = [0.2175, 0.0188, 0.0045]
EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


def lighting(img: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = img.astype(np.float64).copy()
    for rgb in range(3):
        shift = sum(EIGVEC[rgb][j] * alpha[j] * EIGVAL[j] * 255.0 for j in range(3))
        out[:, :, 2 - rgb] += shift  # channel 2 - rgb of a BGR image
    return out


@pytest.mark.parametrize(("src", "dst"), [((17, 23), (40, 31)), ((64, 48), (21, 30)), ((40, 60), (20, 30)), (1, 5)])
def test_resize_to_is_opencv_bilinear(src: tuple[int, int] | int, dst: tuple[int, int] | int) -> None:
    src = (src, src) if isinstance(src, int) else src
    dst = (dst, dst) if isinstance(dst, int) else dst
    img = _image(*src)
    out = resize_to(img, *dst)
    assert out.shape == (*dst, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, bilinear(img, *dst), atol=1e-3)


@pytest.mark.parametrize(
    ("height", "width", "s"), [(375, 500, 256), (500, 375, 256), (333, 500, 256), (100, 100, 224), (2, 3, 1)]
)
def test_resize_short_side_keeps_aspect_with_the_short_side_exact(height: int, width: int, s: int) -> None:
    img = _image(height, width)
    out = resize_short_side(img, s)
    long = int(Fraction(max(height, width) * s, min(height, width)) + Fraction(1, 2))  # rounded, half up
    expected = (s, long) if height <= width else (long, s)
    assert out.shape == (*expected, 3)
    np.testing.assert_allclose(out, bilinear(img, *expected), atol=1e-3)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (33, 40), (40, 33), (24, 24)])
def test_center_and_corner_crops_are_caffe_offsets(height: int, width: int) -> None:
    img, s = _image(height, width), 24
    top, left = (height - s) // 2, (width - s) // 2
    np.testing.assert_array_equal(center_crop(img, s), img[top : top + s, left : left + s])
    corners = [img[:s, :s], img[:s, width - s :], img[height - s :, :s], img[height - s :, width - s :]]
    np.testing.assert_array_equal(corner_crops(img, s), np.stack(corners))


@pytest.mark.parametrize(("height", "width", "s"), [(32, 32, 24), (33, 40, 24), (41, 35, 25), (25, 25, 25)])
def test_ten_views_follow_caffe_oversample(height: int, width: int, s: int) -> None:
    img = _image(height, width)
    views = ten_views(img, s)
    assert views.shape == (10, s, s, 3) and views.dtype == np.float32
    np.testing.assert_array_equal(views, caffe_oversample(img, s))
    np.testing.assert_array_equal(views[4], center_crop(img, s))


@pytest.mark.parametrize("crop", [center_crop, corner_crops, ten_views])
def test_crop_larger_than_image_names_sizes_and_fix(crop) -> None:
    with pytest.raises(ValueError, match=r"24x24 crop does not fit a 20x30 .*resize it first"):
        crop(_image(20, 30), 24)


def test_random_crop_covers_every_offset_uniformly_top_then_left() -> None:
    img = _image(27, 30)
    seen = set()
    for seed in range(200):
        out = random_crop(img, 24, np.random.default_rng(seed))
        expect = np.random.default_rng(seed)
        top, left = int(expect.integers(0, 4)), int(expect.integers(0, 7))
        np.testing.assert_array_equal(out, img[top : top + 24, left : left + 24])
        seen.add((top, left))
    assert len(seen) == 4 * 7


def test_hflip_mirrors_columns() -> None:
    img = _image(5, 7)
    out = hflip(img)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, img[:, ::-1])


def test_colour_alter_adds_krizhevsky_pca_noise_in_bgr_order() -> None:
    img = _image(6, 9)
    out = colour_alter(img, np.random.default_rng(7))
    alpha = np.random.default_rng(7).normal(0.0, 0.1, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, lighting(img, alpha), atol=1e-3)
    shift = out - img  # one colour added everywhere
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0, 0], shift.shape), atol=1e-3)
    np.testing.assert_allclose(colour_alter(img, np.random.default_rng(7), std=0.0), img)


def test_subtract_constant_mean_defaults_to_128() -> None:
    img = _image(4, 5)
    np.testing.assert_allclose(subtract_mean(img, Preprocess()), img - 128.0)
    custom = Preprocess(mean_bgr=(104.0, 117.0, 123.0))
    np.testing.assert_allclose(subtract_mean(img, custom), img - np.array([104.0, 117.0, 123.0]))


def test_caffe_scale_multiplies_the_mean_subtracted_values() -> None:
    img = np.random.default_rng(4).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    got = subtract_mean(img, Preprocess(mean_bgr=(10.0, 20.0, 30.0), scale=0.25))
    np.testing.assert_allclose(got, (img - np.array([10.0, 20.0, 30.0])) * 0.25, rtol=1e-6)


@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_subtract_mean_image_stretched_to_the_array(tmp_path: Path, layout: str) -> None:
    mean_hwc = _image(16, 20)
    path = tmp_path / f"mean_{layout}.npy"
    np.save(path, mean_hwc.transpose(2, 0, 1) if layout == "chw" else mean_hwc)
    pre = Preprocess(mean_image=str(path))
    same = _image(16, 20)
    np.testing.assert_allclose(subtract_mean(same, pre), same - mean_hwc, atol=1e-4)
    other = _image(11, 13)
    np.testing.assert_allclose(subtract_mean(other, pre), other - bilinear(mean_hwc, 11, 13), atol=1e-3)


@pytest.mark.parametrize("content", [None, b"not an array"])
def test_a_missing_or_unreadable_mean_image_is_one_line_naming_it(tmp_path: Path, content: bytes | None) -> None:
    from sppnet.core.errors import ArtifactError

    path = tmp_path / "moved.npy"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ArtifactError, match=r"mean image .*moved\.npy cannot be read") as info:
        subtract_mean(_image(4, 4), Preprocess(mean_image=str(path)))
    assert "\n" not in str(info.value)


def test_to_chw_batch() -> None:
    views = [_image(5, 7) for _ in range(3)]
    batch = to_chw_batch(views)
    assert batch.shape == (3, 3, 5, 7) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for n, view in enumerate(views):
        for c in range(3):
            np.testing.assert_array_equal(batch[n, c], view[:, :, c])
    with pytest.raises(ValueError, match="different sizes"):
        to_chw_batch([_image(5, 7), _image(7, 5)])
    with pytest.raises(ValueError, match="no views"):
        to_chw_batch([])


def test_preprocess_json_round_trip_and_validation(tmp_path: Path) -> None:
    pre = Preprocess(mean_bgr=(1, 2, 3), mean_image=tmp_path / "m.npy", short_side=300, crop=180, train_crop="random")
    record = json.loads(json.dumps(pre.to_json()))
    assert record == {
        "mean_bgr": [1.0, 2.0, 3.0],
        "mean_image": str(tmp_path / "m.npy"),
        "short_side": 300,
        "crop": 180,
        "train_crop": "random",
        "scale": 1.0,
    }
    assert Preprocess.from_json(record) == pre
    assert Preprocess.from_json({}) == Preprocess()
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocess.from_json({"scale_factor": 1.0})
    with pytest.raises(ValueError, match="crop <= short_side"):
        Preprocess(short_side=200)
    with pytest.raises(ValueError, match="train_crop"):
        Preprocess(train_crop="ten")


@pytest.mark.parametrize("size", [None, 18])
def test_train_view_is_resize_corner_or_centre_crop_flip_colour_resize_mean(size: int | None) -> None:
    img = _image(40, 50)
    resized = bilinear(img, 32, 40)
    for seed in range(12):
        out = train_view(img, SMALL, np.random.default_rng(seed), size=size)
        expect = np.random.default_rng(seed)
        top, left = [(0, 0), (0, 16), (8, 0), (8, 16), (4, 8)][int(expect.integers(0, 5))]
        view = resized[top : top + 24, left : left + 24]
        if expect.random() < 0.5:
            view = view[:, ::-1]
        view = lighting(view, expect.normal(0.0, 0.1, 3))
        if size is not None:
            view = bilinear(view, size, size)
        assert out.shape == view.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, view - 128.0, atol=2e-3)


def test_train_view_shapes_and_determinism() -> None:
    img, pre = _image(300, 400), Preprocess()
    first = train_view(img, pre, np.random.default_rng(3))
    assert first.shape == (224, 224, 3)
    np.testing.assert_array_equal(first, train_view(img, pre, np.random.default_rng(3)))
    assert not np.array_equal(first, train_view(img, pre, np.random.default_rng(4)))
    assert train_view(img, pre, np.random.default_rng(3), size=180).shape == (180, 180, 3)
    random_offsets = Preprocess(train_crop="random")
    assert train_view(img, random_offsets, np.random.default_rng(3)).shape == (224, 224, 3)


def test_test_views() -> None:
    img = _image(45, 36)
    resized = bilinear(img, 40, 32)
    np.testing.assert_allclose(center_view(img, SMALL), resized[8:32, 4:28] - 128.0, atol=1e-3)
    np.testing.assert_allclose(ten_crop_views(img, SMALL), caffe_oversample(resized, 24) - 128.0, atol=1e-3)
    assert full_view(img, SMALL).shape == (40, 32, 3)
    np.testing.assert_allclose(full_view(img, SMALL, 20), bilinear(img, 25, 20) - 128.0, atol=1e-3)


def test_bad_input_names_the_expected_layout() -> None:
    with pytest.raises(ValueError, match=r"expects an \(H, W, 3\) BGR array; got \(3, 8, 8\)"):
        center_crop(np.zeros((3, 8, 8), np.float32), 4)
