"""Paired effects with bootstrap intervals, and the convergence rule, against hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sppnet.reproduce.stats import ConvergenceRule, Interval, paired_bootstrap


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


@pytest.mark.parametrize(
    ("errors", "converged"),
    [
        # 8 epochs, window 2: best before 0.60, best in the window 0.598 -> 0.2 pp < 0.5 pp: converged
        ([0.9, 0.8, 0.7, 0.65, 0.62, 0.60, 0.601, 0.598], True),
        # best in the window 0.58 -> 2 pp gain: still learning
        ([0.9, 0.8, 0.7, 0.65, 0.62, 0.60, 0.59, 0.58], False),
        # worse in the window than before: converged (no gain)
        ([0.9, 0.8, 0.7, 0.65, 0.62, 0.60, 0.61, 0.62], True),
        # too few epochs to judge, however flat
        ([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], False),
        # 12 epochs, window 3: best before 0.50, best in the window 0.496 -> 0.4 pp: converged
        ([0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.52, 0.51, 0.50, 0.499, 0.497, 0.496], True),
    ],
)
def test_the_convergence_rule_on_hand_made_curves(errors: list[float], converged: bool) -> None:
    assert ConvergenceRule(min_gain_pp=0.5, window=0.25, min_epochs=8).converged(errors) is converged


def test_a_bad_convergence_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="convergence rule"):
        ConvergenceRule(window=0.0)
    assert "0.5 pp" in ConvergenceRule().describe()
