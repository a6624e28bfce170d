"""Selective-search proposals: the box convention, filtering, the proposal cap and the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sppnet.reproduce.detection import proposals
from sppnet.reproduce.detection.boxes import box_iou
from sppnet.reproduce.detection.proposals import ProposalCache, ProposalSettings, selective_search

HEIGHT, WIDTH = 120, 160
# Inclusive (x1, y1, x2, y2) of three flat rectangles on a grey background.
RECTANGLES = np.array([[10, 15, 59, 74], [80, 20, 149, 59], [95, 75, 139, 109]], dtype=np.float64)


def rectangles_bgr() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    for (x1, y1, x2, y2), colour in zip(
        RECTANGLES.astype(int), ((0, 0, 230), (230, 40, 0), (20, 220, 20)), strict=True
    ):
        image[y1 : y2 + 1, x1 : x2 + 1] = colour
    return image


def write_png(path: Path, bgr: np.ndarray) -> Path:
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]), "RGB").save(path)
    return path


class FakeSearch:
    """Stands in for OpenCV's selective search: returns fixed (x, y, w, h) rects and records the image it got."""

    def __init__(self, rects: list[tuple[int, int, int, int]], seen: list[tuple[int, ...]]) -> None:
        self.rects, self.seen = rects, seen

    def setBaseImage(self, image: np.ndarray) -> None:
        self.seen.append(image.shape)

    def switchToSelectiveSearchFast(self) -> None:
        pass

    def process(self) -> np.ndarray:
        return np.array(self.rects, dtype=np.int32).reshape(-1, 4)


@pytest.fixture
def fake_search(monkeypatch: pytest.MonkeyPatch):  # -> Callable[[list], list of image shapes seen]
    def install(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, ...]]:
        seen: list[tuple[int, ...]] = []
        monkeypatch.setattr(
            cv2.ximgproc.segmentation, "createSelectiveSearchSegmentation", lambda: FakeSearch(rects, seen)
        )
        return seen

    return install


def test_opencv_rects_become_inclusive_boxes_deduplicated_filtered_and_capped_in_opencv_order(fake_search) -> None:
    fake_search(
        [(30, 40, 50, 20), (0, 0, 160, 120), (30, 40, 50, 20), (5, 5, 19, 60), (130, 90, 40, 40), (1, 2, 20, 20)]
    )
    boxes = selective_search(rectangles_bgr(), ProposalSettings(min_size=20))
    assert boxes.dtype == np.float64
    # (x, y, w, h) covers columns x..x+w-1; a duplicate goes, a 19-px-wide box goes, one past the edge is clipped.
    np.testing.assert_array_equal(boxes, [[30, 40, 79, 59], [0, 0, 159, 119], [130, 90, 159, 119], [1, 2, 20, 21]])
    capped = selective_search(rectangles_bgr(), ProposalSettings(min_size=20, max_proposals=2))
    np.testing.assert_array_equal(capped, [[30, 40, 79, 59], [0, 0, 159, 119]])


def test_max_side_downscales_the_search_and_maps_boxes_back_to_original_pixels(fake_search) -> None:
    seen = fake_search([(0, 0, 40, 30), (10, 5, 20, 10)])
    boxes = selective_search(rectangles_bgr(), ProposalSettings(min_size=1, max_side=40))
    assert seen == [(30, 40, 3)]
    # Scale 1/4: downscaled columns 10..29 cover original columns 40..119.
    np.testing.assert_array_equal(boxes, [[0, 0, 159, 119], [40, 20, 119, 59]])
    assert selective_search(rectangles_bgr(), ProposalSettings(min_size=1, max_side=160)).shape == (2, 4)
    assert seen[-1] == (HEIGHT, WIDTH, 3)


def test_no_proposal_left_gives_an_empty_float_array(fake_search) -> None:
    fake_search([])
    empty = selective_search(rectangles_bgr())
    assert empty.shape == (0, 4) and empty.dtype == np.float64
    fake_search([(0, 0, 5, 5)])
    assert selective_search(rectangles_bgr()).shape == (0, 4)


def test_real_selective_search_finds_the_rectangles_within_the_image_and_the_cap() -> None:
    settings = ProposalSettings(min_size=10)
    boxes = selective_search(rectangles_bgr(), settings)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 3 <= len(boxes) <= settings.max_proposals
    assert (boxes == np.round(boxes)).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= WIDTH - 1).all() and (boxes[:, 3] <= HEIGHT - 1).all()
    assert (boxes[:, 2:] - boxes[:, :2] + 1 >= 10).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert [0, 0, WIDTH - 1, HEIGHT - 1] in boxes.tolist()  # the last merge covers the whole image, inclusively
    assert (box_iou(RECTANGLES, boxes).max(axis=1) >= 0.7).all()
    # OpenCV ranks with rand(), so a capped list is some 3 of the full list, not a fixed 3.
    capped = selective_search(rectangles_bgr().astype(np.float32), ProposalSettings(min_size=10, max_proposals=3))
    assert len(capped) == 3 and all(box in boxes.tolist() for box in capped.tolist())


def test_blank_image_gives_at_most_the_whole_image_and_a_tiny_one_nothing() -> None:
    blank = selective_search(np.zeros((40, 50, 3), dtype=np.uint8))
    assert blank.shape[1] == 4 and len(blank) <= 1
    assert selective_search(np.zeros((12, 12, 3), dtype=np.uint8)).shape == (0, 4)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="BGR"):
        selective_search(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="max_proposals"):
        ProposalSettings(max_proposals=0)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = proposals.selective_search

    def counting(image: np.ndarray, settings: ProposalSettings) -> np.ndarray:
        calls.append(1)
        return real(image, settings)

    monkeypatch.setattr(proposals, "selective_search", counting)
    return calls


def test_cache_hit_returns_identical_boxes_without_searching_again(tmp_path: Path, counted: list[int]) -> None:
    image = write_png(tmp_path / "rects.png", rectangles_bgr())
    cache = ProposalCache(tmp_path / "cache")
    first = cache.get(image)
    assert len(counted) == 1
    (stored,) = (tmp_path / "cache").iterdir()
    assert stored.suffix == ".npy" and len(stored.stem) == 64
    assert stored == cache.path(image.read_bytes())
    again = cache.get(image)
    assert len(counted) == 1 and np.array_equal(again, first) and again.dtype == np.float64
    # The key is the image's content: a copy elsewhere hits; other settings miss.
    copy = tmp_path / "copy.png"
    copy.write_bytes(image.read_bytes())
    assert np.array_equal(ProposalCache(tmp_path / "cache").get(copy, settings=ProposalSettings()), first)
    assert len(counted) == 1
    cache.get(image, settings=ProposalSettings(max_proposals=3))
    assert len(counted) == 2 and len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_uses_a_given_decoded_image(tmp_path: Path, counted: list[int]) -> None:
    image = write_png(tmp_path / "rects.png", rectangles_bgr())
    blank = np.zeros((30, 30, 3), dtype=np.uint8)
    boxes = ProposalCache(tmp_path / "cache").get(image, blank, ProposalSettings(min_size=1))
    assert len(counted) == 1 and boxes.tolist() == [[0, 0, 29, 29]]


def test_corrupt_cache_files_are_recomputed_and_reported_once(tmp_path: Path, counted: list[int]) -> None:
    cache = ProposalCache(tmp_path / "cache")
    images = [write_png(tmp_path / f"{i}.png", np.roll(rectangles_bgr(), 7 * i, axis=1)) for i in range(2)]
    good = [cache.get(image) for image in images]
    files = [cache.path(image.read_bytes()) for image in images]
    files[0].write_bytes(b"not an npy file")
    np.save(files[1], np.array([[5.0, 5.0, 1.0, 1.0]]))  # readable but not a box
    fresh = ProposalCache(tmp_path / "cache")
    with pytest.warns(RuntimeWarning, match="corrupt") as record:
        redone = [fresh.get(image) for image in images]
    assert len(record) == 1 and fresh.recomputed == 2 and len(counted) == 4
    for before, after, file in zip(good, redone, files, strict=True):
        assert set(map(tuple, after.tolist())) == set(map(tuple, before.tolist()))
        assert np.array_equal(np.load(file), after)
    assert np.array_equal(fresh.get(images[0]), redone[0]) and len(counted) == 4


def test_blank_image_with_no_proposals_is_cached_as_empty(tmp_path: Path, counted: list[int]) -> None:
    image = write_png(tmp_path / "tiny.png", np.zeros((12, 12, 3), dtype=np.uint8))
    cache = ProposalCache(tmp_path / "cache")
    assert cache.get(image).shape == (0, 4)
    again = cache.get(image)
    assert again.shape == (0, 4) and again.dtype == np.float64 and len(counted) == 1
