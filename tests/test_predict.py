"""ddpbench.predict: the whole prediction for summary.json and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from predictfactory import BUCKETS, comm_doc, synthetic_run
from runfactory import make_run

from ddpbench import bands, predict, scaling


def test_network_names_and_specs_are_checked():
    with pytest.raises(ValueError, match="reserved"):
        predict.parse_networks({"measured": {"bandwidth_gbit": 1}})
    with pytest.raises(ValueError, match="bandwidth_gbit: 10, latency_us: 50"):
        predict.parse_networks({"10GbE": {"gbit": 10}})


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
    run_4 = scaling.measure(runs)[4]
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


def noisy_comm(world: int, noise: float, seed: int) -> dict:
    doc = comm_doc(world)
    rng = np.random.default_rng(seed)
    for point in doc["sweep"]:
        point["median_s"] *= 1 + rng.uniform(-noise, noise)
    return doc


def test_the_bootstrap_bounds_every_predicted_value_and_the_fit():
    runs = [synthetic_run(w) for w in (1, 2, 4)]
    exact = predict.predict_from_runs(runs, [comm_doc(2), comm_doc(4)], {}, max_world_size=64, bootstrap=30)
    noisy = predict.predict_from_runs(
        runs, [noisy_comm(2, 0.2, 1), noisy_comm(4, 0.2, 2)], {}, max_world_size=64, bootstrap=30
    )
    assert exact["uncertainty"]["replicates"] == 30 and "percentile bootstrap" in exact["uncertainty"]["method"]
    for prediction in (exact, noisy):
        for row in prediction["rows"]:
            for key in ("step_time_s", "speedup", "efficiency"):  # refits of exact timings differ in the last digits
                low, high = row[f"{key}_ci95_low"], row[f"{key}_ci95_high"]
                assert low <= row[key] * (1 + 1e-6) and row[key] <= high * (1 + 1e-6)
    widest = max(r["step_time_s_ci95_high"] / r["step_time_s_ci95_low"] for r in exact["rows"])
    assert widest == pytest.approx(1.0)  # exact timings and identical runs: no spread to draw
    at_64 = next(
        r for r in noisy["rows"] if (r["network"], r["batch_mode"], r["world_size"]) == ("measured", "per_worker", 64)
    )
    assert at_64["step_time_s_ci95_high"] > at_64["step_time_s_ci95_low"] * 1.001  # noisy timings: a band
    low, high = noisy["collective_ci95"]["alpha_s"]
    assert low < noisy["collective"]["alpha_s"] * 1.5 and high > noisy["collective"]["alpha_s"] / 1.5
    assert "speedup_rel_error_ci95_low" in noisy["validation"][1]


def test_percentile_interval_is_numpys_and_needs_half_the_replicates():
    values = list(np.linspace(0, 1, 101))
    assert bands.interval(values, 101) == (pytest.approx(0.025), pytest.approx(0.975))
    assert bands.interval([1.0, None, None], 3) == (None, None)  # one of three replicates fitted: no interval
    resampled = bands.resample_runs([synthetic_run(1), synthetic_run(2), synthetic_run(2)], np.random.default_rng(0))
    assert sorted(r["config"]["world_size"] for r in resampled) == [1, 2, 2]


def test_predicted_speedup_is_one_at_one_worker_and_far_points_are_marked():
    runs = [synthetic_run(w) for w in (1, 2)]
    prediction = predict.predict_from_runs(runs, [comm_doc(2)], {}, max_world_size=64, bootstrap=0)
    rows = {(r["batch_mode"], r["world_size"]): r for r in prediction["rows"] if r["network"] == "measured"}
    assert rows[("per_worker", 1)]["speedup"] == pytest.approx(1.0) and rows[("global", 1)]["speedup"] == pytest.approx(
        1.0
    )
    # Largest measured W = 2: beyond 8 x 2 = 16 extrapolated. The runs' largest training set, 640 images (10
    # steps of 32 per rank at W = 2), is smaller than the global batch 32 W from W = 32.
    assert [w for (m, w), r in rows.items() if m == "per_worker" and r["extrapolated"]] == [32, 64]
    assert [w for (m, w), r in rows.items() if m == "per_worker" and r["global_batch_exceeds_train_set"]] == [32, 64]
    assert "uncertainty" not in prediction  # bootstrap 0: no intervals


def test_the_bootstrap_of_a_mean_agrees_with_scipys_percentile_bootstrap():
    """ddpbench.bands drawn runs again and took percentiles: for the mean of 12 runs' values, its interval
    matches scipy.stats.bootstrap(method="percentile") within the Monte Carlo error of 2,000 replicates."""
    from scipy import stats as sp

    values = np.random.default_rng(3).lognormal(0.0, 0.3, 12)
    runs = [{"config": {"batch_size_mode": "per_worker", "batch_size": 32, "world_size": 1}, "v": v} for v in values]
    points = ([8.0, 1024.0], [1e-5, 2e-5], [2, 2])

    def mean_of(sample_runs, _points):
        return {"value": float(np.mean([r["v"] for r in sample_runs]))}

    drawn = bands.replicates(mean_of, runs, points, 2000, seed=1)
    low, high = bands.interval((d["value"] for d in drawn), 2000)
    reference = sp.bootstrap((values,), np.mean, method="percentile", n_resamples=2000, random_state=2)
    spread = values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.15 * spread)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.15 * spread)
