"""The summary's statistics, as pure functions of numbers (no DataFrames): Student's t intervals
of a mean, the geometric mean of ratios with its interval on the log scale, pooled rates, paired
ratios and differences, the paired t-test, Holm's correction, the Karp-Flatt metric and the
least-squares Amdahl fit.

Missing values are NaN: an estimate leaves them out, a paired value is NaN where either side is.
An estimate carries its n; below MIN_INTERVAL_N values it has no interval (and no test): a t
interval of two values is +- 12.7 standard errors wide, which says nothing.
tests/test_stats.py checks each against scipy.stats and numpy on known answers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from functools import cache
from typing import NamedTuple

import numpy as np

# scipy is imported where a function computes with it: `import scipy.stats` takes seconds, and the
# jobs that import this module for its names and labels only (bundle, report) never pay for it.

# Fewest values an interval (or a test) is computed from.
MIN_INTERVAL_N = 3
CONFIDENCE = 0.95
RATIO_METHOD = "geometric mean, with the 95 % Student's t interval of the mean log ratio (exponentiated)"
MEAN_METHOD = "arithmetic mean, with the 95 % Student's t interval of the mean"
RATIO_TEST = "paired t-test of the log ratios against 0 (scipy.stats.ttest_rel of the logs)"
DIFFERENCE_TEST = "paired t-test of the differences against 0 (scipy.stats.ttest_rel)"
CORRECTION = "Holm's step-down correction across the table's tested cells"
WELCH_RATIO_TEST = (
    "Welch's t-test of the log values (scipy.stats.ttest_ind, equal_var=False), its interval exponentiated: "
    "runs not paired by seed"
)
WELCH_DIFFERENCE_TEST = "Welch's t-test of the values (scipy.stats.ttest_ind, equal_var=False): runs not paired by seed"


class Estimate(NamedTuple):
    """A value with its interval (NaN below MIN_INTERVAL_N values) and the n it is computed from."""

    value: float
    low: float
    high: float
    n: int


def present(values: Iterable[float]) -> np.ndarray:
    """The values that are not NaN, as floats."""
    values = np.asarray(list(values), dtype=float)
    return values[~np.isnan(values)]


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean: mean +- t((1 + confidence) / 2, n - 1) * sd / sqrt(n), with sd
    the sample standard deviation (n - 1), over the values that are not NaN.

    (NaN, NaN) for fewer than two values; (mean, mean) when they are all equal (scipy would give NaN)."""
    from scipy import stats

    values = np.asarray(list(values), dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (math.nan, math.nan)
    mean = values.mean()
    sem = stats.sem(values)
    if sem == 0:  # identical values: scipy returns NaN for a zero scale
        return (mean, mean)
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def ci95(values: Iterable[float]) -> tuple[float, float]:
    """The 95 % Student's t interval of the mean across seeds (t_interval at 0.95)."""
    return t_interval(values, 0.95)


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Arithmetic mean of the values that are not NaN, with its Student's t interval from
    MIN_INTERVAL_N values on (NaN below); a mean of NaN without any value."""
    values = present(values)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    low, high = t_interval(values, confidence) if n >= MIN_INTERVAL_N else (math.nan, math.nan)
    return Estimate(mean, low, high, n)


def geometric_mean_interval(ratios: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Geometric mean of the positive ratios that are not NaN (scipy.stats.gmean), with the t interval
    of their mean log, exponentiated: always positive, and the interval of 1 / r is that of r inverted.
    No interval below MIN_INTERVAL_N ratios."""
    from scipy import stats

    ratios = present(ratios)
    ratios = ratios[ratios > 0]
    if not len(ratios):
        return Estimate(math.nan, math.nan, math.nan, 0)
    logs = mean_interval(np.log(ratios), confidence)
    return Estimate(float(stats.gmean(ratios)), math.exp(logs.low), math.exp(logs.high), logs.n)


def pooled_rate(amounts: Iterable[float], durations: Iterable[float]) -> float:
    """Total amount over total duration (images / s of a setting over all its runs): the harmonic mean
    of the per-run rates weighted by each run's amount; NaN without any duration."""
    total = float(np.sum(np.asarray(list(durations), dtype=float)))
    return float(np.sum(np.asarray(list(amounts), dtype=float))) / total if total > 0 else math.nan


def paired_t_test(values: Iterable[float], baseline: Iterable[float], log: bool = False) -> tuple[float, int]:
    """(two-sided p-value, n) of the paired t-test (scipy.stats.ttest_rel) of values against baseline,
    over the pairs where both are present; with ``log`` on their logarithms (a test of the log ratio).
    NaN below MIN_INTERVAL_N pairs. Identical differences: p = 0 if they are not 0, else 1."""
    from scipy import stats

    a, b = np.asarray(list(values), dtype=float), np.asarray(list(baseline), dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if log:
        a, b = np.log(a), np.log(b)
    n = len(a)
    if n < MIN_INTERVAL_N:
        return math.nan, n
    differences = a - b
    if np.ptp(differences) == 0:  # scipy divides by a zero spread
        return (0.0 if differences[0] != 0 else 1.0), n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical values: scipy warns, still answers
        return float(stats.ttest_rel(a, b).pvalue), n


def welch_difference(
    values: Iterable[float], reference: Iterable[float], confidence: float = CONFIDENCE
) -> tuple[Estimate, float]:
    """Difference of the means of two unpaired samples (values - reference, NaN left out) with Welch's
    interval (Satterthwaite's degrees of freedom), and Welch's two-sided p-value; n is the smaller
    sample's size. No interval or test with fewer than MIN_INTERVAL_N values on either side."""
    from scipy import stats

    a, b = present(values), present(reference)
    n = min(len(a), len(b))
    difference = float(a.mean() - b.mean()) if n else math.nan
    if n < MIN_INTERVAL_N:
        return Estimate(difference, math.nan, math.nan, n), math.nan
    if a.var() == 0 and b.var() == 0:  # scipy divides by a zero spread
        return Estimate(difference, difference, difference, n), (0.0 if difference != 0 else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical values: scipy warns, still answers
        result = stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(confidence)
    return Estimate(difference, float(interval.low), float(interval.high), n), float(result.pvalue)


def welch_ratio(
    values: Iterable[float], reference: Iterable[float], confidence: float = CONFIDENCE
) -> tuple[Estimate, float]:
    """The ratio of the geometric means of two unpaired samples of positive values, with Welch's
    interval of the difference of their mean logs, exponentiated, and Welch's p-value of the logs."""
    a, b = present(values), present(reference)
    logs, p = welch_difference(np.log(a[a > 0]), np.log(b[b > 0]), confidence)
    return Estimate(*(math.exp(v) if math.isfinite(v) else math.nan for v in logs[:3]), logs.n), p


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest of m is max over j <= i of
    (m - j + 1) p_(j), capped at 1. NaN stays NaN and is not one of the m tests."""
    p = np.asarray(list(pvalues), dtype=float)
    adjusted = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if not m:
        return adjusted
    order = tested[np.argsort(p[tested], kind="stable")]
    steps = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def paired_ratio(values: Iterable[float], baseline: Iterable[float]) -> np.ndarray:
    """Element by element values / baseline, for values paired by seed (NaN where either is NaN)."""
    return np.asarray(values, dtype=float) / np.asarray(baseline, dtype=float)


def paired_difference(values: Iterable[float], baseline: Iterable[float]) -> np.ndarray:
    """Element by element values - baseline, for values paired by seed (NaN where either is NaN)."""
    return np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)


def karp_flatt(speedup: float, world_size: int) -> float:
    """The Karp-Flatt metric, the experimentally determined serial fraction
    e = (1/S - 1/W) / (1 - 1/W) of speedup S on W workers; NaN at W <= 1 or for a speedup that is
    not a positive finite number."""
    if world_size <= 1 or not math.isfinite(speedup) or speedup <= 0:
        return math.nan
    return (1.0 / speedup - 1.0 / world_size) / (1.0 - 1.0 / world_size)


def amdahl_speedup(serial_fraction: float, world_sizes: Iterable[float]) -> np.ndarray:
    """Amdahl's law: S(W) = 1 / (f + (1 - f) / W) for serial fraction f."""
    w = np.asarray(world_sizes, dtype=float)
    return 1.0 / (serial_fraction + (1.0 - serial_fraction) / w)


def amdahl_fit(world_sizes: Iterable[float], speedups: Iterable[float]) -> float | None:
    """Serial fraction f of Amdahl's law S(W) = 1 / (f + (1 - f) / W): least squares on S over the
    world sizes above 1 with a finite speedup, minimised over f in [0, 1] by bounded Brent
    (scipy.optimize.minimize_scalar); None without such a point."""
    from scipy.optimize import minimize_scalar

    w = np.asarray(world_sizes, dtype=float)
    s = np.asarray(speedups, dtype=float)
    keep = np.isfinite(s) & (w > 1)
    if not keep.any():
        return None
    w, s = w[keep], s[keep]
    result = minimize_scalar(lambda f: np.sum((amdahl_speedup(f, w) - s) ** 2), bounds=(0.0, 1.0), method="bounded")
    return float(result.x)


@cache
def expected_max_normal(n: int) -> float:
    """E[max of n independent standard normals]: 0 for one, 1 / sqrt(pi) for two, about 3.2 for 1024."""
    from scipy.integrate import quad

    if n <= 1:
        return 0.0

    def density(x: float) -> float:  # x times the max's density; math's, not scipy.stats': 100x faster a point
        return x * n * math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * (0.5 * math.erfc(-x / math.sqrt(2))) ** (n - 1)

    return float(quad(density, -math.inf, math.inf)[0])
