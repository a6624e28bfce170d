"""Paired effects with bootstrap intervals, and the plateau rule, against hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sppnet.reproduce.stats import Interval, PlateauRule, paired_bootstrap, seed_interval


def exact_bootstrap_quantiles(diff: np.ndarray, level: float) -> tuple[float, float]:
    """The bootstrap distribution enumerated exactly: every sequence of seeds and of images, equally likely."""
    seeds, images = diff.shape
    means = [
        diff[np.ix_(s, i)].mean()
        for s in itertools.product(range(seeds), repeat=seeds)
        for i in itertools.product(range(images), repeat=images)
    ]
    tail = (1 - level) / 2
    return tuple(np.quantile(means, [tail, 1 - tail]))  # type: ignore[return-value]


def test_the_interval_matches_the_exactly_enumerated_bootstrap() -> None:
    measured = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 1, 0]])
    reference = np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1]])
    got = paired_bootstrap(measured, reference, draws=200_000, level=0.9, seed=3)
    low, high = exact_bootstrap_quantiles(100.0 * (measured - reference), 0.9)
    assert got.mean == pytest.approx(-40.0)  # 2 of 5 then 3 of 5 fewer errors, in pp
    # 200k draws pin the quantiles of a distribution on a 1/50 grid (2 pp) to within one grid step.
    assert got.low == pytest.approx(low, abs=2.0) and got.high == pytest.approx(high, abs=2.0)
    assert (got.seeds, got.images, got.draws, got.level) == (2, 5, 200_000, 0.9)


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    measured = np.zeros((3, 40))
    reference = np.ones((3, 40))
    got = paired_bootstrap(measured, reference, draws=500)
    assert (got.mean, got.low, got.high) == (-100.0, -100.0, -100.0)


def test_the_same_seed_gives_the_same_interval_and_another_seed_nearly_so() -> None:
    rng = np.random.default_rng(0)
    measured, reference = rng.random((3, 400)) < 0.3, rng.random((3, 400)) < 0.35
    a = paired_bootstrap(measured, reference, draws=4000, seed=1)
    assert a == paired_bootstrap(measured, reference, draws=4000, seed=1)
    b = paired_bootstrap(measured, reference, draws=4000, seed=2)
    assert abs(a.low - b.low) < 0.5 and abs(a.high - b.high) < 0.5


@pytest.mark.parametrize(
    ("low", "high", "seeds", "verdict"),
    [
        (-2.0, -0.1, 3, "appears"),
        (0.1, 2.0, 3, "reversed"),
        (-2.0, 0.0, 3, "not established"),
        (-0.5, 0.5, 3, "not established"),
        (-2.0, -0.1, 1, "not established"),  # one seed: the interval holds no seed-to-seed spread
    ],
)
def test_the_verdict_follows_from_the_interval(low: float, high: float, seeds: int, verdict: str) -> None:
    interval = Interval((low + high) / 2, low, high, seeds, 100, 1000)
    assert interval.verdict == verdict and interval.to_json()["verdict"] == verdict


def test_mismatched_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="draws >= 1"):
        paired_bootstrap(np.zeros((1, 3)), np.zeros((1, 3)), draws=0)


# Hand-worked curves (fractions) under PlateauRule(patience=2, delta_pp=0.5, drops=2) and milestones (6, 8).
PLATEAUS = [
    # still learning through 5 epochs: no plateau, no milestone reached -> no drop
    ([0.9, 0.8, 0.7, 0.65, 0.62], (), None),
    # epochs 3-4 gain 0.2 pp over the best before them (0.600 -> 0.598): plateau after epoch 4, drop 1; phase 2 =
    # epochs 5-6: 0.590 then 0.589, 0.1 pp over its last epoch: plateau after epoch 6 (patience 1), drop 2;
    # phase 3 = epochs 7-8: 0.587 then 0.586: plateau again after 2 drops -> converged after 8 epochs
    ([0.70, 0.600, 0.599, 0.598, 0.590, 0.589, 0.587, 0.586],
     ("after epoch 4: plateau", "after epoch 6: plateau"), 8),
    # steady gains of 2 pp: the milestones drop the lr after epochs 6 and 8, and the run never converges
    ([0.9, 0.88, 0.86, 0.84, 0.82, 0.80, 0.78, 0.76, 0.74, 0.72],
     ("after epoch 6: milestone", "after epoch 8: milestone"), None),
]


@pytest.mark.parametrize(("errors", "why", "converged_after"), PLATEAUS)
def test_the_plateau_rule_on_hand_made_curves(errors: list[float], why: tuple[str, ...], converged_after) -> None:
    state = PlateauRule(patience=2, delta_pp=0.5, drops=2).state(errors, milestones=(6, 8))
    assert state.why == why and state.drops == len(why) and state.converged_after == converged_after


def test_a_run_that_converges_stops_there_whatever_comes_after() -> None:
    rule = PlateauRule(patience=1, delta_pp=0.5, drops=0)  # no drops: the first plateau is convergence
    assert rule.state([0.5, 0.499]).converged_after == 2
    assert rule.state([0.5, 0.499, 0.1]).converged_after == 2


def test_a_bad_plateau_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="plateau rule"):
        PlateauRule(patience=0)
    assert "0.5 pp" in PlateauRule().describe()


def test_the_seed_interval_is_students_t_over_the_per_seed_deltas() -> None:
    # Deltas 1, 2, 3 pp: mean 2, sample std 1, n 3; t(0.975, 2 dof) = 4.302653 (any t table).
    low, high = seed_interval([1.0, 2.0, 3.0])
    half = 4.302653 / 3**0.5
    assert (low, high) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    assert seed_interval([1.0]) is None
