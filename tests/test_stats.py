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


# --------------------------------------------------------------------------- estimates with their n


def test_mean_interval_is_the_t_interval_with_its_n_from_three_values():
    values = [12.0, 10.0, 9.0, math.nan]
    estimate = stats.mean_interval(values)
    assert estimate.value == pytest.approx(31 / 3) and estimate.n == 3
    assert (estimate.low, estimate.high) == pytest.approx(reference_interval([12.0, 10.0, 9.0]), rel=1e-12)
    for few, n in (([4.0, 5.0], 2), ([4.0], 1)):
        estimate = stats.mean_interval(few)
        assert estimate.n == n and estimate.value == pytest.approx(sum(few) / n)
        assert math.isnan(estimate.low) and math.isnan(estimate.high)  # no t(1) interval of +- 12.7 se
    assert stats.mean_interval([]).n == 0 and math.isnan(stats.mean_interval([]).value)


def test_geometric_mean_interval_is_scipys_gmean_and_the_t_interval_of_the_logs():
    ratios = [1.5, 2.0, 1.5, 1.2]
    estimate = stats.geometric_mean_interval(ratios)
    assert estimate.value == pytest.approx(sp.gmean(ratios), rel=1e-12) and estimate.n == 4
    low, high = reference_interval(np.log(ratios))
    assert (estimate.low, estimate.high) == pytest.approx((math.exp(low), math.exp(high)), rel=1e-12)
    assert estimate.low < estimate.value < estimate.high and estimate.low > 0


def test_geometric_mean_interval_by_hand_and_inverted():
    """1.5, 2, 1.5: gmean 4.5 ** (1/3); the logs' sd / sqrt(3) is ln(4/3) / 3. The interval of 1 / r is
    that of r inverted, so a time ratio and its speedup agree (an arithmetic interval can cross 0)."""
    estimate = stats.geometric_mean_interval([1.5, 2.0, 1.5])
    factor = (4 / 3) ** (T975_2 / 3)
    assert tuple(estimate[:3]) == pytest.approx((4.5 ** (1 / 3), 4.5 ** (1 / 3) / factor, 4.5 ** (1 / 3) * factor))
    inverse = stats.geometric_mean_interval([1 / 1.5, 1 / 2.0, 1 / 1.5])
    assert (inverse.value, inverse.low, inverse.high) == pytest.approx(
        (1 / estimate.value, 1 / estimate.high, 1 / estimate.low), rel=1e-12
    )


def test_geometric_mean_interval_of_few_or_no_ratios():
    two = stats.geometric_mean_interval([1.0, 4.0, math.nan])
    assert (two.value, two.n) == (2.0, 2) and math.isnan(two.low) and math.isnan(two.high)
    none = stats.geometric_mean_interval([math.nan])
    assert none.n == 0 and math.isnan(none.value)
    assert stats.geometric_mean_interval([1.0, 1.0, 1.0])[:3] == (1.0, 1.0, 1.0)


def test_pooled_rate_is_the_harmonic_mean_of_equal_amounts():
    rates = np.array([3072.0, 1024.0, 2048.0])
    assert stats.pooled_rate([6144] * 3, 6144 / rates) == pytest.approx(sp.hmean(rates), rel=1e-12)
    assert stats.pooled_rate([100, 300], [1.0, 2.0]) == pytest.approx(400 / 3)  # total over total
    assert math.isnan(stats.pooled_rate([], []))


# --------------------------------------------------------------------------- tests and their correction


def test_paired_t_test_is_scipys_ttest_rel():
    a, b = [12.0, 10.0, 9.0, 11.0], [8.0, 5.0, 6.0, 7.5]
    p, n = stats.paired_t_test(a, b)
    assert n == 4 and p == pytest.approx(sp.ttest_rel(a, b).pvalue, rel=1e-12)
    p, _ = stats.paired_t_test(a, b, log=True)
    assert p == pytest.approx(sp.ttest_1samp(np.log(np.divide(a, b)), 0.0).pvalue, rel=1e-12)


def test_paired_t_test_by_hand():
    """Differences 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3) with 2 degrees of freedom."""
    p, n = stats.paired_t_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert n == 3 and p == pytest.approx(2 * sp.t.sf(2 * math.sqrt(3), 2), rel=1e-12)


def test_paired_t_test_needs_three_pairs_and_handles_no_spread():
    p, n = stats.paired_t_test([1.0, 2.0, math.nan, 4.0], [0.5, math.nan, 1.0, 3.0])
    assert n == 2 and math.isnan(p)
    assert stats.paired_t_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == (0.0, 3)  # the same difference each time
    assert stats.paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (1.0, 3)  # no difference at all


def test_holm_by_hand():
    """m = 4: sorted 0.005, 0.01, 0.03, 0.04 step to 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    then max(0.06, 1 x 0.04) = 0.06."""
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_holm_more_examples_by_hand():
    """The k-th smallest of m times m - k + 1, made non-decreasing, capped at 1: 5 x 0.01, 4 x 0.02,
    3 x 0.03, then 0.09 holds; 3 x 0.2, then 2 x 0.5 and 0.9 capped at 1."""
    p = [0.01, 0.02, 0.03, 0.04, 0.05]
    np.testing.assert_allclose(stats.holm(p), [0.05, 0.08, 0.09, 0.09, 0.09], rtol=1e-12)
    np.testing.assert_allclose(stats.holm([0.2, 0.5, 0.9]), [0.6, 1.0, 1.0], rtol=1e-12)


def test_holm_leaves_nan_out_of_the_family():
    adjusted = stats.holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert stats.holm([]).shape == (0,) and math.isnan(stats.holm([math.nan])[0])


def test_welch_against_scipy():
    a, b = np.array([10.0, 12.5, 11.0, 13.0]), np.array([8.0, 9.5, 9.0])
    estimate, p = stats.welch_difference(a, b)
    reference = sp.ttest_ind(a, b, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert estimate.value == pytest.approx(a.mean() - b.mean())
    assert (estimate.low, estimate.high, p) == pytest.approx((interval.low, interval.high, reference.pvalue))
    # Satterthwaite by hand: the interval's half-width is t(0.975, df) times the standard error.
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert estimate.high - estimate.value == pytest.approx(sp.t.ppf(0.975, df) * math.sqrt(va + vb))
    ratio, p_log = stats.welch_ratio(a, b)
    logs = sp.ttest_ind(np.log(a), np.log(b), equal_var=False)
    assert ratio.value == pytest.approx(sp.gmean(a) / sp.gmean(b)) and p_log == pytest.approx(logs.pvalue)
    assert (ratio.low, ratio.high) == pytest.approx(tuple(np.exp(logs.confidence_interval(0.95))))
    assert math.isnan(stats.welch_difference([1.0], [2.0, 3.0])[1])  # one value: no test
