"""Detection window features: the release's window mapping and both scale rules on hand-worked boxes, and
pooled/fc/R-CNN features against the model run by hand on zf5_cpu at small scales.

Release mapping cases are worked in its 1-based numbers (S = 16, offset 21, shrink 6.5): X = x + 1,
first = floor((X - 14.5)/16 + 0.5) + 1, last = ceil((X - 27.5)/16 - 0.5) + 1; 0-based half-open [first - 1, last).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sppnet.core.models import build_model
from sppnet.core.networks import feature_stride
from sppnet.core.preprocess import Preprocess, resize_short_side, resize_to, subtract_mean, to_chw_batch
from sppnet.reproduce.detection.features import (
    PAPER_SCALES,
    RELEASE_SCALES,
    Conv5Map,
    FeatureConfig,
    choose_scales,
    clip_boxes,
    conv5_pyramid,
    fc_features,
    map_windows,
    pool_features,
    rcnn_features,
    rcnn_warp,
    release_boxes_to_cells,
    scale_boxes,
    window_features,
)
from sppnet.reproduce.windows import image_boxes_to_cells

S = 16
SCALES = (96, 128)
IMAGE_HW = (90, 120)

RELEASE_CASES = [
    # Whole 224 x 224 image, 13 x 13 map. Left X = 1: floor(-13.5/16 + 0.5) = floor(-0.34) = -1, first 0,
    # clamped to 1 -> start 0. Right X = 224: ceil(196.5/16 - 0.5) = ceil(11.78) = 12, last 13 -> [0, 13).
    ((0, 0, 223, 223), 13, 13, (0, 0, 13, 13)),
    # x1 = 15: X = 16, floor(1.5/16 + 0.5) = floor(0.59) = 0 -> start 0. y1 = 16: X = 17, floor(0.66) = 0 -> 0.
    # x2 = y2 = 100: X = 101, ceil(73.5/16 - 0.5) = ceil(4.09) = 5, last 6 -> end 6.
    ((15, 16, 100, 100), 13, 13, (0, 0, 6, 6)),
    # Where the ends step. x1 = 21: X = 22, floor(7.5/16 + 0.5) = floor(0.97) = 0 -> start 0; y1 = 22:
    # X = 23, floor(1.03) = 1 -> start 1. x2 = 34: X = 35, ceil(7.5/16 - 0.5) = ceil(-0.03) = 0, last 1 -> end 1;
    # y2 = 35: X = 36, ceil(0.03) = 1, last 2 -> end 2.
    ((21, 22, 34, 35), 13, 13, (0, 1, 1, 2)),
    # One pixel at 100: first floor(86.5/16 + 0.5) + 1 = floor(5.91) + 1 = 6, last 6 -> [5, 6).
    ((100, 100, 100, 100), 13, 13, (5, 5, 6, 6)),
    # One pixel at 16 (X = 17): first 1, last ceil(-10.5/16 - 0.5) + 1 = ceil(-1.16) + 1 = 0: crossed ->
    # trunc((1 + 0)/2) = 0 -> clamped to 1 -> [0, 1).
    ((16, 16, 16, 16), 13, 13, (0, 0, 1, 1)),
    # One pixel at 0 (X = 1): first -1 + 1 = 0, last ceil(-2.16) + 1 = -1: crossed -> trunc(-1/2) = 0 -> 1.
    ((0, 0, 0, 0), 13, 13, (0, 0, 1, 1)),
    # Crossed interior windows. x 40..50: first floor(26.5/16 + 0.5) + 1 = 3, last ceil(23.5/16 - 0.5) + 1 = 2
    # -> trunc(5/2) = 2 -> [1, 2). y 60..62: first floor(46.5/16 + 0.5) + 1 = 4, last ceil(35.5/16 - 0.5) + 1
    # = 3 -> trunc(7/2) = 3 -> [2, 3).
    ((40, 60, 50, 62), 13, 13, (1, 2, 2, 3)),
    # Whole 300 x 200 (W x H) image, ZF-5's 11 x 17 map. X = 300: ceil(272.5/16 - 0.5) + 1 = 17 + 1 = 18 ->
    # clamped to 17. Y = 200: ceil(172.5/16 - 0.5) + 1 = 11 + 1 = 12 -> clamped to 11.
    ((0, 0, 299, 199), 11, 17, (0, 0, 17, 11)),
    # Past the bottom-right: X = 190: floor(175.5/16 + 0.5) + 1 = 12 -> start 11; X = 260:
    # ceil(232.5/16 - 0.5) + 1 = 16 -> clamped to 13.
    ((189, 189, 259, 259), 13, 13, (11, 11, 13, 13)),
    # Wholly right of a 13-wide map: first floor(386.5/16 + 0.5) + 1 = 25, last 27, both clamped to 13 -> [12, 13).
    ((400, 0, 450, 223), 13, 13, (12, 0, 13, 13)),
    # Fractional. x1 X = 16.5: floor(0.625) = 0 -> 0; x2 X = 48.2: ceil(20.7/16 - 0.5) + 1 = ceil(0.79) + 1 = 2.
    # y1 Y = 2.25: floor(-0.27) + 1 = 0 -> clamped 1 -> 0; y2 Y = 30: ceil(2.5/16 - 0.5) + 1 = 0 + 1 = 1.
    ((15.5, 1.25, 47.2, 29.0), 13, 13, (0, 0, 2, 1)),
]


@pytest.mark.parametrize(("box", "map_h", "map_w", "cells"), RELEASE_CASES)
def test_release_mapping_hand_worked(box, map_h, map_w, cells):
    got = release_boxes_to_cells(np.array([box], dtype=np.float64), S, map_h, map_w)
    assert got.dtype == np.int64
    assert tuple(got[0].tolist()) == cells
    assert tuple(map_windows(np.array([box]), S, map_h, map_w, "release")[0].tolist()) == cells


def _mex_axis(low: float, high: float, size: int) -> tuple[int, int]:
    """spm_pool_caffe_mex.cpp's normalisation, line by line, on 1-based pixels; returns 0-based [start, end)."""
    first = int(math.floor((low - 21 + 6.5) / 16 + 0.5) + 1)
    last = int(math.ceil((high - 21 - 6.5) / 16 - 0.5) + 1)
    if first > last:
        first = int((first + last) / 2)  # C integer division truncates towards zero
        last = first
    return min(size, max(1, first)) - 1, min(size, max(1, last))


def test_release_mapping_matches_the_mex_on_random_boxes():
    rng = np.random.default_rng(0)
    corners = rng.uniform(-40, 300, size=(500, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    boxes[:100, 2:] = boxes[:100, :2] + rng.uniform(0, 20, size=(100, 2))  # many crossed windows
    got = release_boxes_to_cells(boxes, S, 11, 17)
    for box, cells in zip(boxes, got, strict=True):
        x0, x1 = _mex_axis(box[0] + 1, box[2] + 1, 17)
        y0, y1 = _mex_axis(box[1] + 1, box[3] + 1, 11)
        assert cells.tolist() == [x0, y0, x1, y1]


def test_paper_mapping_delegates_to_windows():
    rng = np.random.default_rng(1)
    corners = rng.uniform(-10, 250, size=(200, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    assert np.array_equal(map_windows(boxes, S, 13, 15), image_boxes_to_cells(boxes, S, 13, 15))
    assert np.array_equal(map_windows(boxes, S, 13, 15, "paper"), image_boxes_to_cells(boxes, S, 13, 15))


@pytest.mark.parametrize("rule", ["paper", "release"])
def test_every_mapped_window_is_inside_and_non_empty(rule):
    rng = np.random.default_rng(2)
    corners = rng.uniform(-50, 400, size=(300, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    cells = map_windows(boxes, S, 7, 9, rule)
    assert (cells[:, :2] >= 0).all() and (cells[:, 2] <= 9).all() and (cells[:, 3] <= 7).all()
    assert (cells[:, 2] > cells[:, 0]).all() and (cells[:, 3] > cells[:, 1]).all()


def test_mapping_errors():
    with pytest.raises(ValueError, match="unknown rule"):
        map_windows(np.zeros((1, 4)), S, 13, 13, "caffe")
    with pytest.raises(ValueError, match="x2 < x1"):
        release_boxes_to_cells(np.array([[5.0, 0, 4, 3]]), S, 13, 13)
    with pytest.raises(ValueError, match="shape"):
        release_boxes_to_cells(np.zeros((2, 3)), S, 13, 13)


def test_scale_boxes_keeps_the_inclusive_convention():
    # A whole 400 x 300 image at factor 1.6 is the whole 640 x 480 image: (0, 0, 639, 479).
    assert scale_boxes(np.array([[0, 0, 399, 299]]), 1.6).tolist() == [[0, 0, 639, 479]]
    # Per axis (x, y): [10, 20) x 2 = [20, 40), rows [5, 10) x 0.5 = [2.5, 5) -> (20, 2.5, 39, 4).
    assert scale_boxes(np.array([[10, 5, 19, 9]]), (2.0, 0.5)).tolist() == [[20, 2.5, 39, 4]]
    # One pixel at factor 0.5 spans [5, 5.5): x2' = 4.5 < x1', kept at x1'.
    assert scale_boxes(np.array([[10, 10, 10, 10]]), 0.5).tolist() == [[5, 5, 5, 5]]


# A 400 x 300 (W x H) image: short side 300. Resized sizes (H, W): 480 -> 480 x 640, 576 -> 576 x 768,
# 688 -> 688 x 917 (400 * 688/300 = 917.33), 864 -> 864 x 1152, 1200 -> 1200 x 1600.
SCALE_CASES = [
    # 100 x 100: scaled sides 160, 192, 229.3 (x 917/400 = 229.25, y 688/300 = 229.33), 288, 400.
    # Paper: |area - 224^2| = 24000, 13312, 2399, 32768, ... -> 688 (index 2).
    # Release: round(208 * 300 / 100) = 624 -> |576 - 624| = 48 < |688 - 624| = 64 -> 576 (index 1).
    ((0, 0, 99, 99), 2, 1),
    # The whole image: paper areas 640 * 480 = 307200 and up, all above 224^2 -> 480 (index 0).
    # Release: round(208 * 300 / sqrt(400 * 300)) = round(180.13) = 180 -> 480 (index 0).
    ((0, 0, 399, 299), 0, 0),
    # 20 x 20: at 1200 it is 80 x 80, still the closest -> index 4; release round(208 * 15) = 3120 -> 1200.
    ((50, 50, 69, 69), 4, 4),
    # 150 x 60: paper areas 33177.6 (576), 343.875 * 137.6 = 47317.2 (688), 74649.6 (864) -> 688 (index 2).
    # Release: round(208 * 300 / sqrt(9000)) = round(657.76) = 658 -> 688 (30 away; 576 is 82) -> index 2.
    ((10, 10, 159, 69), 2, 2),
]


@pytest.mark.parametrize(("box", "paper", "release"), SCALE_CASES)
def test_choose_scales_hand_worked(box, paper, release):
    boxes = np.array([box], dtype=np.float64)
    assert choose_scales(boxes, (300, 400), PAPER_SCALES, "paper").tolist() == [paper]
    assert choose_scales(boxes, (300, 400), PAPER_SCALES, "release").tolist() == [release]


def test_choose_scales_vectorised_ties_and_target():
    boxes = np.array([case[0] for case in SCALE_CASES], dtype=np.float64)
    assert choose_scales(boxes, (300, 400), PAPER_SCALES).tolist() == [case[1] for case in SCALE_CASES]
    assert choose_scales(boxes, (300, 400), RELEASE_SCALES, "release").tolist() == [c[2] for c in SCALE_CASES]
    # Release expected 624 for 100 x 100 lies midway between 600 and 648: the first listed wins.
    assert choose_scales(boxes[:1], (300, 400), (600, 648), "release").tolist() == [0]
    assert choose_scales(boxes[:1], (300, 400), (648, 600), "release").tolist() == [0]
    # Target 100: 100 x 100 is closest at 480 (160 px) under both rules.
    assert choose_scales(boxes[:1], (300, 400), PAPER_SCALES, "paper", target=100).tolist() == [0]
    assert choose_scales(np.zeros((0, 4)), (300, 400), PAPER_SCALES).shape == (0,)


def test_feature_config():
    config = FeatureConfig()
    assert config.scales == (480, 576, 688, 864, 1200)
    assert (config.mapping, config.scale_rule, config.target) == ("paper", "paper", None)
    assert FeatureConfig(scales=[874]).scales == (874,)
    with pytest.raises(ValueError, match="unknown rule"):
        FeatureConfig(mapping="exact")
    with pytest.raises(ValueError, match="scales"):
        FeatureConfig(scales=())


def test_clip_boxes():
    boxes = np.array([[-5.0, 3, 200, 50], [0, 0, 119, 89]])
    assert clip_boxes(boxes, IMAGE_HW).tolist() == [[0, 3, 119, 50], [0, 0, 119, 89]]
    with pytest.raises(ValueError, match="wholly outside"):
        clip_boxes(np.array([[120.0, 0, 130, 10]]), IMAGE_HW)
    with pytest.raises(ValueError, match="y2 < y1"):
        clip_boxes(np.array([[0.0, 10, 5, 9]]), IMAGE_HW)
    with pytest.raises(ValueError, match="not finite"):
        clip_boxes(np.array([[0.0, np.nan, 5, 9]]), IMAGE_HW)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("zf5_cpu", num_classes=5).train()  # train mode: the features must switch dropout off


@pytest.fixture(scope="module")
def pre():
    return Preprocess(mean_bgr=(104.0, 117.0, 123.0), short_side=128, crop=112, scale=1 / 64)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).integers(0, 256, size=(*IMAGE_HW, 3)).astype(np.float32)


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    height, width = IMAGE_HW
    x = np.sort(rng.uniform(0, width - 1, size=(count, 2)), axis=1)
    y = np.sort(rng.uniform(0, height - 1, size=(count, 2)), axis=1)
    return np.round(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1))


def _manual_fc(model, pooled, upto):
    c = model.classifier
    with torch.no_grad():
        fc6 = torch.relu(c.fc6(pooled))
        return fc6 if upto == "fc6" else torch.relu(c.fc7(fc6))


def test_conv5_pyramid_is_conv5_of_the_resized_image(model, pre, image):
    pyramid = conv5_pyramid(model, image, pre, SCALES)
    assert model.training
    assert [level.scale for level in pyramid] == list(SCALES)
    model.eval()
    try:
        for level, s in zip(pyramid, SCALES, strict=True):
            resized = resize_short_side(image, s)
            assert level.resized_hw == resized.shape[:2] and level.image_hw == IMAGE_HW
            assert level.factor == (resized.shape[1] / 120, resized.shape[0] / 90)
            with torch.no_grad():
                want = model.features(torch.from_numpy(to_chw_batch([subtract_mean(resized, pre)])))[0]
            torch.testing.assert_close(level.maps, want)
    finally:
        model.train()


@pytest.mark.parametrize("rule", ["paper", "release"])
def test_pool_features_equal_spp_of_the_cropped_map(model, pre, image, rule):
    pyramid = conv5_pyramid(model, image, pre, SCALES)
    rng = np.random.default_rng(4)
    boxes = _random_boxes(rng, 40)
    scale_index = rng.integers(0, len(SCALES), size=40)
    got = pool_features(model, pyramid, boxes, scale_index, rule)
    assert got.shape == (40, 32 * 50)
    for k in range(40):
        level = pyramid[scale_index[k]]
        scaled = scale_boxes(boxes[k : k + 1], level.factor)
        x0, y0, x1, y1 = map_windows(scaled, feature_stride(model.spec), *level.maps.shape[1:], rule)[0]
        want = model.pool(level.maps[None, :, y0:y1, x0:x1])[0]
        torch.testing.assert_close(got[k], want, rtol=0, atol=0)


def test_pool_features_errors(model, pre, image):
    pyramid = conv5_pyramid(model, image, pre, SCALES)
    boxes = _random_boxes(np.random.default_rng(5), 3)
    with pytest.raises(ValueError, match="scale_index"):
        pool_features(model, pyramid, boxes, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="scale_index"):
        pool_features(model, pyramid, boxes, np.array([0, 1]))
    assert pool_features(model, pyramid, np.zeros((0, 4)), np.zeros(0)).shape == (0, 1600)


def test_fc_features_equal_the_classifier_by_hand(model):
    pooled = torch.rand(7, 1600)
    for layer in ("fc6", "fc7"):
        torch.testing.assert_close(fc_features(model, pooled, layer, batch=3), _manual_fc(model, pooled, layer))
    assert model.training
    with pytest.raises(ValueError, match="fc6"):
        fc_features(model, pooled, "fc8")


@pytest.mark.parametrize("config", [FeatureConfig(scales=SCALES), FeatureConfig(SCALES, "release", "release")])
def test_window_features_compose_the_steps(model, pre, image, config):
    boxes = _random_boxes(np.random.default_rng(6), 30)
    feats, timing = window_features(model, image, boxes, pre, config, layers=("pool5", "fc6", "fc7"))
    assert set(timing) == {"prep", "conv", "pool", "fc"} and min(timing.values()) >= 0
    assert model.training
    pyramid = conv5_pyramid(model, image, pre, config.scales)
    index = choose_scales(boxes, IMAGE_HW, config.scales, config.scale_rule)
    pooled = pool_features(model, pyramid, boxes, index, config.mapping)
    assert {k: v.dtype for k, v in feats.items()} == dict.fromkeys(("pool5", "fc6", "fc7"), np.float32)
    np.testing.assert_allclose(feats["pool5"], pooled.numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(feats["fc6"], _manual_fc(model, pooled, "fc6").numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["fc7"], _manual_fc(model, pooled, "fc7").numpy(), rtol=1e-5, atol=1e-6)


def test_window_features_clip_empty_and_errors(model, pre, image):
    config = FeatureConfig(scales=SCALES)
    inside = np.array([[0.0, 10, 119, 89], [30, 0, 60, 40]])
    outside = np.array([[-20.0, 10, 300, 100], [30, -7, 60, 40]])
    a, _ = window_features(model, image, inside, pre, config, layers=("fc7",))
    b, _ = window_features(model, image, outside, pre, config, layers=("fc7",))
    np.testing.assert_array_equal(a["fc7"], b["fc7"])
    empty, timing = window_features(model, image, np.zeros((0, 4)), pre, config)
    assert empty["pool5"].shape == (0, 1600) and empty["fc7"].shape == (0, 512)
    assert timing == dict.fromkeys(("prep", "conv", "pool", "fc"), 0.0)
    with pytest.raises(ValueError, match="x2 < x1"):
        window_features(model, image, np.array([[10.0, 0, 5, 5]]), pre, config)
    with pytest.raises(ValueError, match="unknown feature layer"):
        window_features(model, image, inside, pre, config, layers=("conv5",))
    with pytest.raises(ValueError, match="too small"):
        window_features(model, image, inside, pre, FeatureConfig(scales=(20,)))
    with pytest.raises(ValueError, match="SPP model"):
        window_features(build_model("zf5_cpu", spp=False, num_classes=5), image, inside, pre, config)


def test_rcnn_warp_hand_worked(pre, image):
    size, mean = 112, np.float32([104, 117, 123])
    # (10, 20, 49, 59) is 1-based (11, 21, 50, 60): half 20, centre (31, 41), grown by 112 / (112 - 32) = 1.4:
    # (31 -/+ 28, 41 -/+ 28) = (3, 13, 59, 69), 57 x 57, inside: all of it warped to 112 x 112.
    want = (resize_to(image[12:69, 2:59], size, size) - mean) / 64
    np.testing.assert_allclose(rcnn_warp(image, (10, 20, 49, 59), size, pre), want, rtol=0, atol=1e-6)
    # (0, 0, 29, 29) is 1-based (1, 1, 30, 30): centre 16, half 15 * 1.4 = 21 -> (-5, -5, 37, 37), 43 wide.
    # 6 px are off the image: pad round(6 * 112/43) = round(15.63) = 16; the clipped 37 px become
    # round(37 * 112/43) = round(96.37) = 96 px at [16, 112).
    got = rcnn_warp(image, (0, 0, 29, 29), size, pre)
    np.testing.assert_allclose(got[16:, 16:], (resize_to(image[:37, :37], 96, 96) - mean) / 64, atol=1e-6)
    assert not got[:16].any() and not got[:, :16].any()
    # (100, 70, 119, 89) at the bottom-right of 120 x 90: 1-based (101, 71, 120, 90), half 10 * 1.4 = 14 around
    # (111, 81) -> (97, 67, 125, 95), 29 wide; clipped to (97, 67, 120, 90), 24 px -> round(24 * 112/29) = 93.
    got = rcnn_warp(image, (100, 70, 119, 89), size, pre)
    np.testing.assert_allclose(got[:93, :93], (resize_to(image[66:, 96:], 93, 93) - mean) / 64, atol=1e-6)
    assert not got[93:].any() and not got[:, 93:].any()
    with pytest.raises(ValueError, match="context_pad"):
        rcnn_warp(image, (0, 0, 29, 29), size, pre, context_pad=56)


@pytest.mark.parametrize("spp", [True, False])
def test_rcnn_features_equal_the_model_on_warped_windows(pre, image, spp):
    torch.manual_seed(1)
    net = build_model("zf5_cpu", num_classes=5, spp=spp)
    boxes = _random_boxes(np.random.default_rng(7), 9)
    feats, timing = rcnn_features(net, image, boxes, pre, layers=("pool5", "fc6", "fc7"), batch_size=4)
    assert set(timing) == {"prep", "conv", "pool", "fc"}
    assert net.training
    net.eval()
    crops = torch.from_numpy(to_chw_batch([rcnn_warp(image, box, 112, pre) for box in boxes]))
    with torch.no_grad():
        pooled = net.pool(net.features(crops))
    # Batches of 4 here against one of 9 by hand: the conv kernels may sum in another order.
    np.testing.assert_allclose(feats["pool5"], pooled.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["fc6"], _manual_fc(net, pooled, "fc6").numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["fc7"], _manual_fc(net, pooled, "fc7").numpy(), rtol=1e-4, atol=1e-5)
    empty, _ = rcnn_features(net, image, np.zeros((0, 4)), pre)
    assert empty["pool5"].shape == (0, pooled.shape[1]) and empty["fc7"].shape == (0, 512)


def test_conv5_map_factor():
    level = Conv5Map(688, torch.zeros(1, 1, 1), (300, 400), (688, 917))
    assert level.factor == (917 / 400, 688 / 300)
