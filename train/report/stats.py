"""Uncertainty of the figures tt-report quotes: a seed mean with its 95% confidence interval, and a paired difference
(the same seeds, hence the same labelled subsets, under two setups) with its own interval.

The interval is Student's t over seeds, mean +- t_{0.975, n-1} s / sqrt(n) (s the sample standard deviation): with
3 seeds t is 4.30, so an interval is wide unless the seeds agree. It treats the seeds as a sample of the labelled
subsets a researcher could have drawn, which is what a seed changes here (train/run/sampling.py).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values and the half-width of its 95% t interval (NaN for fewer than two values)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self, signed: bool = False) -> str:
        """'70.12 ± 1.53' (or '+2.40 ± 0.61'); '70.12 (1 seed)' without an interval."""
        mean = f"{self.mean:+.2f}" if signed else f"{self.mean:.2f}"
        return f"{mean} ± {self.half_width:.2f}" if math.isfinite(self.half_width) else f"{mean} (n={self.n})"


def t_quantile(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom."""
    return float(student_t.ppf(0.5 + CONFIDENCE / 2, df))


def mean_interval(values: list[float]) -> Interval:
    """The mean of `values` with its 95% t interval."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, n)
    return Interval(mean, t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n), n)


@dataclass(frozen=True)
class Paired:
    """`other - reference` on the seeds both have: the mean difference with its interval, and how many are > 0."""

    difference: Interval
    positive: int
    seeds: tuple[int, ...]
    deltas: tuple[float, ...] = ()  # per seed, in the order of `seeds`


def paired_difference(other: dict[int, float], reference: dict[int, float]) -> Paired | None:
    """Per-seed differences other[seed] - reference[seed] over the common seeds (None when there is none)."""
    seeds = tuple(sorted(set(other) & set(reference)))
    if not seeds:
        return None
    deltas = [other[s] - reference[s] for s in seeds]
    return Paired(mean_interval(deltas), sum(d > 0 for d in deltas), seeds, tuple(deltas))
