"""ddpbench.predict: the whole prediction for summary.json and its CLI."""

from __future__ import annotations

import json

import pytest
from predictfactory import BUCKETS, comm_doc, synthetic_run
from runfactory import make_run

from ddpbench import predict, scaling


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
