"""Box arithmetic on hand-worked boxes: VOC's inclusive pixels (width = x2 - x1 + 1) throughout."""

from __future__ import annotations

import numpy as np
import pytest

from sppnet.reproduce.detection.boxes import apply_deltas, bbox_targets, box_iou, clip_boxes, nms, valid_boxes

# A 10x10 box: pixels 0..9 on both axes, area 100.
TEN = (0.0, 0.0, 9.0, 9.0)


def test_iou_counts_the_right_and_bottom_pixels() -> None:
    others = np.array(
        [
            TEN,  # itself: 1
            (5, 5, 14, 14),  # overlap 5x5 = 25 of union 100 + 100 - 25 = 175: 1/7
            (10, 0, 19, 9),  # touches the right edge, no shared pixel: 0
            (9, 9, 18, 18),  # one shared pixel: 1 / (100 + 100 - 1) = 1/199
            (0, 0, 9, 19),  # 10x20 containing TEN: 100 / 200 = 0.5
        ]
    )
    iou = box_iou(np.array([TEN]), others)
    assert iou.shape == (1, 5)
    np.testing.assert_allclose(iou[0], [1.0, 1 / 7, 0.0, 1 / 199, 0.5], rtol=0, atol=1e-15)


def test_iou_is_n_by_m_and_symmetric() -> None:
    a = np.array([TEN, (3, 3, 3, 3)])  # the second is a single pixel, area 1
    b = np.array([(3, 3, 3, 3), (100, 100, 110, 110), (0, 0, 4, 4)])
    iou = box_iou(a, b)
    # Row 0: pixel inside TEN: 1/100; far box: 0; 5x5 corner: 25/100.
    # Row 1: the pixel itself: 1; far box: 0; pixel inside the 5x5 box: 1/25.
    np.testing.assert_allclose(iou, [[0.01, 0.0, 0.25], [1.0, 0.0, 0.04]], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(box_iou(b, a), iou.T)
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 2)


def test_iou_of_degenerate_boxes_is_zero_not_nan() -> None:
    backwards = np.array([(9.0, 9.0, 0.0, 0.0)])  # x2 < x1 - 1: no pixels
    assert box_iou(backwards, np.array([TEN]))[0, 0] == 0.0


def test_nms_keeps_the_best_and_drops_overlaps_above_the_threshold() -> None:
    boxes = np.array(
        [
            (1, 0, 10, 9),  # 0: IoU with box 1 = 9x10 / (200 - 90) = 90/110 > 0.3: suppressed by box 1
            TEN,  # 1: the best
            (20, 20, 29, 29),  # 2: disjoint from everything: kept
            (5, 0, 14, 9),  # 3: IoU with box 1 = 50/150 = 1/3; with box 2: 0
        ]
    )
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    # 1/3 > 0.3: box 3 goes at the default threshold.
    np.testing.assert_array_equal(nms(boxes, scores), [1, 2])
    # R-CNN keeps IoU <= threshold: at exactly 1/3 box 3 survives (it overlaps box 0 by 6x10 / 140 but 0 is gone).
    np.testing.assert_array_equal(nms(boxes, scores, threshold=1 / 3), [1, 2, 3])
    assert nms(boxes, scores).dtype == np.int64


def test_nms_breaks_score_ties_by_input_order() -> None:
    boxes = np.array([(50, 50, 59, 59), TEN, TEN, (50, 50, 59, 59)])
    scores = np.array([0.5, 0.9, 0.9, 0.5])
    # Equal scores: the earlier of each identical pair wins, and kept indices come best first.
    np.testing.assert_array_equal(nms(boxes, scores), [1, 0])
    assert nms(np.zeros((0, 4)), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="one score per box"):
        nms(boxes, scores[:2])


def test_clip_boxes_to_the_image() -> None:
    clipped = clip_boxes(np.array([(-5.0, -2.0, 120.0, 50.0), (3.0, 4.0, 5.0, 6.0)]), height=40, width=100)
    # x in [0, 99], y in [0, 39]; the inside box is untouched.
    np.testing.assert_array_equal(clipped, [(0, 0, 99, 39), (3, 4, 5, 6)])


def test_valid_boxes() -> None:
    boxes = np.array(
        [
            (0, 0, 0, 0),  # one pixel: valid
            (5, 0, 4, 9),  # x2 < x1
            (0, 5, 9, 4),  # y2 < y1
            (0, 0, np.nan, 3),  # not finite
            (0, 0, 2, 2),  # 3x3
        ]
    )
    np.testing.assert_array_equal(valid_boxes(boxes), [True, False, False, False, True])
    np.testing.assert_array_equal(valid_boxes(boxes, min_size=3), [False, False, False, False, True])
    np.testing.assert_array_equal(valid_boxes(boxes, min_size=4), [False] * 5)


def test_bbox_targets_by_hand() -> None:
    # P: width 10, height 20, centre (0 + 10/2, 0 + 20/2) = (5, 10).
    # G: width 20, height 20, centre (5 + 20/2, 10) = (15, 10).
    # dx = (15 - 5)/10 = 1, dy = 0, dw = log(20/10), dh = log(20/20) = 0.
    proposals = np.array([(0.0, 0.0, 9.0, 19.0)])
    gt = np.array([(5.0, 0.0, 24.0, 19.0)])
    np.testing.assert_allclose(bbox_targets(proposals, gt), [[1.0, 0.0, np.log(2.0), 0.0]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(apply_deltas(proposals, [[1.0, 0.0, np.log(2.0), 0.0]]), gt, rtol=0, atol=1e-12)


def test_zero_deltas_are_the_identity_and_targets_round_trip() -> None:
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 400, size=(50, 2))
    proposals = np.concatenate([corner, corner + rng.uniform(0, 200, size=(50, 2))], axis=1)
    corner = rng.uniform(0, 400, size=(50, 2))
    gt = np.concatenate([corner, corner + rng.uniform(0, 200, size=(50, 2))], axis=1)
    np.testing.assert_allclose(apply_deltas(proposals, np.zeros((50, 4))), proposals, rtol=0, atol=1e-12)
    np.testing.assert_allclose(apply_deltas(proposals, bbox_targets(proposals, gt)), gt, rtol=0, atol=1e-9)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \(K, 4\)"):
        box_iou(np.zeros((2, 3)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="one ground truth box per proposal"):
        bbox_targets(np.array([TEN, TEN]), np.array([TEN]))
    with pytest.raises(ValueError, match="x2 - x1 \\+ 1 > 0"):
        bbox_targets(np.array([(5.0, 0.0, 3.0, 9.0)]), np.array([TEN]))
