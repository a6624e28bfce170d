"""SpatialPyramidPooling and window pooling: exact against a per-bin loop, Caffe's order, gradients, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sppnet.core import SpatialPyramidPooling, pool_windows, spatial_pyramid_pool, spp_output_dim

from . import brute_force
from .brute_force import NoBins

LEVELS = (6, 3, 2, 1)
# Odd, tiny, non-square and the ZF-5 sizes (13 at 224, 10 at 180), plus maps smaller than the finest level.
SHAPES = [
    (13, 13),
    (10, 10),
    (1, 1),
    (1, 7),
    (2, 3),
    (5, 4),
    (7, 11),
    (6, 6),
    (9, 14),
    (17, 23),
    (31, 8),
    (12, 25),
    (3, 40),
    (43, 57),
]
# Sizes where the window rule is exact for every level of (6, 3, 2, 1): a mod 6 in {0, 1}.
WINDOW_EXACT = [(12, 13), (13, 25), (24, 37), (36, 49), (7, 6), (18, 19), (61, 30), (6, 73)]


def _valid(h: int, w: int, levels: tuple[int, ...], rule: str) -> bool:
    try:
        brute_force.spp(np.zeros((1, 1, h, w)), levels, rule)
    except NoBins:
        return False
    return True


@pytest.mark.parametrize("rule", ["adaptive", "window", "caffe"])
def test_spp_equals_a_per_bin_loop_at_many_sizes(rule: str) -> None:
    gen = torch.Generator().manual_seed(0)
    checked = 0
    pyramids = [LEVELS, (4, 2, 1), (1, 2, 4, 8), (5,)]
    sizes = [*SHAPES, *WINDOW_EXACT, *((a, a + 2) for a in range(1, 30))]
    for (h, w), levels in itertools.product(sizes, pyramids):
        x = torch.randn(2, 3, h, w, generator=gen)
        if not _valid(h, w, levels, rule):
            with pytest.raises(ValueError, match=f"rule='{rule}'"):
                spatial_pyramid_pool(x, levels, rule)
            continue
        expected = brute_force.spp(x.numpy(), levels, rule)
        assert np.array_equal(spatial_pyramid_pool(x, levels, rule).numpy(), expected), (h, w, levels, rule)
        checked += 1
    assert checked >= 20  # the window rule is exact at few sizes; the others pass at 60+


def test_output_is_caffe_order_levels_then_channel_row_column() -> None:
    # One hot cell per channel: the position of each maximum in the output vector spells the order.
    x = torch.full((1, 2, 4, 4), -1.0)
    x[0, 0, 0, 3] = 5.0  # channel 0, top right
    x[0, 1, 3, 0] = 7.0  # channel 1, bottom left
    out = spatial_pyramid_pool(x, (2, 1))[0]
    # level 2: channel 0 bins (0,0),(0,1),(1,0),(1,1) then channel 1; level 1: channel 0, channel 1.
    assert out.tolist() == [-1, 5, -1, -1, -1, -1, 7, -1, 5, 7]


def test_height_and_width_have_independent_bins() -> None:
    x = torch.arange(3 * 8, dtype=torch.float32).view(1, 1, 3, 8)
    out = spatial_pyramid_pool(x, (2,))[0]
    # rows [0,2) [1,3); columns [0,4) [4,8): maxima at row 1 / row 2, columns 3 / 7.
    assert out.tolist() == [11, 15, 19, 23]


def test_output_length_is_c_times_sum_of_squares_at_any_size() -> None:
    layer = SpatialPyramidPooling(LEVELS)
    for h, w in [(13, 13), (10, 10), (3, 50), (1, 1)]:
        assert layer(torch.randn(2, 256, h, w)).shape == (2, 256 * 50) == (2, spp_output_dim(256, LEVELS))


@pytest.mark.parametrize(
    ("rule", "shape"),
    [("adaptive", (10, 7)), ("adaptive", (3, 2)), ("caffe", (13, 9)), ("caffe", (6, 11)), ("window", (13, 9))],
)
def test_gradients_pass_gradcheck(rule: str, shape: tuple[int, int]) -> None:
    levels = (4, 2, 1) if rule != "adaptive" else LEVELS
    x = torch.randn(2, 2, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spatial_pyramid_pool(t, levels, rule), (x,))


def test_gradient_goes_to_the_maximum_of_each_bin() -> None:
    x = torch.randn(1, 1, 10, 10, requires_grad=True)
    spatial_pyramid_pool(x, (6,)).sum().backward()
    grad = torch.zeros(100)
    for r0, r1 in brute_force.adaptive(10, 6):
        for c0, c1 in brute_force.adaptive(10, 6):
            window = x.detach()[0, 0, r0:r1, c0:c1]
            flat = window.argmax()
            grad[(r0 + flat // window.shape[1]) * 10 + c0 + flat % window.shape[1]] += 1
    assert torch.equal(x.grad.flatten(), grad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(3, 13, 13), r"4-D \(N, C, H, W\)"),
        (torch.zeros(1, 3, 0, 13), "empty feature map"),
        (torch.zeros(1, 0, 13, 13), "empty feature map"),
    ],
)
def test_bad_maps_raise_one_clear_error(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpatialPyramidPooling()(bad)


def test_bad_rule_or_levels_raise() -> None:
    with pytest.raises(ValueError, match="unknown SPP rule 'max'"):
        SpatialPyramidPooling(rule="max")
    with pytest.raises(ValueError, match="bin counts >= 1"):
        SpatialPyramidPooling(levels=(6, 0))
    with pytest.raises(ValueError, match="bin counts >= 1"):
        SpatialPyramidPooling(levels=())


def _random_boxes(gen: torch.Generator, k: int, num_maps: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = torch.randint(0, w, (k,), generator=gen)
    y0 = torch.randint(0, h, (k,), generator=gen)
    x1 = x0 + 1 + (torch.rand(k, generator=gen) * (w - x0)).long().clamp(max=w - x0 - 1)
    y1 = y0 + 1 + (torch.rand(k, generator=gen) * (h - y0)).long().clamp(max=h - y0 - 1)
    return torch.stack([x0, y0, x1, y1], 1), torch.randint(0, num_maps, (k,), generator=gen)


@pytest.mark.parametrize("rule", ["adaptive", "caffe"])
def test_window_pooling_equals_spp_of_each_cropped_window(rule: str) -> None:
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 4, 19, 27, generator=gen)
    boxes, index = _random_boxes(gen, 300, 3, 19, 27)
    levels = LEVELS if rule == "adaptive" else (4, 2, 1)
    keep = [
        i for i in range(300) if _valid(int(boxes[i, 3] - boxes[i, 1]), int(boxes[i, 2] - boxes[i, 0]), levels, rule)
    ]
    boxes, index = boxes[keep], index[keep]
    got = pool_windows(maps, boxes, levels, rule, image_index=index, max_elements=5000)  # many chunks
    for i, ((x0, y0, x1, y1), b) in enumerate(zip(boxes.tolist(), index.tolist(), strict=True)):
        crop = maps[b : b + 1, :, y0:y1, x0:x1].numpy()
        assert np.array_equal(got[i].numpy(), brute_force.spp(crop, levels, rule)[0]), (x0, y0, x1, y1, b)


def test_window_pooling_of_the_whole_map_is_spp() -> None:
    maps = torch.randn(2, 8, 10, 13)
    layer = SpatialPyramidPooling(LEVELS)
    whole = torch.tensor([[0, 0, 13, 10], [0, 0, 13, 10]])
    assert torch.equal(layer.pool_windows(maps, whole, torch.tensor([0, 1])), layer(maps))


def test_window_pooling_gradients_pass_gradcheck() -> None:
    maps = torch.randn(2, 2, 7, 9, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 0, 9, 7], [2, 1, 5, 6], [8, 6, 9, 7], [1, 3, 8, 5]])
    index = torch.tensor([0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda m: pool_windows(m, boxes, (3, 2, 1), image_index=index), (maps,))


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (torch.tensor([[0, 0, 0, 3]]), "empty or outside"),
        (torch.tensor([[0, 0, 14, 3]]), "empty or outside"),
        (torch.tensor([[-1, 0, 4, 3]]), "empty or outside"),
        (torch.tensor([[0.0, 0.0, 4.0, 3.0]]), "integer boxes"),
        (torch.tensor([0, 0, 4, 3]), r"shape \(K, 4\)"),
    ],
)
def test_bad_windows_raise_one_clear_error(boxes: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pool_windows(torch.zeros(1, 2, 10, 13), boxes)


def test_window_on_a_missing_map_raises() -> None:
    with pytest.raises(ValueError, match="on map 2"):
        pool_windows(torch.zeros(2, 2, 10, 13), torch.tensor([[0, 0, 4, 4]]), image_index=torch.tensor([2]))


def test_no_windows_give_an_empty_batch() -> None:
    assert pool_windows(torch.zeros(1, 2, 10, 13), torch.zeros(0, 4, dtype=torch.long)).shape == (0, 100)


def test_a_first_call_in_inference_mode_does_not_break_later_training() -> None:
    with torch.inference_mode():
        spatial_pyramid_pool(torch.randn(1, 2, 11, 17), LEVELS)
    x = torch.randn(1, 2, 11, 17, requires_grad=True)
    spatial_pyramid_pool(x, LEVELS).sum().backward()
    assert x.grad is not None


# Maps of several shapes (non-square, one row, one cell), each with explicit 1x1, full-map and tiny windows added
# to random ones; the window rule is exact at few extents, so its random windows are many.
FAST_MAPS = [(3, 3, 19, 27), (2, 2, 9, 5), (1, 2, 1, 7), (2, 4, 16, 16), (1, 3, 31, 8)]


def _windows_for(gen: torch.Generator, shape: tuple[int, int, int, int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    num, _, h, w = shape
    boxes, index = _random_boxes(gen, k, num, h, w)
    extra = []
    for b in range(num):
        extra += [([0, 0, w, h], b), ([w - 1, h - 1, w, h], b), ([0, 0, 1, 1], b), ([w // 2, 0, w, min(h, 2)], b)]
        extra += [([0, h // 3, min(w, 3), h], b), ([w // 3, h // 2, w // 3 + 1, h], b)]
    boxes = torch.cat([boxes, torch.tensor([e[0] for e in extra])])
    return boxes, torch.cat([index, torch.tensor([e[1] for e in extra])])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("rule", ["adaptive", "window", "caffe"])
def test_window_fast_path_and_gather_path_equal_a_per_bin_loop(rule: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    pyramids = {"adaptive": [LEVELS, (5, 2)], "window": [(4, 2, 1), (3, 1)], "caffe": [(4, 2, 1), (3, 2, 1)]}[rule]
    checked = 0
    for shape, levels in itertools.product(FAST_MAPS, pyramids):
        maps = torch.randn(*shape, generator=gen).to(dtype)
        boxes, index = _windows_for(gen, shape, 60 if rule == "adaptive" else 300)
        keep = [i for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()) if _valid(y1 - y0, x1 - x0, levels, rule)]
        if not keep:
            continue
        boxes, index = boxes[keep], index[keep]
        with torch.no_grad():
            fast = pool_windows(maps, boxes, levels, rule, image_index=index, max_elements=500)  # many chunks
        leaf = maps.clone().requires_grad_(True)
        gathered = pool_windows(leaf, boxes, levels, rule, image_index=index, max_elements=500)
        assert gathered.requires_grad and not fast.requires_grad
        assert fast.dtype == dtype and torch.equal(fast, gathered.detach()), (shape, levels, rule)
        for i, ((x0, y0, x1, y1), b) in enumerate(zip(boxes.tolist(), index.tolist(), strict=True)):
            expected = brute_force.spp(maps[b : b + 1, :, y0:y1, x0:x1].numpy(), levels, rule)[0]
            assert np.array_equal(fast[i].numpy(), expected), (shape, levels, (x0, y0, x1, y1), b)
        checked += len(keep)
    assert checked >= 200, checked


def test_window_fast_path_runs_without_autograd_and_gather_path_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from sppnet.core import spp

    maps = torch.randn(2, 3, 11, 14)
    boxes, index = torch.tensor([[0, 0, 14, 11], [3, 2, 9, 10], [5, 5, 6, 6]]), torch.tensor([1, 0, 1])
    with torch.no_grad():
        expected = pool_windows(maps, boxes, image_index=index)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("wrong path")

    with monkeypatch.context() as patch:
        patch.setattr(spp, "_pool_window_level", fail)
        with torch.inference_mode():
            assert torch.equal(pool_windows(maps, boxes, image_index=index), expected)
        assert torch.equal(pool_windows(maps, boxes, image_index=index), expected)  # no leaf needs a gradient
        with torch.no_grad():
            assert torch.equal(pool_windows(maps.requires_grad_(True), boxes, image_index=index), expected)
    with monkeypatch.context() as patch:
        patch.setattr(spp, "_pool_windows_by_table", fail)
        out = pool_windows(maps.requires_grad_(True), boxes, image_index=index)
        assert out.grad_fn is not None and torch.equal(out.detach(), expected)


def test_window_max_table_holds_the_max_of_each_power_of_two_rectangle() -> None:
    from sppnet.core.spp import _max_table

    maps = torch.randn(2, 3, 7, 11)
    table = _max_table(maps, 3, 4)
    assert table.shape == (3, 4, 2, 7, 11, 3)
    for ky, kx, y, x in itertools.product(range(3), range(4), range(7), range(11)):
        # Entries past the edge are the max of the clipped rectangle; queries never read them.
        expected = maps[:, :, y : y + (1 << ky), x : x + (1 << kx)].amax(dim=(2, 3))
        assert torch.equal(table[ky, kx, :, y, x], expected), (ky, kx, y, x)
