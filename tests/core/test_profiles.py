"""Optimisation profiles: fixed engines pin the size; dynamic engines cover the whole size range, tuned near where
images are, with activation memory bounded; `profile_for` routes an image to the tightest covering profile."""

from __future__ import annotations

import itertools

import pytest

from sppnet.core.profiles import Profile, dynamic_profiles, fixed_profile, profile_for


def test_fixed_profile_pins_the_size_and_spans_the_batch() -> None:
    profile = fixed_profile(180, 240, opt_batch=8, max_batch=32)
    assert profile.min == (1, 3, 180, 240)
    assert profile.opt == (8, 3, 180, 240)
    assert profile.max == (32, 3, 180, 240)
    assert profile.max_batch == 32
    assert profile.covers(180, 240)
    assert not profile.covers(240, 180)
    assert not profile.covers(180, 241)


def test_dynamic_profiles_for_the_paper_scales() -> None:
    small, large = dynamic_profiles(
        min_size=39, max_size=448, scales=[(224, 224), (180, 180)], opt_batch=8, max_batch=32
    )
    assert small == Profile((1, 3, 39, 39), (8, 3, 224, 224), (32, 3, 224, 224))
    # Larger images: the whole range, tuned midway to the largest size, batch cut by the area ratio (224/448)^2.
    assert large == Profile((1, 3, 39, 39), (8, 3, 336, 336), (8, 3, 448, 448))


@pytest.mark.parametrize(
    ("min_size", "max_size", "scales", "opt_batch", "max_batch"),
    [
        (39, 448, [(224, 224), (180, 180)], 8, 32),
        (8, 64, [(32, 32), (24, 40)], 2, 4),
        (35, 500, [(100, 300)], 3, 3),
        (10, 10, [(10, 10)], 1, 1),
        (5, 97, [], 4, 16),
    ],
)
def test_dynamic_profiles_cover_every_size_with_bounded_memory(min_size, max_size, scales, opt_batch, max_batch):
    profiles = dynamic_profiles(
        min_size=min_size, max_size=max_size, scales=scales, opt_batch=opt_batch, max_batch=max_batch
    )
    assert 1 <= len(profiles) <= 2
    sizes = sorted({min_size, max_size, *range(min_size, max_size + 1, 7)} | {s for sc in scales for s in sc})
    for h, w in itertools.product(sizes, sizes):
        index = profile_for(profiles, h, w)
        assert profiles[index].covers(h, w)
        assert not any(p.covers(h, w) for p in profiles[:index])  # the first (tightest) covering profile
    first = profiles[0]
    assert first.max_batch == max_batch and first.opt[0] == opt_batch
    if scales:  # tuned at the largest export scale, per axis
        assert first.opt[2:] == (max(s[0] for s in scales), max(s[1] for s in scales))
    for p in profiles[1:]:
        # Activation memory scales with batch x area: never above the first profile's, unless batch is already 1.
        assert p.max[0] == 1 or p.max[0] * p.max[2] * p.max[3] <= first.max[0] * first.max[2] * first.max[3]
        assert p.opt[2] > first.max[2] or p.opt[3] > first.max[3]  # tuned for the larger images it is there for


def test_an_image_outside_every_profile_is_refused_with_the_range() -> None:
    profiles = dynamic_profiles(min_size=8, max_size=64, scales=[(32, 32)], opt_batch=2, max_batch=4)
    assert profile_for(profiles, 32, 32) == 0
    assert profile_for(profiles, 8, 64) == 1
    for h, w in [(7, 20), (20, 65), (65, 65)]:
        with pytest.raises(ValueError, match=rf"{h}x{w} is outside every engine profile .*8x8\.\.64x64") as info:
            profile_for(profiles, h, w)
        assert "\n" not in str(info.value)


def test_profiles_round_trip_through_json_and_refuse_bad_records() -> None:
    for profile in dynamic_profiles(min_size=8, max_size=64, scales=[(24, 40)], opt_batch=2, max_batch=4):
        assert Profile.from_json(profile.to_json()) == profile
    good = {"min": [1, 3, 8, 8], "opt": [2, 3, 16, 16], "max": [4, 3, 32, 32]}
    for bad in (
        {**good, "opt": [2, 3, 64, 16]},  # opt above max
        {**good, "min": [1, 3, 8]},
        {**good, "max": [4, 4, 32, 32]},  # channels differ
        {**good, "min": [0, 3, 8, 8]},
        {**good, "min": [1.0, 3, 8, 8]},
        {"min": [1, 3, 8, 8], "max": [4, 3, 32, 32]},
        [1, 3, 8, 8],
    ):
        with pytest.raises(ValueError, match="profile"):
            Profile.from_json(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"opt_batch": 8, "max_batch": 4}, r"opt batch \(8\) <= max batch \(4\)"),
        ({"opt_batch": 0, "max_batch": 4}, r"1 <= opt batch"),
        ({"min_size": 100, "max_size": 50}, r"min size \(100\) <= max size \(50\)"),
        ({"scales": [(0, 32)]}, "export scale"),
    ],
)
def test_bad_profile_arguments_are_one_line_errors(kwargs, message) -> None:
    args = {"min_size": 8, "max_size": 64, "scales": [(32, 32)], "opt_batch": 2, "max_batch": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        dynamic_profiles(**args)
    with pytest.raises(ValueError, match="positive size"):
        fixed_profile(0, 32, opt_batch=1, max_batch=1)


def test_a_largest_scale_at_the_maximum_size_needs_one_profile() -> None:
    (only,) = dynamic_profiles(min_size=39, max_size=224, scales=[(224, 224)], opt_batch=8, max_batch=32)
    assert only == Profile((1, 3, 39, 39), (8, 3, 224, 224), (32, 3, 224, 224))
