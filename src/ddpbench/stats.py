"""The summary's statistics, as pure functions of numbers (no DataFrames): Student's t intervals
of a mean, paired ratios and differences, the Karp-Flatt metric and the least-squares Amdahl fit.

Missing values are NaN: an interval leaves them out, a paired value is NaN where either side is.
tests/test_stats.py checks each against scipy.stats and numpy on known answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import stats
from scipy.optimize import minimize_scalar


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean: mean +- t((1 + confidence) / 2, n - 1) * sd / sqrt(n), with sd
    the sample standard deviation (n - 1), over the values that are not NaN.

    (NaN, NaN) for fewer than two values; (mean, mean) when they are all equal (scipy would give NaN)."""
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
    w = np.asarray(world_sizes, dtype=float)
    s = np.asarray(speedups, dtype=float)
    keep = np.isfinite(s) & (w > 1)
    if not keep.any():
        return None
    w, s = w[keep], s[keep]
    result = minimize_scalar(lambda f: np.sum((amdahl_speedup(f, w) - s) ** 2), bounds=(0.0, 1.0), method="bounded")
    return float(result.x)
