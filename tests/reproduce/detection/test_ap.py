"""VOC AP on hand-worked cases: the 11-point rule, difficult boxes, duplicates and the devkit's matching order."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sppnet.reproduce.detection.ap import evaluate_class, evaluate_detections, format_ap_table, voc_ap
from sppnet.reproduce.detection.voc import DetImage

A = (0.0, 0.0, 9.0, 9.0)  # 10x10
B = (20.0, 0.0, 29.0, 9.0)  # 10x10, disjoint from A
C = (40.0, 0.0, 49.0, 9.0)  # 10x10, disjoint from A and B


def _image(boxes: list[tuple[float, ...]], labels: list[int], difficult: list[bool] | None = None) -> DetImage:
    flags = difficult if difficult is not None else [False] * len(boxes)
    return DetImage("img", Path("img.jpg"), 100, 100, np.asarray(boxes).reshape(-1, 4), labels, flags)


def test_voc_ap_eleven_point_and_all_point_by_hand() -> None:
    recall = [0.5, 0.5, 1.0]
    precision = [1.0, 0.5, 2 / 3]
    # 11-point: thresholds 0..0.5 (six) reach max precision 1; 0.6..1 (five) only the last point, 2/3.
    # (6 * 1 + 5 * 2/3) / 11 = 28/33.
    assert voc_ap(recall, precision) == pytest.approx(28 / 33, abs=1e-15)
    # All-point: envelope 1 on (0, 0.5], 2/3 on (0.5, 1]: 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(5 / 6, abs=1e-15)
    assert voc_ap([], []) == 0.0
    assert voc_ap([], [], use_07_metric=False) == 0.0


def test_eleven_point_thresholds_are_exact_tenths() -> None:
    # Recall 3/10 meets the 0.3 threshold: thresholds 0, 0.1, 0.2, 0.3 see precision 1: AP = 4/11.
    assert voc_ap([0.1, 0.2, 3 / 10], [1.0, 1.0, 1.0]) == pytest.approx(4 / 11, abs=1e-15)
    # Recall 7/10 meets 0.7 (thresholds 0..0.7: eight of eleven).
    assert voc_ap([7 / 10], [1.0]) == pytest.approx(8 / 11, abs=1e-15)


def test_true_positive_duplicate_and_second_object() -> None:
    gts = [_image([A, B], [1, 1])]
    detections = [
        (0, 0.8, A),  # second by score: a duplicate on A -> FP
        (0, 0.9, A),  # first: TP on A
        (0, 0.7, B),  # third: TP on B
    ]
    result = evaluate_class(detections, gts, label=1)
    # In score order TP, FP, TP: cumulative TP 1, 1, 2 and FP 0, 1, 1 over npos = 2.
    assert result.npos == 2
    np.testing.assert_allclose(result.recall, [0.5, 0.5, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.precision, [1.0, 0.5, 2 / 3], rtol=0, atol=1e-15)
    assert result.ap == pytest.approx(28 / 33, abs=1e-15)  # the curve worked by hand above
    all_point = evaluate_class(detections, gts, label=1, use_07_metric=False)
    assert all_point.ap == pytest.approx(5 / 6, abs=1e-15)


def test_difficult_boxes_neither_count_nor_penalise() -> None:
    gts = [_image([A, C], [1, 1], difficult=[False, True])]
    detections = [
        (0, 0.9, C),  # matches the difficult box: ignored
        (0, 0.8, C),  # a second match of the difficult box: ignored too, not a duplicate
        (0, 0.7, A),  # TP
    ]
    result = evaluate_class(detections, gts, label=1)
    # npos counts A only. Ignored detections add neither TP nor FP: recall 0, 0, 1. Precision 0/0 for the first two
    # (NaN in the devkit) is reported as 0; then 1/1.
    assert result.npos == 1
    np.testing.assert_array_equal(result.recall, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(result.precision, [0.0, 0.0, 1.0])
    # Every threshold reaches recall 1 at precision 1: AP 1 (it would be 1/2 at recall 1 had C been a positive).
    assert result.ap == 1.0
    assert evaluate_class(detections, gts, label=1, use_07_metric=False).ap == 1.0


def test_iou_threshold_is_inclusive_and_other_labels_are_ignored() -> None:
    gts = [_image([A, B], [1, 2])]
    # (0, 0, 9, 19) contains A: IoU 100 / 200 = 0.5 >= 0.5: TP. B has label 2: invisible to label 1.
    assert evaluate_class([(0, 1.0, (0.0, 0.0, 9.0, 19.0))], gts, label=1).ap == 1.0
    # (5, 5, 14, 14): IoU 25 / 175 = 1/7 < 0.5: FP, and A is never found: AP 0.
    low = evaluate_class([(0, 1.0, (5.0, 5.0, 14.0, 14.0))], gts, label=1)
    assert low.ap == 0.0
    np.testing.assert_array_equal(low.precision, [0.0])
    # A label-1 detection exactly on B (a label-2 box) is a FP.
    assert evaluate_class([(0, 1.0, B)], gts, label=1).ap == 0.0


def test_best_overlap_decides_even_when_already_matched() -> None:
    # Two overlapping ground truths: A = x 0..9 and D = x 5..14.
    d_box = (5.0, 0.0, 14.0, 9.0)
    gts = [_image([A, d_box], [1, 1])]
    # The second detection x 2..11 has IoU 80/120 = 2/3 with A and 70/130 = 7/13 >= 0.5 with D. The devkit assigns
    # it to its best box A, already taken: a FP, although D is free. Recall 1/2, 1/2; precision 1, 1/2.
    detections = [(0, 0.9, A), (0, 0.8, (2.0, 0.0, 11.0, 9.0))]
    result = evaluate_class(detections, gts, label=1)
    np.testing.assert_allclose(result.recall, [0.5, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.precision, [1.0, 0.5], rtol=0, atol=1e-15)
    # 11-point: thresholds 0..0.5 see precision 1, 0.6..1 nothing: 6/11.
    assert result.ap == pytest.approx(6 / 11, abs=1e-15)


def test_equal_scores_keep_input_order() -> None:
    gts = [_image([A], [1])]
    miss, hit = (0, 0.5, C), (0, 0.5, A)
    # Miss first: precision 0/1 then 1/2. Hit first: 1/1 then 1/2.
    np.testing.assert_allclose(evaluate_class([miss, hit], gts, 1).precision, [0.0, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(evaluate_class([hit, miss], gts, 1).precision, [1.0, 0.5], rtol=0, atol=1e-15)


def test_recall_of_three_tenths_across_images() -> None:
    # Ten images with one object each; three correct detections: recall 0.1, 0.2, 0.3 at precision 1.
    gts = [_image([A], [1]) for _ in range(10)]
    detections = [(i, 1.0 - i / 10, A) for i in range(3)] + [(9, 0.01, B)]  # and one late miss in image 9
    result = evaluate_class(detections, gts, label=1)
    assert result.npos == 10
    # Thresholds 0, 0.1, 0.2, 0.3 reach precision 1: 4/11. All-point: 0.3 * 1.
    assert result.ap == pytest.approx(4 / 11, abs=1e-15)
    assert evaluate_class(detections, gts, label=1, use_07_metric=False).ap == pytest.approx(0.3, abs=1e-15)


def test_no_detections_and_no_positives() -> None:
    gts = [_image([A], [1])]
    empty = evaluate_class([], gts, label=1)
    assert empty.ap == 0.0 and empty.npos == 1 and empty.recall.shape == (0,)
    assert math.isnan(evaluate_class([(0, 1.0, A)], gts, label=2).ap)  # no label-2 box anywhere


def test_bad_detections_are_refused() -> None:
    gts = [_image([A], [1])]
    with pytest.raises(ValueError, match=r"image index in 0\.\.0"):
        evaluate_class([(1, 0.5, A)], gts, label=1)
    with pytest.raises(ValueError, match="finite score"):
        evaluate_class([(0, float("nan"), A)], gts, label=1)


def test_evaluate_detections_and_table() -> None:
    gts = [_image([A, B], [1, 1]), _image([C], [2])]
    detections = [
        [(0, 0.9, A), (0, 0.8, A), (0, 0.7, B)],  # label 1: the hand-worked curve, 28/33 and 5/6
        [(1, 0.9, C)],  # label 2: a single perfect detection, AP 1
        [(0, 0.9, A)],  # label 3: no ground truth anywhere: AP NaN, left out of the mAP
    ]
    results = evaluate_detections(detections, gts, ["cat", "dog", "emu"])
    assert results["npos"] == {"cat": 2, "dog": 1, "emu": 0}
    assert results["ap_11point"]["cat"] == pytest.approx(28 / 33, abs=1e-15)
    assert results["ap_all_point"]["cat"] == pytest.approx(5 / 6, abs=1e-15)
    assert results["ap_11point"]["dog"] == results["ap_all_point"]["dog"] == 1.0
    assert math.isnan(results["ap_11point"]["emu"])
    # mAP over cat and dog: (28/33 + 1) / 2 = 61/66 and (5/6 + 1) / 2 = 11/12.
    assert results["mAP_11point"] == pytest.approx(61 / 66, abs=1e-15)
    assert results["mAP_all_point"] == pytest.approx(11 / 12, abs=1e-15)
    table = format_ap_table(results).splitlines()
    assert len(table) == 5
    # 28/33 = 84.8%, 5/6 = 83.3%, 61/66 = 92.4%, 11/12 = 91.7%.
    assert table[1].split() == ["cat", "2", "84.8", "83.3"]
    assert table[3].split() == ["emu", "0", "n/a", "n/a"]
    assert table[4].split() == ["mAP", "3", "92.4", "91.7"]
    with pytest.raises(ValueError, match="one list per class"):
        evaluate_detections(detections[:2], gts, ["cat", "dog", "emu"])
