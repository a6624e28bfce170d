"""The paper's window-to-conv5 rule (PAPER.md section 7 step 4) on hand-worked boxes, and its vectorised form.

Every case is worked in the paper's 1-based numbers: a 0-based pixel x is the 1-based pixel x + 1; the first
1-based cell is floor(x/S) + 1 and the last ceil(x/S) - 1; 0-based half-open cells are [first - 1, last).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sppnet.core.networks import feature_sizes, feature_stride, get_network
from sppnet.reproduce.windows import image_box_to_cells, image_boxes_to_cells

S = 16

CASES = [
    # Whole 224 x 224 image, ZF-5's 13 x 13 conv5. 1-based pixels 1..224:
    # first floor(1/16) + 1 = 1, last ceil(224/16) - 1 = 13 -> 0-based [0, 13).
    ((0, 0, 223, 223), 13, 13, (0, 0, 13, 13)),
    # Interior box. x: 1-based 33..96: first floor(33/16) + 1 = 3, last ceil(96/16) - 1 = 5 -> [2, 5)
    # (1-based cells 3, 4, 5, centres 48, 64, 80, all strictly inside (33, 96)).
    # y: 49..112: first floor(49/16) + 1 = 4, last ceil(112/16) - 1 = 6 -> [3, 6).
    ((32, 48, 95, 111), 13, 13, (2, 3, 5, 6)),
    # Left edge on a cell centre. x: 1-based 16..60: first floor(16/16) + 1 = 2 (centre 16 is not strictly
    # inside), last ceil(60/16) - 1 = 3 -> [1, 3). y: 1-based 15..60: first floor(15/16) + 1 = 1 -> [0, 3).
    ((15, 14, 59, 59), 13, 13, (1, 0, 3, 3)),
    # Right edge one pixel past a centre. x: 1-based 1..113: last ceil(113/16) - 1 = 7 (centre 112 < 113)
    # -> [0, 7). y: 1-based 1..112: last ceil(112/16) - 1 = 6 (centre 112 is not strictly inside) -> [0, 6).
    ((0, 0, 112, 111), 13, 13, (0, 0, 7, 6)),
    # Whole 300 x 200 (W x H) image; ZF-5's conv5 is 11 x 17 there (rows 200->98->49->23->11, columns
    # 300->148->74->35->17). x: last ceil(300/16) - 1 = 18 -> clamped to 17. y: last ceil(200/16) - 1 = 12 -> 11.
    ((0, 0, 299, 199), 11, 17, (0, 0, 17, 11)),
    # Box reaching past the top-left border: 1-based -39..51: first floor(-39/16) + 1 = -2 -> clamped to 0;
    # last ceil(51/16) - 1 = 3 -> [0, 3).
    ((-40, -40, 50, 50), 13, 13, (0, 0, 3, 3)),
    # Box past the bottom-right border: 1-based 190..260: first floor(190/16) + 1 = 12, last ceil(260/16) - 1
    # = 16 -> [11, 16) clamped to [11, 13).
    ((189, 189, 259, 259), 13, 13, (11, 11, 13, 13)),
    # Tiny box at the origin: 1-based 6..11: first 1, last ceil(11/16) - 1 = 0 -> empty. Nearest centre to
    # (6 + 11)/2 = 8.5: round(8.5/16) = 1 (centre 16) -> 0-based [0, 1).
    ((5, 5, 10, 10), 13, 13, (0, 0, 1, 1)),
    # Tiny interior box. x: 1-based 101..105: first floor(101/16) + 1 = 7, last ceil(105/16) - 1 = 6 -> empty;
    # centre 103, round(103/16) = round(6.44) = 6 (centre 96 is 7 px away, 112 is 9) -> [5, 6).
    # y: 61..64: first 4, last ceil(64/16) - 1 = 3 -> empty; centre 62.5, round(3.91) = 4 (centre 64) -> [3, 4).
    ((100, 60, 104, 63), 13, 13, (5, 3, 6, 4)),
    # Single pixel at the bottom-right corner of a 224 image: 1-based 224: first 15, last 13 -> empty;
    # round(224/16) = 14 -> 0-based 13 -> clamped to the last cell [12, 13).
    ((223, 223, 223, 223), 13, 13, (12, 12, 13, 13)),
    # Single pixel midway between centres 32 and 48: 1-based 40: round(40/16) = round(2.5) = 3, halves up
    # -> [2, 3). y: 1-based 1: round(1/16) = 0 -> 0-based -1 -> clamped to [0, 1).
    ((39, 0, 39, 0), 13, 13, (2, 0, 3, 1)),
    # 3 px around the centre 32 (1-based 31..34): first floor(31/16) + 1 = 2, last ceil(34/16) - 1 = 2 -> [1, 2).
    ((30, 30, 33, 33), 13, 13, (1, 1, 2, 2)),
    # Fractional (scaled) box. x: 1-based 16.5..48.2: first floor(1.03) + 1 = 2, last ceil(3.01) - 1 = 3
    # -> [1, 3). y: 1-based 2.25..30: first 1, last ceil(1.875) - 1 = 1 -> [0, 1).
    ((15.5, 1.25, 47.2, 29.0), 13, 13, (1, 0, 3, 1)),
]


@pytest.mark.parametrize(("box", "map_h", "map_w", "cells"), CASES)
def test_hand_worked_boxes(box, map_h, map_w, cells):
    assert image_box_to_cells(box, S, map_h, map_w) == cells


def test_conv5_sizes_in_the_cases_are_zf5s():
    spec = get_network("zf5")
    assert feature_stride(spec) == S
    assert feature_sizes(spec, 224, 224)[-1][1:] == (13, 13)
    assert feature_sizes(spec, 200, 300)[-1][1:] == (11, 17)


def test_vectorised_matches_hand_worked_cases():
    for map_size in {(h, w) for _, h, w, _ in CASES}:
        chosen = [case for case in CASES if case[1:3] == map_size]
        got = image_boxes_to_cells(np.array([c[0] for c in chosen]), S, *map_size)
        assert got.dtype == np.int64
        assert got.tolist() == [list(c[3]) for c in chosen]


def _reference(box, stride, map_h, map_w):
    """Per-box Python: cells whose 1-based centres stride * k lie strictly inside the 1-based window, else the
    nearest one; then clamped."""
    out = []
    for lo, hi, size in ((box[0], box[2], map_w), (box[1], box[3], map_h)):
        lo1, hi1 = lo + 1, hi + 1
        inside = [k for k in range(-100, 200) if lo1 < stride * k < hi1]
        if inside:
            first, last = inside[0], inside[-1]
        else:
            first = last = math.floor((lo1 + hi1) / 2 / stride + 0.5)
        start = min(max(first - 1, 0), size - 1)
        end = min(max(last, start + 1), size)
        out.append((start, end))
    (x0, x1), (y0, y1) = out
    return [x0, y0, x1, y1]


@pytest.mark.parametrize("stride", [16, 12, 7])
def test_vectorised_matches_per_box_reference(stride):
    rng = np.random.default_rng(stride)
    left_top = rng.integers(-20, 300, size=(400, 2))
    extent = rng.integers(0, 200, size=(400, 2))
    boxes = np.concatenate([left_top, left_top + extent], axis=1)
    got = image_boxes_to_cells(boxes, stride, 14, 19)
    assert got.tolist() == [_reference(b.tolist(), stride, 14, 19) for b in boxes]
    assert (got[:, 2] > got[:, 0]).all() and (got[:, 3] > got[:, 1]).all()
    assert got[:, :2].min() >= 0 and (got[:, 2] <= 19).all() and (got[:, 3] <= 14).all()


def test_no_boxes():
    assert image_boxes_to_cells(np.zeros((0, 4)), S, 13, 13).shape == (0, 4)


@pytest.mark.parametrize(
    ("boxes", "stride", "match"),
    [
        ([[10, 0, 9, 5]], S, "right < left"),
        ([[0, 10, 5, 9]], S, "right < left"),
        ([[0, 0, np.nan, 5]], S, "not finite"),
        ([[0, 0, 5]], S, r"\(K, 4\)"),
        ([[0, 0, 5, 5]], 0, "stride"),
        ([[0, 0, 5, 5]], 1.5, "stride"),
    ],
)
def test_errors(boxes, stride, match):
    with pytest.raises(ValueError, match=match):
        image_boxes_to_cells(np.array(boxes, dtype=float), stride, 13, 13)


def test_empty_map_is_an_error():
    with pytest.raises(ValueError, match="1x1"):
        image_boxes_to_cells(np.array([[0, 0, 5, 5]]), S, 0, 13)
