"""spp_bins: the three rules of PAPER.md section 2, checked against independent brute-force definitions."""

from __future__ import annotations

import pytest

from sppnet.core import spp_bins, uniform_pooling

from .brute_force import RULES, NoBins

SIZES = range(1, 301)
COUNTS = range(1, 9)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_bins_equal_brute_force_and_raise_exactly_where_the_rule_has_no_n_bins(rule: str) -> None:
    for a in SIZES:
        for n in COUNTS:
            try:
                expected = RULES[rule](a, n)
            except NoBins:
                with pytest.raises(ValueError, match=rf"a={a}, n={n}, rule='{rule}'"):
                    spp_bins(a, n, rule)
                continue
            assert spp_bins(a, n, rule) == expected, (a, n, rule)


def test_adaptive_always_gives_n_non_empty_bins_covering_the_axis() -> None:
    for a in SIZES:
        for n in COUNTS:
            bins = spp_bins(a, n, "adaptive")
            assert len(bins) == n and all(e > s for s, e in bins)
            assert bins[0][0] == 0 and bins[-1][1] == a


def test_window_rule_is_exact_iff_a_mod_n_is_0_or_1() -> None:
    for a in SIZES:
        for n in COUNTS:
            if a < n:
                continue
            if a % n in (0, 1):
                assert spp_bins(a, n, "window") == spp_bins(a, n, "adaptive")
            else:
                with pytest.raises(ValueError):
                    spp_bins(a, n, "window")


@pytest.mark.parametrize(("a", "n", "count"), [(10, 6, 9), (7, 4, 6), (11, 4, 5), (14, 6, 7)])
def test_window_rule_errors_name_the_wrong_bin_count_of_the_papers_examples(a: int, n: int, count: int) -> None:
    with pytest.raises(ValueError, match=rf"gives {count} bins, not {n}"):
        spp_bins(a, n, "window")


def test_zf5_conv5_at_224_is_exact_under_the_window_rule() -> None:
    for n in (1, 2, 3, 4, 6):
        assert spp_bins(13, n, "window") == spp_bins(13, n, "adaptive")


def test_caffe_and_adaptive_bins_of_the_papers_example() -> None:
    assert spp_bins(13, 4, "caffe") == [(0, 2), (2, 6), (6, 10), (10, 13)]
    assert spp_bins(13, 4, "adaptive") == [(0, 4), (3, 7), (6, 10), (9, 13)]
    assert spp_bins(13, 2, "caffe") == [(0, 6), (6, 13)]
    assert spp_bins(55, 4, "caffe") == [(0, 13), (13, 27), (27, 41), (41, 55)]


def test_caffe_rule_raises_where_caffe_aborts_on_pad_ge_kernel() -> None:
    # NOTES.md, checked against Caffe: pyramid height 3 (4x4) aborts for a in {1, 2, 3, 5}; the 8x8 level for
    # a in {1-7, 9-13, 17-19, 25}.
    aborts_4 = {a for a in range(1, 300) if _raises(a, 4)}
    aborts_8 = {a for a in range(1, 300) if _raises(a, 8)}
    assert aborts_4 == {1, 2, 3, 5}
    assert aborts_8 == {*range(1, 8), *range(9, 14), 17, 18, 19, 25}
    with pytest.raises(ValueError, match=r"pad 1 >= kernel 1"):
        spp_bins(2, 4, "caffe")


def _raises(a: int, n: int) -> bool:
    try:
        spp_bins(a, n, "caffe")
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(
    ("a", "n", "rule", "reason"),
    [
        (0, 3, "adaptive", ">= 1"),
        (5, 0, "caffe", ">= 1"),
        (-1, 1, "window", ">= 1"),
        (3, 6, "window", "a >= n"),
    ],
)
def test_invalid_lengths_and_counts_raise_with_the_reason(a: int, n: int, rule: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        spp_bins(a, n, rule)


def test_unknown_rule_lists_the_valid_rules() -> None:
    with pytest.raises(ValueError, match="adaptive, window, caffe"):
        spp_bins(13, 6, "floor")


def _as_one_pool(a: int, n: int, kernel: int, stride: int, pad_before: int) -> list[tuple[int, int]]:
    starts = [i * stride - pad_before for i in range(n)]
    return [(max(s, 0), min(s + kernel, a)) for s in starts]


def test_uniform_pooling_reproduces_the_bins_as_one_padded_max_pool() -> None:
    for rule, bins_of in RULES.items():
        for a in range(1, 80):
            for n in COUNTS:
                try:
                    bins = bins_of(a, n)
                except NoBins:
                    continue
                plan = uniform_pooling(a, n, rule)
                if plan is None:
                    continue
                assert _as_one_pool(a, n, plan.kernel, plan.stride, plan.pad_before) == bins, (a, n, rule)
                assert (n - 1) * plan.stride + plan.kernel == a + plan.pad_before + plan.pad_after


def test_caffe_and_window_levels_are_always_one_max_pool_and_adaptive_when_n_divides_a_or_a_mod_n_is_1() -> None:
    for a in range(1, 200):
        for n in COUNTS:
            for rule in ("caffe", "window"):
                try:
                    spp_bins(a, n, rule)
                except ValueError:
                    continue
                assert uniform_pooling(a, n, rule) is not None, (a, n, rule)
            if a >= n and a % n in (0, 1):
                assert uniform_pooling(a, n, "adaptive") is not None, (a, n)


def test_uniform_pooling_is_none_only_where_no_single_max_pool_gives_the_bins() -> None:
    # Maps smaller than the level (a < n, bins repeat cells) always take the exact gather path instead.
    for rule, bins_of in RULES.items():
        for a in range(1, 21):
            for n in range(1, min(a, 8) + 1):
                try:
                    bins = bins_of(a, n)
                except NoBins:
                    continue
                exists = any(
                    _as_one_pool(a, n, k, s, p) == bins
                    for k in range(1, a + 2)
                    for s in range(1, a + 1)
                    for p in range(k)
                )
                assert (uniform_pooling(a, n, rule) is not None) == exists, (a, n, rule)


def test_can_bin_and_check_pyramid_agree_with_the_brute_force_rules() -> None:
    from sppnet.core.bins import can_bin, check_pyramid

    for rule in ("adaptive", "window", "caffe"):
        for h in range(1, 30):
            for w in (1, 7, 13, 20):
                try:
                    for n in (6, 3, 2, 1):
                        RULES[rule](h, n), RULES[rule](w, n)
                    expected = True
                except NoBins:
                    expected = False
                assert can_bin(h, w, (6, 3, 2, 1), rule) == expected, (rule, h, w)
                if not expected:
                    with pytest.raises(ValueError, match=rule):
                        check_pyramid(h, w, (6, 3, 2, 1), rule)
