"""ddpbench.holdout: each measured world size predicted from the others."""

from __future__ import annotations

import pytest
from predictfactory import BUCKETS, comm_doc, synthetic_run

from ddpbench import commtimes, holdout, scaling


def test_leave_one_out_on_runs_the_model_describes():
    runs = [synthetic_run(w) for w in (1, 2, 4)]
    points = commtimes.comm_points([comm_doc(2), comm_doc(4)])
    cases = holdout.validate(scaling.measure(runs), points, BUCKETS, "per_worker", 32)
    assert [c["held_out"] for c in cases] == [1, 2, 4]
    assert [c["fit_world_sizes"] for c in cases] == [[2, 4], [1, 4], [1, 2]]
    assert [c["comm_world_sizes"] for c in cases] == [[2, 4], [4], [2]]  # never the held-out size's timings
    for case in cases:
        assert case["step_time_rel_error"] == pytest.approx(0.0, abs=1e-9)
    assert cases[0]["speedup_rel_error"] is None  # W = 1 held out: nothing to measure speedup against
    assert [c["speedup_rel_error"] for c in cases[1:]] == [pytest.approx(0.0, abs=1e-9)] * 2


def test_leave_one_out_carries_how_ranks_on_a_node_slow_each_other():
    # Each rank computes 5 % slower per other rank on its node, as commbench measured at 2 and 4 ranks.
    runs = [synthetic_run(1), synthetic_run(2, slower=1.05), synthetic_run(4, slower=1.15)]

    def timed(world: int, slowdown: float) -> dict:
        step = 0.05 * slowdown
        compute = {"alone_median_s": 0.05, "together_median_s": step, "slowdown": slowdown, "rank_wait_s": 0.0}
        return {**comm_doc(world), "compute": compute}

    docs = [timed(2, 1.05), timed(4, 1.15)]
    cases = {
        c["held_out"]: c
        for c in holdout.validate(
            scaling.measure(runs), commtimes.comm_points(docs), BUCKETS, "per_worker", 32, comm_docs=docs
        )
    }
    # W = 1 from W = 4's compute, less its slowdown; W = 2 from W = 4, and the slowdown between 1 and 4 ranks.
    assert cases[1]["compute_slowdown"] == pytest.approx(1 / 1.15)
    assert cases[2]["compute_slowdown"] == pytest.approx(1.05 / 1.15)
    for held in (1, 2):
        assert cases[held]["step_time_rel_error"] == pytest.approx(0.0, abs=1e-9)
    # W = 4 from W = 2: commbench's timing at 4 is the held-out size's, so a node holds 2 ranks as far as the
    # model knows; it keeps the reference's compute, and W = 4 comes out faster than measured.
    assert cases[4]["compute_slowdown"] == 1.0 and cases[4]["step_time_rel_error"] < -0.05


def test_validation_reports_a_wrong_prediction():
    # The W = 4 runs compute 10 % slower per step than the model's W = 1 and 2 say: predicting W = 4 from
    # W = 1 and 2 must come out too fast, and predicting W = 1 from W = 2 and 4 too slow.
    runs = [synthetic_run(1), synthetic_run(2), synthetic_run(4, slower=1.1)]
    points = commtimes.comm_points([comm_doc(2), comm_doc(4)])
    cases = {c["held_out"]: c for c in holdout.validate(scaling.measure(runs), points, BUCKETS, "per_worker", 32)}
    assert cases[4]["step_time_rel_error"] < -0.05 and cases[4]["speedup_rel_error"] > 0.05
    assert cases[1]["step_time_rel_error"] > 0.05


def test_two_measured_sizes_predict_the_larger_from_the_smaller():
    runs = [synthetic_run(w) for w in (1, 2)]
    points = commtimes.comm_points([comm_doc(2)])
    (case,) = holdout.validate(scaling.measure(runs), points, BUCKETS, "per_worker", 32)
    assert (case["held_out"], case["fit_world_sizes"], case["comm_world_sizes"]) == (2, [1], [2])
    # Nothing measured at W > 1 to learn the overlap from: none is assumed, so the prediction is slower.
    assert case["step_time_rel_error"] > 0


def test_validation_names_the_threads_per_rank_of_both_sides():
    # Cores fixed: W = 1 had both cores, each W = 2 rank one of them; the model assumes unchanged threads.
    runs = [synthetic_run(1), synthetic_run(2)]
    runs[0]["config"]["threads_per_worker"] = 2
    (case,) = holdout.validate(scaling.measure(runs), commtimes.comm_points([comm_doc(2)]), BUCKETS, "per_worker", 32)
    assert (case["fit_threads_per_worker"], case["held_out_threads_per_worker"]) == (2, 1)
