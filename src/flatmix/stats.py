"""The report's statistics over seeds: a cell's mean with its 95% t-interval, and a claim's difference
between cells with its 95% Welch interval. Seeds are the only repetition flatmix makes, so an interval
says how far seed-to-seed noise alone could move a number; nothing about other sources of difference
from the paper (data, hardware, code).

A claim's difference is a contrast, a sum of cells' means with coefficients +1 or -1 (two cells for "A
beats B", four for "the gain grows with epochs"), its interval Welch's: each cell's variance of the mean
added, its degrees of freedom by Welch-Satterthwaite, so cells of unequal spread and n are fine.
"""

import math
import statistics

from scipy import stats

CONFIDENCE = 0.95


def mean_interval(values):
    """(mean, half-width of its 95% t-interval) of a cell's values over seeds; half-width None for n < 2."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None
    return mean, _t(n - 1) * statistics.stdev(values) / math.sqrt(n)


def contrast_interval(terms):
    """(estimate, low, high) of sum(coefficient * mean) over terms [(coefficient, values)], or (estimate,
    None, None) when any term has fewer than 2 values (no variance to estimate). Values alike on every
    seed give a zero-width interval."""
    estimate = sum(c * statistics.fmean(v) for c, v in terms)
    if any(len(v) < 2 for _, v in terms):
        return estimate, None, None
    parts = [c * c * statistics.variance(v) / len(v) for c, v in terms]
    se2 = sum(parts)
    if se2 == 0:
        return estimate, estimate, estimate
    df = se2 * se2 / sum(p * p / (len(v) - 1) for p, (_, v) in zip(parts, terms, strict=False))
    half = _t(df) * math.sqrt(se2)
    return estimate, estimate - half, estimate + half


def verdict(sign, low, high):
    """reproduced (the interval excludes 0 on the side of `sign`, the paper's: +1 or -1), opposite (it
    excludes 0 on the other side) or inconclusive (it spans 0, or there is none)."""
    if low is None or low <= 0 <= high:
        return "inconclusive"
    return "reproduced" if (low > 0) == (sign > 0) else "opposite"


def _t(df):
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))
