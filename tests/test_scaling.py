"""ddpbench.scaling: the step model (co-location, the wait for the slowest rank, predicted steps) by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ddpbench import allreduce, scaling, stats


def link(alpha: float, bandwidth: float) -> allreduce.CollectiveFit:
    return allreduce.CollectiveFit("ring", alpha, bandwidth, "", 0.0, 0.0, 2, (2,))


def test_predicted_step_by_hand():
    profile = scaling.StepProfile(
        world_size=1, per_rank_batch=128, compute_s=0.05, data_s=0.01, other_s=0.0, hidden_fraction=0.5
    )
    # W = 2, one 4 MB bucket, alpha = 0, B = 1e9: busy = 2 (1) / 2 * 4e6 / 1e9 = 4e-3 s; half hidden: exposed 2e-3.
    # step = 0.01 + 0.05 + 0.002 = 0.062 s; throughput = 2 * 128 / 0.062 = 4129.03 samples/s;
    # against 128 / 0.06 = 2133.33 at W = 1: speedup 1.93548, efficiency 0.96774.
    row = scaling.predict_step(profile, 2, [4e6], link(0.0, 1e9), "per_worker", 128, baseline_throughput=128 / 0.06)
    assert row["comm_busy_s"] == pytest.approx(4e-3)
    assert row["step_time_s"] == pytest.approx(0.062)
    assert row["throughput_samples_s"] == pytest.approx(4129.032, rel=1e-6)
    assert (row["speedup"], row["efficiency"]) == (pytest.approx(1.935484, rel=1e-6), pytest.approx(0.967742, rel=1e-6))
    # Global batch 128 over 2 ranks: 64 each, so compute 0.025 s and data 0.005 s; step 0.025 + 0.005 + 0.002
    # = 0.032 s; throughput 128 / 0.032 = 4000 samples/s; speedup 4000 / 2133.33 = 1.875.
    row = scaling.predict_step(profile, 2, [4e6], link(0.0, 1e9), "global", 128, baseline_throughput=128 / 0.06)
    assert (row["per_rank_batch"], row["step_time_s"]) == (64, pytest.approx(0.032))
    assert row["speedup"] == pytest.approx(1.875)
    # A slow link: busy 4e6 / 1e7 = 0.4 s; half of it (0.2 s) would be hidden, but never more than the
    # 0.05 s of compute: exposed 0.35 s, step 0.01 + 0.05 + 0.35 = 0.41 s.
    row = scaling.predict_step(profile, 2, [4e6], link(0.0, 1e7), "per_worker", 128)
    assert row["step_time_s"] == pytest.approx(0.41)
    assert row["speedup"] is None  # no measured W = 1 given


def test_ranks_computing_together_by_hand():
    # commbench on a node: 2 ranks at once compute 1.1x as slowly as one alone and wait 0.05 of a step for the
    # slower; 4 at once, 1.25x, waiting 0.08 of a step.
    colocation = scaling.Colocation(((2, 1.1, 0.05), (4, 1.25, 0.08)))
    # Linear between the numbers timed; a node holds 4 ranks, the most timed on one.
    assert [colocation.slowdown(w) for w in (1, 2, 3, 4, 64)] == pytest.approx([1.0, 1.1, 1.175, 1.25, 1.25])
    # Reference W = 1: compute 0.1 s, no communication; one 4 MB bucket, alpha 0, B 1e9.
    measured = {1: scaling.Measured(1, 128, 1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 128 / 0.1)}
    profile = scaling.profile_from(measured, [4e6], link(0.0, 1e9), colocation)
    # One rank waits for nobody; the wait is commbench's at 4 ranks: 0.08 * 0.1 * 1.25 = 0.010 s at W = 4.
    assert (profile.wait_world_size, profile.wait_s) == (4, pytest.approx(0.010))
    # W = 2: compute 0.1 * 1.1 = 0.11 s; busy 2 (1) / 2 * 4e6 / 1e9 = 0.004 s, none hidden; the wait in
    # proportion to the compute, 0.11 / 0.125 of it: 0.010 * 0.88 * e(2) / e(4) = 0.0088 * 0.5641896 / 1.0293754
    # = 0.0048232 s; step 0.1188232 s.
    row = scaling.predict_step(profile, 2, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert (row["compute_s"], row["rank_wait_s"]) == (pytest.approx(0.11), pytest.approx(0.0048232, rel=1e-4))
    assert row["step_time_s"] == pytest.approx(0.1188232, rel=1e-6)
    # W = 8 on nodes of 4: compute 0.125 s; busy 2 (7) / 8 * 4e6 / 1e9 = 0.007 s;
    # wait 0.010 * 1.4236003 / 1.0293754 = 0.0138297 s; step 0.1458297 s.
    row = scaling.predict_step(profile, 8, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert row["step_time_s"] == pytest.approx(0.1458297, rel=1e-6)
    # A reference of 2 ranks already computed at 1.1x: W = 4 is 1.25 / 1.1 of it; its wait stays the runs'
    # (0.010 s), and at W = 4 grows with that compute: 0.010 * 1.25 / 1.1 * 1.0293754 / 0.5641896 = 0.0207332 s.
    at_two = {2: scaling.Measured(2, 128, 1, 0.114, 0.1, 0.0, 0.0, 0.014, 0.014, 2 * 128 / 0.114)}
    profile = scaling.profile_from(at_two, [4e6], link(0.0, 1e9), colocation)
    assert (profile.wait_world_size, profile.wait_s) == (None, pytest.approx(0.010))
    assert (profile.compute_at(4), profile.compute_at(1)) == (pytest.approx(0.1 * 1.25 / 1.1), pytest.approx(0.1 / 1.1))
    assert profile.wait_at(4) == pytest.approx(0.0207332, rel=1e-5)
    # Across nodes (W = 4 as two nodes of 2; the all-reduce timed at W = 2 only) the runs cannot tell a wait
    # from the interconnect: commbench's, 0.08 of a step at 4 ranks, as at W = 1.
    across_nodes = {4: replace(at_two[2], world_size=4)}
    profile = scaling.profile_from(across_nodes, [4e6], link(0.0, 1e9), colocation)
    assert (profile.wait_world_size, profile.wait_s) == (4, pytest.approx(0.08 * 0.1))


def test_expected_maximum_of_normals_from_tables():
    expected = {
        1: 0.0,
        2: 0.5641896,
        3: 0.8462844,
        4: 1.0293754,
        8: 1.4236003,
        1024: 3.2482396,
    }  # 1024: by the trapezoid rule on [-12, 12]
    for n, value in expected.items():
        assert stats.expected_max_normal(n) == pytest.approx(value, abs=1e-6)


def test_wait_for_the_slowest_rank_by_hand():
    # Measured at W = 2: compute 0.1 s a step, one 4 MB bucket, exposed = busy = 0.014 s (nothing hidden).
    # The fitted all-reduce (alpha 0, B 1e9) costs 2 (1) / 2 * 4e6 / 1e9 = 0.004 s: the rank waited 0.010 s.
    measured = {2: scaling.Measured(2, 128, 1, 0.114, 0.1, 0.0, 0.0, 0.014, 0.014, 2 * 128 / 0.114)}
    profile = scaling.profile_from(measured, [4e6], link(0.0, 1e9))
    assert (profile.hidden_fraction, profile.wait_s) == (0.0, pytest.approx(0.010))
    row = scaling.predict_step(profile, 2, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert row["step_time_s"] == pytest.approx(0.114)  # the model gives back its reference
    # W = 8: busy 2 (7) / 8 * 4e6 / 1e9 = 0.007 s; wait 0.010 * e(8) / e(2) = 0.010 * 1.4236003 / 0.5641896
    # = 0.0252326 s; step 0.1 + 0.007 + 0.0252326 = 0.1322326 s.
    row = scaling.predict_step(profile, 8, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert (row["rank_wait_s"], row["step_time_s"]) == (pytest.approx(0.0252326, rel=1e-5), pytest.approx(0.1322326))
    # Global batch 128 over 4 ranks: 32 each, a quarter of the compute, and so of the wait:
    # 0.25 * 0.010 * 1.0293754 / 0.5641896 = 0.0045613 s.
    row = scaling.predict_step(profile, 4, [4e6], link(0.0, 1e9), "global", 128)
    assert row["rank_wait_s"] == pytest.approx(0.0045613, rel=1e-4)
    assert scaling.profile_from(measured).wait_s == 0.0  # no fitted all-reduce to tell the wait from
    # A reference the all-reduce was not timed at (W = 4 over two nodes; the fit has W = 2 only): its
    # exposed remainder is the interconnect's, not a wait, so none is assumed.
    across_nodes = {4: replace(measured[2], world_size=4)}
    assert scaling.profile_from(across_nodes, [4e6], link(0.0, 1e9)).wait_s == 0.0


def test_ranks_faster_together_than_alone_are_not_used():
    """commbench timed two ranks at once at 0.73x one alone: implausible on a shared node, so 1 is used,
    and the timing is kept to be named."""
    docs = [
        {
            "world_size": 2,
            "compute": {"slowdown": 0.73, "together_median_s": 0.073, "alone_median_s": 0.1, "rank_wait_s": 0.0},
        }
    ]
    colocation = scaling.Colocation.from_comm(docs)
    assert colocation.slowdown(2) == 1.0 and colocation.implausible == ((2, 0.73),)


def test_untimed_communication_is_taken_out_of_the_compute():
    """CUDA at W = 2: the runs time no communication, so their step holds the all-reduce. A synthetic
    reference step of compute 0.05 s plus a 4 ms all-reduce (one 4 MB bucket at 1e9 B/s, nothing hidden):
    the model must take the 4 ms out of the compute, or it would count them twice."""
    step = 0.05 + 4e-3
    measured = {2: scaling.Measured(2, 128, 1, step, step, 0.0, 0.0, None, None, 2 * 128 / step)}
    profile = scaling.profile_from(measured, [4e6], link(0.0, 1e9))
    assert profile.compute_s == pytest.approx(0.05)
    row = scaling.predict_step(profile, 2, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert row["step_time_s"] == pytest.approx(step)  # the model gives back the step it was built from
