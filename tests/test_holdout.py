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


def test_two_measured_sizes_with_timings_only_at_the_larger_are_not_validated():
    """The default study on two cores: W = 1 and 2, all-reduce timed at W = 2 only. Predicting W = 2
    would fit W = 2's own timings: the case says so and names the study that can check the model."""
    runs = [synthetic_run(w) for w in (1, 2)]
    points = commtimes.comm_points([comm_doc(2)])
    (case,) = holdout.validate(scaling.measure(runs), points, BUCKETS, "per_worker", 32)
    assert (case["held_out"], case["fit_world_sizes"], case["validated"]) == (2, [1], False)
    assert "prediction-check.yaml" in case["reason"] and "step_time_rel_error" not in case


def test_a_held_out_world_size_never_reaches_a_fit(monkeypatch):
    """Spy on every fit the validation makes: the all-reduce fit, the step profile, the co-location."""
    seen = []
    real_fit, real_profile, real_colocation = holdout.fit_collective, holdout.profile_from, scaling.Colocation.from_comm

    def fit(sizes, seconds, worlds, algorithm):
        seen.append(("allreduce", set(worlds)))
        return real_fit(sizes, seconds, worlds, algorithm)

    def profile(measured, *args):
        seen.append(("profile", set(measured)))
        return real_profile(measured, *args)

    def colocation(docs, world_sizes=None):
        seen.append(("colocation", set(world_sizes)))
        return real_colocation(docs, world_sizes)

    monkeypatch.setattr(holdout, "fit_collective", fit)
    monkeypatch.setattr(holdout, "profile_from", profile)
    monkeypatch.setattr(holdout.Colocation, "from_comm", colocation)
    runs = [synthetic_run(w) for w in (1, 2, 4)]
    docs = [comm_doc(2), comm_doc(4)]
    cases = holdout.validate(
        scaling.measure(runs), commtimes.comm_points(docs), BUCKETS, "per_worker", 32, comm_docs=docs
    )
    assert len(seen) == 3 * len(cases) == 9
    for case, used in zip(cases, (seen[i : i + 3] for i in range(0, 9, 3)), strict=True):
        assert all(case["held_out"] not in sizes for _, sizes in used), (case["held_out"], used)


def test_validation_names_the_threads_per_rank_of_both_sides():
    # Cores fixed: W = 1 had both cores, each W = 2 rank one of them; the model assumes unchanged threads.
    runs = [synthetic_run(1), synthetic_run(2)]
    runs[0]["config"]["threads_per_worker"] = 2
    points = commtimes.comm_points([comm_doc(2), comm_doc(4)])  # timings at 4 as well: W = 2 can be checked
    (case,) = holdout.validate(scaling.measure(runs), points, BUCKETS, "per_worker", 32)
    assert (case["fit_threads_per_worker"], case["held_out_threads_per_worker"]) == (2, 1)
    assert case["comm_world_sizes"] == [4]
