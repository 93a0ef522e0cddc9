"""ddpbench.allreduce: the all-reduce cost model, its fit and the named networks."""

from __future__ import annotations

import numpy as np
import pytest
from predictfactory import SWEEP, synthetic_times

from ddpbench import allreduce


def test_ring_formula_by_hand():
    # W = 4, alpha = 10 us, B = 1e9 B/s, n = 1e6 B:
    # 2 (4 - 1) 10e-6 = 60e-6 s; 2 (4 - 1) / 4 * 1e6 / 1e9 = 1.5e-3 s; total 1.56e-3 s.
    assert allreduce.allreduce_seconds(1e6, 4, 10e-6, 1e9) == pytest.approx(1.56e-3, rel=1e-12)
    # W = 2, alpha = 50 us, B = 2e9 B/s, n = 8e6 B: 2 * 50e-6 + 1 * 8e6 / 2e9 = 1e-4 + 4e-3 = 4.1e-3 s.
    assert allreduce.allreduce_seconds(8e6, 2, 50e-6, 2e9) == pytest.approx(4.1e-3, rel=1e-12)
    assert allreduce.allreduce_seconds(8e6, 1, 50e-6, 2e9) == 0.0  # one rank: no collective


def test_fit_recovers_latency_and_bandwidth():
    fit = allreduce.fit_collective(SWEEP, synthetic_times(30e-6, 1.5e9, 4, noise=0.03), 4)
    assert fit.alpha_s == pytest.approx(30e-6, rel=0.05)
    assert fit.bandwidth_bytes_s == pytest.approx(1.5e9, rel=0.05)
    # Relative least squares: the 8-byte message (pure latency) is fitted as well as the 64 MiB one.
    assert fit.seconds(8, 4) == pytest.approx(6 * 30e-6, rel=0.05)
    assert fit.max_rel_error < 0.06 and fit.median_rel_error < 0.04
    assert fit.formula.startswith("T(n, W) = c + 2 (W - 1) alpha + 2 (W - 1) / W * n / B")
    assert fit.constant_s == 0.0  # one world size: c and alpha are one number, and c is left at 0


def test_fit_is_not_pulled_by_a_few_outlying_sizes():
    # A token bucket lets a mid-size message through at twice the rate (its burst), and a neighbour
    # slows one small message down: the other eleven sizes still give alpha and B.
    times = synthetic_times(30e-6, 1.5e9, 2)
    times[5] *= 3.0  # 8 KiB
    times[8] *= 0.5  # 512 KiB
    fit = allreduce.fit_collective(SWEEP, times, 2)
    assert fit.alpha_s == pytest.approx(30e-6, rel=0.05)
    assert fit.bandwidth_bytes_s == pytest.approx(1.5e9, rel=0.05)
    assert fit.max_rel_error == pytest.approx(1.0, abs=0.1)  # the outlier is reported, not hidden: model = 2 x measured


def test_fit_across_world_sizes_and_without_a_collective():
    sizes = SWEEP + SWEEP + [8, 1024]
    times = synthetic_times(20e-6, 3e9, 2) + synthetic_times(20e-6, 3e9, 8) + [1e-3, 1e-3]
    fit = allreduce.fit_collective(sizes, times, [2] * len(SWEEP) + [8] * len(SWEEP) + [1, 1])
    assert (fit.alpha_s, fit.bandwidth_bytes_s) == (pytest.approx(20e-6, rel=1e-6), pytest.approx(3e9, rel=1e-6))
    assert fit.world_sizes == (2, 8)  # the one-rank timings were dropped
    with pytest.raises(ValueError, match="W = 1 there is no collective"):
        allreduce.fit_collective([8, 1024], [1e-5, 2e-5], 1)


def test_named_networks_add_latency_and_cap_bandwidth():
    measured = allreduce.fit_collective(SWEEP, synthetic_times(30e-6, 2e9, 2), 2)
    slow = allreduce.network_fit(measured, bandwidth_gbit=1.0, latency_us=50)
    assert slow.alpha_s == pytest.approx(80e-6)
    assert slow.bandwidth_bytes_s == pytest.approx(1.25e8)
    fast = allreduce.network_fit(measured, bandwidth_gbit=100.0, latency_us=2)
    assert fast.bandwidth_bytes_s == pytest.approx(2e9)  # the host's own all-reduce is the bottleneck


def test_halving_doubling_and_tree_formulas_by_hand():
    # W = 8, alpha = 10 us, B = 1e9 B/s, n = 1e6 B, c = 5 us: log2 8 = 3.
    # halving-doubling: 5e-6 + 2 * 3 * 10e-6 + 2 * 7 / 8 * 1e-3 = 5e-6 + 60e-6 + 1.75e-3.
    assert allreduce.allreduce_seconds(1e6, 8, 10e-6, 1e9, "halving_doubling", 5e-6) == pytest.approx(1.815e-3)
    # tree: 5e-6 + 2 * 3 * (10e-6 + 1e-3) = 5e-6 + 6.06e-3.
    assert allreduce.allreduce_seconds(1e6, 8, 10e-6, 1e9, "tree", 5e-6) == pytest.approx(6.065e-3)
    with pytest.raises(ValueError, match="unknown all-reduce algorithm 'star'"):
        allreduce.allreduce_seconds(1e6, 8, 10e-6, 1e9, "star")


def timings(algorithm: str, worlds=(2, 4, 8), constant: float = 0.0, noise: float = 0.0):
    sizes = SWEEP * len(worlds)
    times = [t for w in worlds for t in synthetic_times(20e-6, 3e9, w, noise, w, algorithm, constant)]
    return sizes, times, [w for w in worlds for _ in SWEEP]


def test_across_world_sizes_the_per_call_constant_is_fitted():
    fit = allreduce.fit_collective(*timings("ring", constant=40e-6))
    assert fit.constant_s == pytest.approx(40e-6, rel=1e-4)
    assert (fit.alpha_s, fit.bandwidth_bytes_s) == (pytest.approx(20e-6, rel=1e-4), pytest.approx(3e9, rel=1e-4))


@pytest.mark.parametrize("algorithm", ["ring", "halving_doubling", "tree"])
def test_auto_picks_the_algorithm_the_timings_follow(algorithm):
    fit, quality = allreduce.choose_fit(*timings(algorithm, noise=0.02))
    assert fit.algorithm == algorithm
    assert [q["algorithm"] for q in quality if q["chosen"]] == [algorithm]


def test_at_one_world_size_the_algorithms_tie_and_the_ring_stays():
    # At W = 2 the ring and halving-doubling are one formula and the tree's B is half: no timing tells them apart.
    fit, quality = allreduce.choose_fit(*timings("tree", worlds=(2,), noise=0.02))
    assert fit.algorithm == "ring" and len(quality) == 3
    assert allreduce.choose_fit(*timings("tree", worlds=(2,)), requested="tree")[0].algorithm == "tree"


def test_a_bootstrap_sample_keeps_each_world_sizes_count():
    sizes, times, worlds = timings("ring")
    resampled = allreduce.resample_points(sizes, times, worlds, np.random.default_rng(0))
    assert sorted(resampled[2]) == sorted(worlds) and set(resampled[0]) <= set(sizes)
    assert resampled != (sizes, times, worlds)
