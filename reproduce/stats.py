"""Paired effects with bootstrap intervals, and the rule that drops the lr at plateaus and says when a run has
converged.

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


def seed_interval(per_seed: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student's t interval of the mean over seeds of per-seed deltas (pp): the seed-to-seed spread alone, a check
    on the bootstrap, whose resampling of 3 seeds is optimistic. None for fewer than two seeds."""
    from scipy.stats import t as student_t

    values = np.asarray(per_seed, dtype=np.float64)
    if len(values) < 2:
        return None
    half = float(student_t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return float(values.mean()) - half, float(values.mean()) + half


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
class PlateauRule:
    """The paper's schedule as a rule (PAPER.md section 4: lr divided by 10 "twice at plateaus"), and when a run has
    converged.

    A phase is the epochs at one lr. It ends at its plateau: the phase's best monitored error (validation top-1)
    has not improved by `delta_pp` over its last `patience` epochs (1 epoch after the first drop, since a lower lr
    moves the predictions less); at the latest it ends at the solver's next milestone. After `drops` drops, the next
    plateau means the run has converged and it stops; otherwise it stops at its epoch budget.
    """

    patience: int = 2
    delta_pp: float = 0.5
    drops: int = 2

    def __post_init__(self) -> None:
        if self.patience < 1 or self.delta_pp < 0 or self.drops < 0:
            raise InvalidInput(f"plateau rule needs patience >= 1, delta_pp >= 0 and drops >= 0; got {self}")

    def state(self, errors: Sequence[float], milestones: Sequence[int] = ()) -> PlateauState:
        """Where a run stands after epochs whose monitored errors (fractions) are `errors`: its lr drops so far,
        why each happened, and whether it has converged."""
        drops, start, why = 0, 0, []
        for epoch in range(len(errors)):
            phase = errors[start : epoch + 1]
            patience = self.patience if drops == 0 else 1
            plateau = len(phase) > patience and 100.0 * (min(phase[:-patience]) - min(phase)) < self.delta_pp
            if plateau and drops >= self.drops:
                return PlateauState(drops, tuple(why), epoch + 1)
            scheduled = drops < len(milestones) and epoch + 1 >= milestones[drops]
            if drops < self.drops and (plateau or scheduled):
                why.append(f"after epoch {epoch + 1}: {'plateau' if plateau else 'milestone'}")
                drops, start = drops + 1, epoch + 1
        return PlateauState(drops, tuple(why), None)

    def describe(self) -> str:
        return (
            f"lr / 10 when validation top-1 improves by less than {self.delta_pp:g} pp over {self.patience} epochs "
            f"(1 after the first drop), at the latest at each milestone; converged at the plateau after {self.drops} "
            "drops"
        )


@dataclass(frozen=True)
class PlateauState:
    """A run under a `PlateauRule`: its lr drops so far, why each happened, and the epoch count at which it
    converged (None while it has not)."""

    drops: int
    why: tuple[str, ...]
    converged_after: int | None


def monitored(history: Sequence[dict[str, Any]]) -> list[float]:
    """The per-epoch error a run's schedule watched: validation top-1 where it had a validation split, else test."""
    return [row["val_top1_err"] if "val_top1_err" in row else row["test_top1_err"] for row in history]
