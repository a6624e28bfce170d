"""The masked SPP and the branch-free network form that compiled packages are traced from: bit for bit the same as
the eager layers (and a per-bin loop written from the paper) at every size, and exportable with symbolic sizes."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.export import Dim

from sppnet.core.bins import RULES, can_bin, spp_bins
from sppnet.core.errors import InvalidInput
from sppnet.core.layers import CaffeMaxPool2d
from sppnet.core.models import build_model
from sppnet.core.spp import SpatialPyramidPooling, spatial_pyramid_pool
from sppnet.export.spp_masked import MaskedSPP, bin_edges, masked_spp
from sppnet.export.torch_form import PaddedCaffeMaxPool2d, TorchForm

_spec = importlib.util.spec_from_file_location("_brute_force", Path(__file__).parents[1] / "core" / "brute_force.py")
assert _spec is not None and _spec.loader is not None
brute_force = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(brute_force)

LEVELS = {"adaptive": (6, 3, 2, 1), "window": (6, 3, 2, 1), "caffe": (4, 2, 1)}


def maps(gen: torch.Generator, h: int, w: int, ties: bool) -> torch.Tensor:
    """ReLU-like maps; with `ties`, small integers so that bins hold equal maxima."""
    x = torch.randint(0, 4, (2, 3, h, w), generator=gen).float() if ties else torch.randn(2, 3, h, w, generator=gen)
    return x.clamp_min(0)


@pytest.mark.parametrize("rule", RULES)
def test_masked_spp_equals_the_layer_and_a_per_bin_loop_bit_for_bit(rule: str) -> None:
    gen, levels, checked = torch.Generator().manual_seed(0), LEVELS[rule], 0
    for h, w in itertools.product([1, 2, 3, 5, 6, 7, 10, 13, 14, 17, 24], [1, 4, 9, 13, 19, 31]):
        if not can_bin(h, w, levels, rule):
            continue
        for ties in (False, True):
            x = maps(gen, h, w, ties)
            got = masked_spp(x, levels, rule)
            assert torch.equal(got, spatial_pyramid_pool(x, levels, rule)), (rule, h, w)
            assert np.array_equal(got.numpy(), brute_force.spp(x.numpy(), levels, rule)), (rule, h, w)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("rule", RULES)
def test_bin_edges_are_the_bins_of_the_one_source_of_truth(rule: str) -> None:
    for a, n in itertools.product(range(1, 41), range(1, 9)):
        try:
            want = spp_bins(a, n, rule)
        except InvalidInput:
            continue
        start, end = bin_edges(a, n, rule, torch.device("cpu"))
        assert list(zip(start.tolist(), end.tolist(), strict=True)) == want, (a, n)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (3, 3), (2, 2), (5, 3), (3, 1)])
def test_the_padded_pool_equals_caffe_ceil_mode_pooling(kernel: int, stride: int) -> None:
    gen = torch.Generator().manual_seed(1)
    padded, caffe = PaddedCaffeMaxPool2d(kernel, stride), CaffeMaxPool2d(kernel, stride)
    for h, w in itertools.product(range(kernel, kernel + 12), (kernel, kernel + 5, 31)):
        x = torch.randn(2, 3, h, w, generator=gen)
        assert torch.equal(padded(x), caffe(x)), (h, w)
    with pytest.raises(InvalidInput, match="stride > kernel"):
        PaddedCaffeMaxPool2d(2, 3)


def test_the_torch_form_is_the_model_at_any_size() -> None:
    torch.manual_seed(0)
    model = build_model("zf5_cpu", num_classes=7).eval()
    plain, fast = TorchForm(model, "fp32", channels_last=False), TorchForm(model, "fp32")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for h, w in [(39, 39), (46, 300), (112, 112), (97, 131), (250, 41)]:
            x = torch.randn(2, 3, h, w, generator=gen) * 0.9
            want = model(x)
            assert torch.equal(plain(x), want), (h, w)  # the same layers, same order: bit for bit
            assert float((fast(x) - want).abs().max() / want.abs().max()) < 1e-5  # channels_last: another conv
        half = TorchForm(model, "bf16")(x)
    assert half.dtype == torch.float32 and float((half - want).abs().max() / want.abs().max()) < 5e-2


def test_the_masked_form_exports_with_symbolic_sizes_and_the_eager_layer_does_not() -> None:
    dims = ({0: Dim("batch", min=1, max=8), 2: Dim("h", min=1, max=64), 3: Dim("w", min=1, max=64)},)
    example = (torch.randn(2, 4, 13, 13).clamp_min(0),)
    program = torch.export.export(MaskedSPP((6, 3, 2, 1)), example, dynamic_shapes=dims)
    ranges = sorted((int(r.lower), int(r.upper)) for r in program.range_constraints.values())
    assert ranges == [(1, 8), (1, 64), (1, 64)]  # nothing specialised on the example's 13x13
    gen = torch.Generator().manual_seed(3)
    for b, h, w in [(1, 1, 1), (3, 7, 40), (2, 64, 13), (8, 29, 5)]:
        x = torch.randn(b, 4, h, w, generator=gen)
        assert torch.equal(program.module()(x), spatial_pyramid_pool(x, (6, 3, 2, 1))), (b, h, w)
    with pytest.raises(Exception):  # noqa: B017 - the eager layer picks pools from Python ints of the size
        torch.export.export(SpatialPyramidPooling((6, 3, 2, 1)), example, dynamic_shapes=dims)


def test_a_caffe_files_pools_rule_takes_its_windows_at_its_length_and_adaptive_bins_elsewhere() -> None:
    rule = "pools@13:1=k13s13,2=k7s7,3=k5s4,6=k3s2"  # the SPP-net release's head (PAPER.md section 9)
    for a in (13, 10, 17):
        start, end = bin_edges(a, 2, rule, torch.device("cpu"))
        assert list(zip(start.tolist(), end.tolist(), strict=True)) == spp_bins(a, 2, rule)
    assert spp_bins(13, 2, rule) == [(0, 7), (7, 13)] and spp_bins(10, 2, rule) == spp_bins(10, 2, "adaptive")
    x = torch.randn(2, 4, 13, 17)
    assert torch.equal(masked_spp(x, (6, 3, 2, 1), rule), spatial_pyramid_pool(x, (6, 3, 2, 1), rule))
