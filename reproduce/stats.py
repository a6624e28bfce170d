"""Paired effects with bootstrap intervals, and the rule that says when a training run has converged.

An effect compares two variants (or two views of one variant) on the same test images, seed by seed: per seed and
image, the difference of the 0/1 top-1 errors. Its estimate is the mean difference in percentage points; its 95%
interval comes from a bootstrap that resamples seeds and test images (with replacement, independently), so it
carries both sources of noise the issue names: test-image sampling and training seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sppnet.core.errors import InvalidInput

DRAWS = 10_000
LEVEL = 0.95
CHUNK = 256  # resamples drawn at once (memory: CHUNK x images counts)


@dataclass(frozen=True)
class Interval:
    """A paired effect in percentage points: the mean and its bootstrap interval, with how it was drawn."""

    mean: float
    low: float
    high: float
    seeds: int
    images: int
    draws: int
    level: float = LEVEL

    @property
    def verdict(self) -> str:
        """'appears' when the whole interval is below 0 (fewer errors), 'reversed' when above, else 'not
        established' (the interval includes 0). One seed never establishes anything: its interval cannot hold
        the seed-to-seed spread."""
        if self.seeds < 2:
            return "not established"
        if self.high < 0:
            return "appears"
        if self.low > 0:
            return "reversed"
        return "not established"

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "seeds": self.seeds,
            "images": self.images,
            "draws": self.draws,
            "level": self.level,
            "verdict": self.verdict,
        }


def paired_bootstrap(
    measured: np.ndarray, reference: np.ndarray, *, draws: int = DRAWS, level: float = LEVEL, seed: int = 0
) -> Interval:
    """The mean of `measured - reference` in pp, and its percentile bootstrap interval.

    Args:
        measured, reference: (seeds, images) 0/1 errors of the two sides on the same images, seed by seed.
        draws: bootstrap resamples; each draws seeds and images with replacement, independently.
    """
    m, r = np.asarray(measured, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape or m.ndim != 2 or min(m.shape) < 1:
        raise InvalidInput(f"paired_bootstrap needs two (seeds, images) arrays of one shape; got {m.shape}, {r.shape}")
    if draws < 1 or not 0 < level < 1:
        raise InvalidInput(f"paired_bootstrap needs draws >= 1 and 0 < level < 1; got {draws}, {level}")
    diff = 100.0 * (m - r)
    seeds, images = diff.shape
    rng = np.random.default_rng(seed)
    # A resample's mean over (resampled seeds) x (resampled images) = sum_ij c_i d_j D_ij / (S N), where c and d
    # count how often each seed and image was drawn: matrix products instead of a gather per draw, in chunks.
    means = np.empty(draws)
    for start in range(0, draws, CHUNK):
        count = min(CHUNK, draws - start)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=count)
        image_counts = rng.multinomial(images, np.full(images, 1.0 / images), size=count)
        means[start : start + count] = ((seed_counts @ diff) * image_counts).sum(axis=1) / (seeds * images)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(diff.mean()), float(low), float(high), seeds, images, draws, level)


@dataclass(frozen=True)
class ConvergenceRule:
    """When a run stops: test top-1 error improved by less than `min_gain_pp` over the last `window` of its epochs
    (a fraction of the epochs run so far), once at least `min_epochs` ran; otherwise at the epoch budget."""

    min_gain_pp: float = 0.5
    window: float = 0.25
    min_epochs: int = 8

    def __post_init__(self) -> None:
        if self.min_gain_pp < 0 or not 0 < self.window <= 1 or self.min_epochs < 2:
            raise InvalidInput(
                f"convergence rule needs min_gain_pp >= 0, 0 < window <= 1 and min_epochs >= 2; got {self}"
            )

    def converged(self, test_errors: Sequence[float]) -> bool:
        """Whether a run whose per-epoch test errors (fractions) are `test_errors` has converged."""
        epochs = len(test_errors)
        if epochs < self.min_epochs:
            return False
        span = max(1, round(self.window * epochs))
        before = min(test_errors[: epochs - span])  # the best error before the window
        return 100.0 * (before - min(test_errors[epochs - span :])) < self.min_gain_pp

    def describe(self) -> str:
        return (
            f"test top-1 error improved by less than {self.min_gain_pp:g} pp over the last "
            f"{100 * self.window:g}% of the epochs run (at least {self.min_epochs})"
        )
