"""Known answers for ddpbench.stats, checked against scipy.stats and numpy (and by hand)."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from ddpbench import stats

T975_2 = 4.302652729911275  # t(0.975, 2)


def reference_interval(values, confidence=0.95):
    """scipy.stats.t.interval around the mean with the standard error sd (n - 1) / sqrt(n), from numpy."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    sem = np.std(values, ddof=1) / math.sqrt(n)
    return sp.t.interval(confidence, n - 1, loc=np.mean(values), scale=sem)


@pytest.mark.parametrize(
    "values",
    [[1.5, 2.0, 1.5], [12.0, 10.0, 9.0, 11.5], [0.1, 0.4], np.linspace(3.0, 7.0, 11), [-2.0, 5.0, 1.0, 0.0, 3.5]],
)
def test_ci95_is_scipys_t_interval(values):
    assert stats.ci95(values) == pytest.approx(reference_interval(values), rel=1e-12)


def test_ci95_by_hand():
    """1.5, 2, 1.5: mean 5/3, sd (n - 1) sqrt(1/12), sd / sqrt(3) = 1/6."""
    low, high = stats.ci95([1.5, 2.0, 1.5])
    assert (low, high) == pytest.approx((5 / 3 - T975_2 / 6, 5 / 3 + T975_2 / 6), rel=1e-9)


def test_t_interval_at_another_confidence():
    values = [3.0, 4.5, 4.0, 5.5]
    assert stats.t_interval(values, 0.9) == pytest.approx(reference_interval(values, 0.9), rel=1e-12)
    assert stats.t_interval(values, 0.9)[1] < stats.ci95(values)[1]


def test_ci95_leaves_nan_out_and_needs_two_values():
    assert stats.ci95([1.0, math.nan, 2.0, 3.0]) == pytest.approx(reference_interval([1.0, 2.0, 3.0]), rel=1e-12)
    for few in ([], [4.0], [math.nan, 4.0], [math.nan, math.nan]):
        low, high = stats.ci95(few)
        assert math.isnan(low) and math.isnan(high)


def test_ci95_of_identical_values_is_the_value():
    """scipy gives NaN for a zero scale; the interval of identical values is the value itself."""
    assert stats.ci95([2.5, 2.5, 2.5]) == (2.5, 2.5)
    with np.errstate(invalid="ignore"):
        assert all(math.isnan(v) for v in sp.t.interval(0.95, 2, loc=2.5, scale=0.0))


def test_ci95_takes_any_iterable():
    import pandas as pd

    values = [12.0, 10.0, 9.0]
    assert stats.ci95(pd.Series(values)) == stats.ci95(np.array(values)) == stats.ci95(iter(values))


def test_paired_ratio_and_difference_are_numpys_with_nan():
    run, base = [3.0, 5.0, math.nan, 8.0], [2.0, 4.0, 1.0, math.nan]
    np.testing.assert_array_equal(stats.paired_ratio(run, base), np.divide(run, base))
    np.testing.assert_array_equal(stats.paired_difference(run, base), np.subtract(run, base))
    assert stats.paired_ratio(run, base)[:2].tolist() == [1.5, 1.25]
    assert stats.paired_difference(run, base)[:2].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "speedup, world_size, expected",
    [
        (1.5, 2, 1 / 3),  # (2/3 - 1/2) / (1/2)
        (5 / 3, 2, 0.2),  # (0.6 - 0.5) / 0.5
        (4.0, 4, 0.0),  # linear speedup: no serial fraction
        (1.0, 8, 1.0),  # no speedup at all: everything serial
        (1 / (0.1 + 0.9 / 8), 8, 0.1),  # Amdahl's speedup with f = 0.1 gives back f
    ],
)
def test_karp_flatt_known_values(speedup, world_size, expected):
    assert stats.karp_flatt(speedup, world_size) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("speedup, world_size", [(1.0, 1), (2.0, 0), (math.nan, 2), (math.inf, 2), (0.0, 2), (-1, 4)])
def test_karp_flatt_is_nan_where_undefined(speedup, world_size):
    assert math.isnan(stats.karp_flatt(speedup, world_size))


def test_amdahl_speedup_is_the_law():
    w = np.array([1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(stats.amdahl_speedup(0.2, w), 1 / (0.2 + 0.8 / w), rtol=1e-15)
    np.testing.assert_allclose(stats.amdahl_speedup(0.0, w), w, rtol=1e-15)
    np.testing.assert_allclose(stats.amdahl_speedup(1.0, w), np.ones(4), rtol=1e-15)


@pytest.mark.parametrize("serial_fraction", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_amdahl_fit_recovers_the_serial_fraction_of_exact_data(serial_fraction):
    world_sizes = [1, 2, 4, 8, 16]
    speedups = stats.amdahl_speedup(serial_fraction, world_sizes)
    assert stats.amdahl_fit(world_sizes, speedups) == pytest.approx(serial_fraction, abs=1e-4)


def test_amdahl_fit_is_least_squares():
    """Noisy speedups: the fit's squared error is no larger than at any f of a fine grid (numpy brute force)."""
    world_sizes, speedups = np.array([2.0, 4.0, 8.0]), np.array([1.8, 2.9, 4.6])
    fitted = stats.amdahl_fit(world_sizes, speedups)
    grid = np.linspace(0.0, 1.0, 100_001)[:, None]
    errors = np.sum((1 / (grid + (1 - grid) / world_sizes) - speedups) ** 2, axis=1)
    assert fitted == pytest.approx(grid[np.argmin(errors), 0], abs=1e-4)
    fitted_error = np.sum((stats.amdahl_speedup(fitted, world_sizes) - speedups) ** 2)
    assert fitted_error <= errors.min() + 1e-9


def test_amdahl_fit_ignores_world_size_one_and_nan():
    world_sizes = [1, 2, 4, 8]
    speedups = list(stats.amdahl_speedup(0.3, world_sizes))
    assert stats.amdahl_fit(world_sizes, [5.0, *speedups[1:]]) == pytest.approx(0.3, abs=1e-4)
    assert stats.amdahl_fit([*world_sizes, 16], [*speedups, math.nan]) == pytest.approx(0.3, abs=1e-4)
    assert stats.amdahl_fit([1, 1], [1.0, 1.0]) is None
    assert stats.amdahl_fit([1, 2, 4], [1.0, math.nan, math.nan]) is None
    assert stats.amdahl_fit([], []) is None
