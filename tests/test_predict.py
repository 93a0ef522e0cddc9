"""ddpbench.predict: the all-reduce cost model, its fit, the step model and its validation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from runfactory import make_run

from ddpbench import predict

SWEEP = [8 * 4**k for k in range(12)] + [64 * 2**20]


def test_ring_formula_by_hand():
    # W = 4, alpha = 10 us, B = 1e9 B/s, n = 1e6 B:
    # 2 (4 - 1) 10e-6 = 60e-6 s; 2 (4 - 1) / 4 * 1e6 / 1e9 = 1.5e-3 s; total 1.56e-3 s.
    assert predict.allreduce_seconds(1e6, 4, 10e-6, 1e9) == pytest.approx(1.56e-3, rel=1e-12)
    # W = 2, alpha = 50 us, B = 2e9 B/s, n = 8e6 B: 2 * 50e-6 + 1 * 8e6 / 2e9 = 1e-4 + 4e-3 = 4.1e-3 s.
    assert predict.allreduce_seconds(8e6, 2, 50e-6, 2e9) == pytest.approx(4.1e-3, rel=1e-12)
    assert predict.allreduce_seconds(8e6, 1, 50e-6, 2e9) == 0.0  # one rank: no collective


def synthetic_times(alpha: float, bandwidth: float, world: int, noise: float = 0.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    exact = np.array([predict.allreduce_seconds(n, world, alpha, bandwidth) for n in SWEEP])
    return list(exact * (1 + rng.uniform(-noise, noise, size=exact.size)))


def test_fit_recovers_latency_and_bandwidth():
    fit = predict.fit_collective(SWEEP, synthetic_times(30e-6, 1.5e9, 4, noise=0.03), 4)
    assert fit.alpha_s == pytest.approx(30e-6, rel=0.05)
    assert fit.bandwidth_bytes_s == pytest.approx(1.5e9, rel=0.05)
    # Relative least squares: the 8-byte message (pure latency) is fitted as well as the 64 MiB one.
    assert fit.seconds(8, 4) == pytest.approx(6 * 30e-6, rel=0.05)
    assert fit.max_rel_error < 0.06 and fit.median_rel_error < 0.04
    assert fit.formula.startswith("T(n, W) = 2 (W - 1) alpha + 2 (W - 1) / W * n / B")


def test_fit_is_not_pulled_by_a_few_outlying_sizes():
    # A token bucket lets a mid-size message through at twice the rate (its burst), and a neighbour
    # slows one small message down: the other eleven sizes still give alpha and B.
    times = synthetic_times(30e-6, 1.5e9, 2)
    times[5] *= 3.0  # 8 KiB
    times[8] *= 0.5  # 512 KiB
    fit = predict.fit_collective(SWEEP, times, 2)
    assert fit.alpha_s == pytest.approx(30e-6, rel=0.05)
    assert fit.bandwidth_bytes_s == pytest.approx(1.5e9, rel=0.05)
    assert fit.max_rel_error == pytest.approx(1.0, abs=0.1)  # the outlier is reported, not hidden: model = 2 x measured


def test_fit_across_world_sizes_and_without_a_collective():
    sizes = SWEEP + SWEEP + [8, 1024]
    times = synthetic_times(20e-6, 3e9, 2) + synthetic_times(20e-6, 3e9, 8) + [1e-3, 1e-3]
    fit = predict.fit_collective(sizes, times, [2] * len(SWEEP) + [8] * len(SWEEP) + [1, 1])
    assert (fit.alpha_s, fit.bandwidth_bytes_s) == (pytest.approx(20e-6, rel=1e-6), pytest.approx(3e9, rel=1e-6))
    assert fit.world_sizes == (2, 8)  # the one-rank timings were dropped
    with pytest.raises(ValueError, match="W = 1 there is no collective"):
        predict.fit_collective([8, 1024], [1e-5, 2e-5], 1)


def test_named_networks_add_latency_and_cap_bandwidth():
    measured = predict.fit_collective(SWEEP, synthetic_times(30e-6, 2e9, 2), 2)
    slow = predict.network_fit(measured, bandwidth_gbit=1.0, latency_us=50)
    assert slow.alpha_s == pytest.approx(80e-6)
    assert slow.bandwidth_bytes_s == pytest.approx(1.25e8)
    fast = predict.network_fit(measured, bandwidth_gbit=100.0, latency_us=2)
    assert fast.bandwidth_bytes_s == pytest.approx(2e9)  # the host's own all-reduce is the bottleneck
    with pytest.raises(ValueError, match="reserved"):
        predict.parse_networks({"measured": {"bandwidth_gbit": 1}})
    with pytest.raises(ValueError, match="bandwidth_gbit: 10, latency_us: 50"):
        predict.parse_networks({"10GbE": {"gbit": 10}})


def link(alpha: float, bandwidth: float) -> predict.CollectiveFit:
    return predict.CollectiveFit("ring", alpha, bandwidth, "", 0.0, 0.0, 2, (2,))


def test_predicted_step_by_hand():
    profile = predict.StepProfile(
        world_size=1, per_rank_batch=128, compute_s=0.05, data_s=0.01, other_s=0.0, hidden_fraction=0.5
    )
    # W = 2, one 4 MB bucket, alpha = 0, B = 1e9: busy = 2 (1) / 2 * 4e6 / 1e9 = 4e-3 s; half hidden: exposed 2e-3.
    # step = 0.01 + 0.05 + 0.002 = 0.062 s; throughput = 2 * 128 / 0.062 = 4129.03 samples/s;
    # against 128 / 0.06 = 2133.33 at W = 1: speedup 1.93548, efficiency 0.96774.
    row = predict.predict_step(profile, 2, [4e6], link(0.0, 1e9), "per_worker", 128, baseline_throughput=128 / 0.06)
    assert row["comm_busy_s"] == pytest.approx(4e-3)
    assert row["step_time_s"] == pytest.approx(0.062)
    assert row["throughput_samples_s"] == pytest.approx(4129.032, rel=1e-6)
    assert (row["speedup"], row["efficiency"]) == (pytest.approx(1.935484, rel=1e-6), pytest.approx(0.967742, rel=1e-6))
    # Global batch 128 over 2 ranks: 64 each, so compute 0.025 s and data 0.005 s; step 0.025 + 0.005 + 0.002
    # = 0.032 s; throughput 128 / 0.032 = 4000 samples/s; speedup 4000 / 2133.33 = 1.875.
    row = predict.predict_step(profile, 2, [4e6], link(0.0, 1e9), "global", 128, baseline_throughput=128 / 0.06)
    assert (row["per_rank_batch"], row["step_time_s"]) == (64, pytest.approx(0.032))
    assert row["speedup"] == pytest.approx(1.875)
    # A slow link: busy 4e6 / 1e7 = 0.4 s; half of it (0.2 s) would be hidden, but never more than the
    # 0.05 s of compute: exposed 0.35 s, step 0.01 + 0.05 + 0.35 = 0.41 s.
    row = predict.predict_step(profile, 2, [4e6], link(0.0, 1e7), "per_worker", 128)
    assert row["step_time_s"] == pytest.approx(0.41)
    assert row["speedup"] is None  # no measured W = 1 given


def test_ranks_computing_together_by_hand():
    # commbench on a node: 2 ranks at once compute 1.1x as slowly as one alone and wait 0.05 of a step for the
    # slower; 4 at once, 1.25x, waiting 0.08 of a step.
    colocation = predict.Colocation(((2, 1.1, 0.05), (4, 1.25, 0.08)))
    # Linear between the numbers timed; a node holds 4 ranks, the most timed on one.
    assert [colocation.slowdown(w) for w in (1, 2, 3, 4, 64)] == pytest.approx([1.0, 1.1, 1.175, 1.25, 1.25])
    # Reference W = 1: compute 0.1 s, no communication; one 4 MB bucket, alpha 0, B 1e9.
    measured = {1: predict.Measured(1, 128, 1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 128 / 0.1)}
    profile = predict.profile_from(measured, [4e6], link(0.0, 1e9), colocation)
    # One rank waits for nobody; the wait is commbench's at 4 ranks: 0.08 * 0.1 * 1.25 = 0.010 s at W = 4.
    assert (profile.wait_world_size, profile.wait_s) == (4, pytest.approx(0.010))
    # W = 2: compute 0.1 * 1.1 = 0.11 s; busy 2 (1) / 2 * 4e6 / 1e9 = 0.004 s, none hidden; the wait in
    # proportion to the compute, 0.11 / 0.125 of it: 0.010 * 0.88 * e(2) / e(4) = 0.0088 * 0.5641896 / 1.0293754
    # = 0.0048232 s; step 0.1188232 s.
    row = predict.predict_step(profile, 2, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert (row["compute_s"], row["rank_wait_s"]) == (pytest.approx(0.11), pytest.approx(0.0048232, rel=1e-4))
    assert row["step_time_s"] == pytest.approx(0.1188232, rel=1e-6)
    # W = 8 on nodes of 4: compute 0.125 s; busy 2 (7) / 8 * 4e6 / 1e9 = 0.007 s;
    # wait 0.010 * 1.4236003 / 1.0293754 = 0.0138297 s; step 0.1458297 s.
    row = predict.predict_step(profile, 8, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert row["step_time_s"] == pytest.approx(0.1458297, rel=1e-6)
    # A reference of 2 ranks already computed at 1.1x: W = 4 is 1.25 / 1.1 of it; its wait stays the runs'
    # (0.010 s), and at W = 4 grows with that compute: 0.010 * 1.25 / 1.1 * 1.0293754 / 0.5641896 = 0.0207332 s.
    at_two = {2: predict.Measured(2, 128, 1, 0.114, 0.1, 0.0, 0.0, 0.014, 0.014, 2 * 128 / 0.114)}
    profile = predict.profile_from(at_two, [4e6], link(0.0, 1e9), colocation)
    assert (profile.wait_world_size, profile.wait_s) == (None, pytest.approx(0.010))
    assert (profile.compute_at(4), profile.compute_at(1)) == (pytest.approx(0.1 * 1.25 / 1.1), pytest.approx(0.1 / 1.1))
    assert profile.wait_at(4) == pytest.approx(0.0207332, rel=1e-5)
    # Across nodes (W = 4 as two nodes of 2; the all-reduce timed at W = 2 only) the runs cannot tell a wait
    # from the interconnect: commbench's, 0.08 of a step at 4 ranks, as at W = 1.
    across_nodes = {4: replace(at_two[2], world_size=4)}
    profile = predict.profile_from(across_nodes, [4e6], link(0.0, 1e9), colocation)
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
        assert predict.expected_max_normal(n) == pytest.approx(value, abs=1e-6)


def test_wait_for_the_slowest_rank_by_hand():
    # Measured at W = 2: compute 0.1 s a step, one 4 MB bucket, exposed = busy = 0.014 s (nothing hidden).
    # The fitted all-reduce (alpha 0, B 1e9) costs 2 (1) / 2 * 4e6 / 1e9 = 0.004 s: the rank waited 0.010 s.
    measured = {2: predict.Measured(2, 128, 1, 0.114, 0.1, 0.0, 0.0, 0.014, 0.014, 2 * 128 / 0.114)}
    profile = predict.profile_from(measured, [4e6], link(0.0, 1e9))
    assert (profile.hidden_fraction, profile.wait_s) == (0.0, pytest.approx(0.010))
    row = predict.predict_step(profile, 2, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert row["step_time_s"] == pytest.approx(0.114)  # the model gives back its reference
    # W = 8: busy 2 (7) / 8 * 4e6 / 1e9 = 0.007 s; wait 0.010 * e(8) / e(2) = 0.010 * 1.4236003 / 0.5641896
    # = 0.0252326 s; step 0.1 + 0.007 + 0.0252326 = 0.1322326 s.
    row = predict.predict_step(profile, 8, [4e6], link(0.0, 1e9), "per_worker", 128)
    assert (row["rank_wait_s"], row["step_time_s"]) == (pytest.approx(0.0252326, rel=1e-5), pytest.approx(0.1322326))
    # Global batch 128 over 4 ranks: 32 each, a quarter of the compute, and so of the wait:
    # 0.25 * 0.010 * 1.0293754 / 0.5641896 = 0.0045613 s.
    row = predict.predict_step(profile, 4, [4e6], link(0.0, 1e9), "global", 128)
    assert row["rank_wait_s"] == pytest.approx(0.0045613, rel=1e-4)
    assert predict.profile_from(measured).wait_s == 0.0  # no fitted all-reduce to tell the wait from
    # A reference the all-reduce was not timed at (W = 4 over two nodes; the fit has W = 2 only): its
    # exposed remainder is the interconnect's, not a wait, so none is assumed.
    across_nodes = {4: replace(measured[2], world_size=4)}
    assert predict.profile_from(across_nodes, [4e6], link(0.0, 1e9)).wait_s == 0.0


def synthetic_run(world: int, alpha: float = 40e-6, bandwidth: float = 1e9, slower: float = 1.0) -> dict:
    """Two epochs of 10 steps, generated from the step model itself: compute 0.05 s and data 0.005 s
    per step at batch 32 per rank, 0.001 s of loop overhead, 40 % of the all-reduce hidden."""
    busy = sum(predict.allreduce_seconds(b, world, alpha, bandwidth) for b in BUCKETS)
    compute, data, other, exposed = 0.05 * slower, 0.005, 0.001, 0.6 * busy
    steps = 20
    train = steps * (compute + data + other + exposed)
    totals = {
        "train_time_s": train,
        "data_time_s": steps * data,
        "step_time_s": steps * (compute + exposed),
        "compute_time_s": steps * compute,
        "comm_time_s": steps * busy if world > 1 else 0.0,
        "comm_exposed_time_s": steps * exposed if world > 1 else 0.0,
        "images": steps * 32 * world,
    }
    return {
        "config": {
            "world_size": world,
            "per_rank_batch_size": 32,
            "threads_per_worker": 1,
            "batch_size_mode": "per_worker",
            "batch_size": 32,
        },
        "model": {"parameters": 1_000_000},
        "totals": totals,
        "epochs": [{"steps": 10}, {"steps": 10}],
    }


BUCKETS = [3e6, 1e6]


def comm_doc(world: int, alpha: float = 40e-6, bandwidth: float = 1e9) -> dict:
    times = synthetic_times(alpha, bandwidth, world)
    return {
        "world_size": world,
        "sweep": [{"bytes": n, "median_s": t} for n, t in zip(SWEEP, times, strict=True)],
        "buckets": [{"bytes": b, "median_s": predict.allreduce_seconds(b, world, alpha, bandwidth)} for b in BUCKETS],
    }


def test_leave_one_out_on_runs_the_model_describes():
    runs = [synthetic_run(w) for w in (1, 2, 4)]
    points = predict.comm_points([comm_doc(2), comm_doc(4)])
    cases = predict.validate(predict.measure(runs), points, BUCKETS, "per_worker", 32)
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
        for c in predict.validate(
            predict.measure(runs), predict.comm_points(docs), BUCKETS, "per_worker", 32, comm_docs=docs
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
    points = predict.comm_points([comm_doc(2), comm_doc(4)])
    cases = {c["held_out"]: c for c in predict.validate(predict.measure(runs), points, BUCKETS, "per_worker", 32)}
    assert cases[4]["step_time_rel_error"] < -0.05 and cases[4]["speedup_rel_error"] > 0.05
    assert cases[1]["step_time_rel_error"] > 0.05


def test_two_measured_sizes_predict_the_larger_from_the_smaller():
    runs = [synthetic_run(w) for w in (1, 2)]
    points = predict.comm_points([comm_doc(2)])
    (case,) = predict.validate(predict.measure(runs), points, BUCKETS, "per_worker", 32)
    assert (case["held_out"], case["fit_world_sizes"], case["comm_world_sizes"]) == (2, [1], [2])
    # Nothing measured at W > 1 to learn the overlap from: none is assumed, so the prediction is slower.
    assert case["step_time_rel_error"] > 0


def test_validation_names_the_threads_per_rank_of_both_sides():
    # Cores fixed: W = 1 had both cores, each W = 2 rank one of them; the model assumes unchanged threads.
    runs = [synthetic_run(1), synthetic_run(2)]
    runs[0]["config"]["threads_per_worker"] = 2
    (case,) = predict.validate(predict.measure(runs), predict.comm_points([comm_doc(2)]), BUCKETS, "per_worker", 32)
    assert (case["fit_threads_per_worker"], case["held_out_threads_per_worker"]) == (2, 1)


def test_prediction_for_the_summary():
    runs = [synthetic_run(w) for w in (1, 2, 4)]
    prediction = predict.predict_from_runs(
        runs, [comm_doc(2), comm_doc(4)], {"1GbE": {"bandwidth_gbit": 1, "latency_us": 50}}, max_world_size=64
    )
    json.dumps(prediction, allow_nan=False)  # goes into summary.json as it is
    assert prediction["collective"]["bandwidth_bytes_s"] == pytest.approx(1e9)
    assert set(prediction["networks"]) == {"measured", "1GbE"}
    rows = prediction["rows"]
    per_worker = [r["world_size"] for r in rows if r["network"] == "1GbE" and r["batch_mode"] == "per_worker"]
    assert per_worker == [1, 2, 4, 8, 16, 32, 64]
    global_mode = [r["world_size"] for r in rows if r["network"] == "1GbE" and r["batch_mode"] == "global"]
    assert global_mode == [1, 2, 4, 8, 16, 32]  # at most one sample per rank of a batch of 32
    measured_4 = next(
        r for r in rows if (r["network"], r["batch_mode"], r["world_size"]) == ("measured", "per_worker", 4)
    )
    run_4 = predict.measure(runs)[4]
    assert measured_4["step_time_s"] == pytest.approx(run_4.period_s)  # the model reproduces what it was built from
    assert prediction["bucket_bytes"] == BUCKETS
    assert len(prediction["validation"]) == 3 and prediction["assumptions"]
    assert len(predict.prediction_csv(prediction).splitlines()) == len(rows) + 1


def test_prediction_from_schema_valid_runs_through_the_cli(tmp_path):
    runs = []
    for ws in (1, 2, 4):
        for seed in (0, 1):
            path = tmp_path / f"ws{ws}_s{seed}.json"
            run = make_run(ws, 128, seed)
            run.pop("ddp", None)  # as a run written before schema 2
            path.write_text(json.dumps(run))
            runs.append(path)
    comm = tmp_path / "comm.json"
    comm.write_text(json.dumps({k: v for k, v in comm_doc(2).items() if k != "buckets"}))
    out, csv = tmp_path / "prediction.json", tmp_path / "prediction.csv"
    predict.main(
        [
            "--runs",
            *map(str, runs),
            "--comm",
            str(comm),
            "--out",
            str(out),
            "--csv",
            str(csv),
            "--max-world-size",
            "1024",
        ]
    )
    prediction = json.loads(out.read_text())
    assert prediction["bucket_bytes"] == [4 * 1147914]  # no buckets recorded: all gradients as one message
    assert {r["world_size"] for r in prediction["rows"]} == {2**k for k in range(11)}
    assert set(prediction["networks"]) == {"measured", "10GbE", "100G_InfiniBand"}
    assert all(r["efficiency"] > 0 for r in prediction["rows"])
    assert csv.read_text().startswith("runs_batch_mode,batch_size,network,world_size,batch_mode")


def test_buckets_the_runs_recorded_come_first():
    runs = [synthetic_run(1), {**synthetic_run(2), "ddp": {"bucket_bytes": [1_000_000, 3_000_000]}}]
    assert predict.gradient_buckets([comm_doc(2)], runs) == [1e6, 3e6]
    assert predict.gradient_buckets([comm_doc(2)], runs[:1]) == BUCKETS  # then commbench's
