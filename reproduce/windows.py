"""Image windows to conv5 cells: the paper's corner projection (PAPER.md section 7 step 4, paper v4 appendix).

Pixel boxes are (x_left, y_top, x_right, y_bottom) in 0-based pixel indices of the (resized) image the network
sees, with the right and bottom pixels INCLUDED: a box covering a W x H image is (0, 0, W - 1, H - 1).
Coordinates may be fractional (boxes scaled to another image size). Cell boxes are what `pool_windows` takes:
0-based, half-open (x0, y0, x1, y1), columns [x0, x1) and rows [y0, y1).

The paper writes its rule in MATLAB's 1-based indexing, for pixels and cells alike (the release's boxes are
1-based too): left/top x' = floor(x/S) + 1, right/bottom x' = ceil(x/S) - 1. With the 1-based pixel x + 1 of a
0-based pixel x, the first cell is floor((x_left + 1)/S) (0-based) and the half-open end is
ceil((x_right + 1)/S) - 1. Read geometrically, it keeps the cells whose receptive-field centres, S * k for the
1-based cell k, lie strictly inside the 1-based window (x_left + 1, x_right + 1).
"""

from __future__ import annotations

import numpy as np

from sppnet.core.errors import InvalidInput


def _axis_cells(low: np.ndarray, high: np.ndarray, stride: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-open 0-based cells [start, end) along one axis for inclusive 0-based pixel edges low..high."""
    low1, high1 = low + 1.0, high + 1.0  # the paper's 1-based pixels
    start = np.floor(low1 / stride)  # 1-based floor(x/S) + 1, minus 1
    end = np.ceil(high1 / stride) - 1  # 1-based ceil(x/S) - 1 is the last cell; minus 1, plus 1 for half-open
    # A window narrower than the cell spacing has no centre inside it: take the cell whose centre is nearest
    # the window's centre, 1-based round(centre / S), rounding halves up.
    nearest = np.floor((low1 + high1) / (2.0 * stride) + 0.5) - 1
    empty = end <= start
    start = np.clip(np.where(empty, nearest, start), 0, size - 1)
    end = np.clip(np.where(empty, nearest + 1, end), start + 1, size)
    return start.astype(np.int64), end.astype(np.int64)


def image_boxes_to_cells(boxes: np.ndarray, stride: int, map_h: int, map_w: int) -> np.ndarray:
    """(K, 4) pixel boxes (inclusive, 0-based; see the module docstring) -> (K, 4) int64 half-open cell boxes.

    Every result is clamped to the map_h x map_w map and holds at least one cell; a window too small to
    contain a cell centre gets the single cell nearest its centre.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidInput(
            f"image_boxes_to_cells expects boxes of shape (K, 4) as (x_left, y_top, x_right, y_bottom); "
            f"got {boxes.shape}"
        )
    if int(stride) != stride or stride < 1 or map_h < 1 or map_w < 1:
        raise InvalidInput(
            f"image_boxes_to_cells needs an integer stride >= 1 and a map of at least 1x1 cells; "
            f"got stride {stride}, map {map_h}x{map_w}"
        )
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            f"image_boxes_to_cells: box {i} {boxes[i].tolist()} is not finite or has right < left or "
            "bottom < top: boxes are (x_left, y_top, x_right, y_bottom) with the right/bottom pixel included"
        )
    x0, x1 = _axis_cells(boxes[:, 0], boxes[:, 2], int(stride), map_w)
    y0, y1 = _axis_cells(boxes[:, 1], boxes[:, 3], int(stride), map_h)
    return np.stack([x0, y0, x1, y1], axis=1)


def image_box_to_cells(
    box: tuple[float, float, float, float], stride: int, map_h: int, map_w: int
) -> tuple[int, int, int, int]:
    """One pixel box (x_left, y_top, x_right, y_bottom), right/bottom included -> half-open cells (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = image_boxes_to_cells(np.asarray([box]), stride, map_h, map_w)[0].tolist()
    return x0, y0, x1, y1
