"""The summary arithmetic (paired speedup, t intervals, Karp-Flatt), what the report shows, and the
runs aggregation refuses: bad files, runs whose contents disagree with their name or the grid."""

import json
import math

import pandas as pd
import pytest
from conftest import RUN_SCHEMA
from runfactory import make_run, write_grid

from ddpbench import aggregate as agg

# The options runfactory's runs were trained with, as the workflow's results/config.json holds
# them: "auto" where the job resolves the value itself.
GRID_CONFIG = {
    "data": {"source": "synthetic", "loader": "resident"},
    "grid": {"world_sizes": [1, 2], "batch_sizes": [128], "seeds": [0, 1]},
    "train": {
        "model": "simple_cnn",
        "epochs": 3,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1.0e-4,
        "batch_size_mode": "per_worker",
        "lr_scaling": "none",
        "base_batch_size": 128,
        "warmup_epochs": 0,
        "augment": "none",
        "channels_last": "auto",
        "precision": "fp32",
        "allreduce": "auto",
        "device": "auto",
        "threads_per_worker": "auto",
        "ranks_per_node": "auto",
        "max_train_samples": None,
        "target_accuracy": 50,
        "eval_batch_size": 500,
        "timeout": 120,
    },
}


def summary_for(tmp_path, world_sizes=(1, 2, 4), seeds=(0, 1, 2), **kwargs):
    paths, expected = write_grid(tmp_path, world_sizes, [128], seeds, **kwargs)
    result, table = agg.aggregate(paths, RUN_SCHEMA, expected)
    return result, table, paths


def write_run(folder, name, run) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(run))
    return path


# --------------------------------------------------------------------------- arithmetic


def test_known_answer_speedup_interval_and_karp_flatt(tmp_path):
    """Three seeds at W = 1 and 2 with chosen times, every number worked out by hand."""
    times = {(1, 0): 12.0, (1, 1): 10.0, (1, 2): 9.0, (2, 0): 8.0, (2, 1): 5.0, (2, 2): 6.0}
    paths = [
        write_run(tmp_path, f"ws{ws}_bs128_seed{seed}", make_run(ws, 128, seed, train_time=t))
        for (ws, seed), t in times.items()
    ]
    result, _ = agg.aggregate(paths, RUN_SCHEMA)
    one, two = result["rows"]
    assert [r["speedup"] for r in result["runs"] if r["world_size"] == 2] == pytest.approx([1.5, 2.0, 1.5])
    # Mean of the paired speedups 12/8, 10/5, 9/6 (the ratio of mean times would be 31/19 = 1.632).
    assert two["speedup_mean"] == pytest.approx(5 / 3, rel=1e-12)
    # sd (n - 1) of 1.5, 2, 1.5 is sqrt(1/12); sd / sqrt(3) = 1/6; t(0.975, 2) = 4.302652729911275.
    half = 4.302652729911275 / 6
    assert two["speedup_ci95_low"] == pytest.approx(5 / 3 - half, rel=1e-9)
    assert two["speedup_ci95_high"] == pytest.approx(5 / 3 + half, rel=1e-9)
    assert two["efficiency_mean"] == pytest.approx(5 / 6, rel=1e-12)
    assert two["efficiency_ci95_low"] == pytest.approx((5 / 3 - half) / 2, rel=1e-9)
    # Karp-Flatt (1/S - 1/W) / (1 - 1/W) = (0.6 - 0.5) / 0.5.
    assert two["karp_flatt"] == pytest.approx(0.2, rel=1e-9)
    # sd (n - 1) of 12, 10, 9: squared deviations from 31/3 sum to 42/9, over 2 is 7/3.
    assert one["train_time_std_s"] == pytest.approx(math.sqrt(7 / 3), rel=1e-12)
    assert one["speedup_mean"] == 1.0 and [one["speedup_ci95_low"], one["speedup_ci95_high"]] == [1.0, 1.0]
    assert one["karp_flatt"] is None


def test_speedup_is_paired_by_seed_and_varies_by_seed(tmp_path):
    result, _, paths = summary_for(tmp_path)
    times = {
        (r["config"]["world_size"], r["config"]["seed"]): r["totals"]["train_time_s"]
        for r in (json.loads(p.read_text()) for p in paths)
    }
    for run in result["runs"]:
        assert run["speedup"] == pytest.approx(times[(1, run["seed"])] / times[(run["world_size"], run["seed"])])
    for row in result["rows"]:
        speedups = [r["speedup"] for r in result["runs"] if r["world_size"] == row["world_size"]]
        assert row["speedup_mean"] == pytest.approx(sum(speedups) / 3)
        if row["world_size"] > 1:  # the seeds disagree, so the interval has a width
            assert row["speedup_ci95_high"] - row["speedup_ci95_low"] > 0.01


def test_amdahl_fit_recovers_the_serial_fraction(tmp_path):
    """Times that follow Amdahl's law exactly, T(W) = 10 (0.2 + 0.8 / W): the fit finds f = 0.2."""
    paths = [
        write_run(tmp_path, f"ws{ws}_bs128_seed0", make_run(ws, 128, 0, train_time=10 * (0.2 + 0.8 / ws)))
        for ws in (1, 2, 4, 8)
    ]
    result, _ = agg.aggregate(paths, RUN_SCHEMA)
    assert result["amdahl_serial_fraction"] == {128: pytest.approx(0.2, abs=1e-4)}
    assert [r["karp_flatt"] for r in result["rows"][1:]] == pytest.approx([0.2, 0.2, 0.2])


def test_a_single_seed_has_no_interval(tmp_path):
    result, _, _ = summary_for(tmp_path, seeds=(0,))
    assert all(row["speedup_ci95_low"] is None and row["test_acc_std"] is None for row in result["rows"])


def test_grid_without_world_size_one_is_an_error(tmp_path):
    paths, _ = write_grid(tmp_path, [2, 4], [128], [0])
    with pytest.raises(agg.AggregateError, match="no world size 1 run .* add 1 to grid.world_sizes"):
        agg.aggregate(paths, RUN_SCHEMA)


def test_missing_runs_are_listed(tmp_path):
    result, _, _ = summary_for(tmp_path, skip={(4, 128, 2)})
    assert result["missing_runs"] == [{"world_size": 4, "batch_size": 128, "seed": 2}]
    assert [r["n_seeds"] for r in result["rows"]] == [3, 3, 2]


# --------------------------------------------------------------------------- what the report shows


def test_headlines_curves_and_method_facts(tmp_path):
    result, _, _ = summary_for(tmp_path)
    rows = {r["world_size"]: r for r in result["rows"]}
    best = max(rows.values(), key=lambda r: r["speedup_mean"])
    assert result["headlines"] == [
        {
            "batch_size": 128,
            "base_ws": 1,
            "largest_ws": 4,
            "best_speedup": best["speedup_mean"],
            "best_ws": best["world_size"],
            "efficiency_largest": rows[4]["efficiency_mean"],
            "acc_base": rows[1]["test_acc_mean"],
            "acc_largest": rows[4]["test_acc_mean"],
            "acc_change": pytest.approx(-4.0),  # the factory's accuracy falls by 2 points per doubling
        }
    ]
    # Factory accuracy 30 + 10 e - 2 log2(W) + seed: the mean over seeds 0, 1, 2 adds 1.
    curve = next(c for c in result["learning_curves"] if c["world_size"] == 2)
    assert curve["epoch"] == [1, 2, 3] and curve["n_seeds"] == 3
    assert curve["test_acc"] == pytest.approx([39.0, 49.0, 59.0])
    method = result["method"]
    assert method["threads"] == [
        {"world_size": 1, "threads_per_worker": 8},
        {"world_size": 2, "threads_per_worker": 4},
        {"world_size": 4, "threads_per_worker": 2},
    ]
    assert method["allreduce"] == ["shared_memory"] and method["loader"] == ["resident"]
    assert method["startup_mean_s"] == pytest.approx(3.0 + 0.2 * 7 / 3)  # 3 + 0.2 W, W = 1, 2, 4
    assert method["timing_lock"] is None and all(r["lock_wait_s"] is None for r in result["runs"])
    assert result["period"] == {
        "first_started_utc": "2025-01-01T07:36:00.000+00:00",
        "last_finished_utc": "2025-01-01T17:41:00.000+00:00",
    }  # ws4 seed 2 ends last
    assert result["overlaps"] == []
    assert "seed" not in result["shared_run_config"] and result["shared_run_config"]["epochs"] == 3


def test_runs_that_overlapped_on_a_host_are_named(tmp_path):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    shared = json.loads(paths[3].read_text())  # ws2 seed 1, in the same minute as ws1 seed 0
    shared["timestamps"] = dict(json.loads(paths[0].read_text())["timestamps"])
    paths[3].write_text(json.dumps(shared))
    result, _ = agg.aggregate(paths, RUN_SCHEMA, expected)
    assert result["overlaps"] == [{"host": "node-a", "runs": ["ws1_bs128_seed0", "ws2_bs128_seed1"]}]


def test_timing_lock_waits_are_recorded(tmp_path):
    paths = [
        write_run(tmp_path, f"ws{ws}_bs128_seed0", make_run(ws, 128, 0, lock_wait=wait))
        for ws, wait in ((1, 0.5), (2, 2.0))
    ]
    result, _ = agg.aggregate(paths, RUN_SCHEMA)
    assert [r["lock_wait_s"] for r in result["runs"]] == [0.5, 2.0]
    assert result["method"]["timing_lock"] == {
        "paths": ["/tmp/ddpbench-timing.lock"],
        "n_runs": 2,
        "wait_total_s": 2.5,
        "wait_max_s": 2.0,
    }


def test_machine_lists_every_host(tmp_path):
    paths = [
        write_run(tmp_path, "ws1_bs128_seed0", make_run(1, 128, 0, hostname="node-a")),
        write_run(tmp_path, "ws2_bs128_seed0", make_run(2, 128, 0, hostname="node-b")),
    ]
    result, _ = agg.aggregate(paths, RUN_SCHEMA)
    hosts = next(m for m in result["machine"] if m["key"] == "hostnames")
    assert hosts == {"key": "hostnames", "label": "Hosts", "values": ["node-a", "node-b"]}


# --------------------------------------------------------------------------- refused runs


def test_invalid_run_is_refused_with_its_path(tmp_path):
    paths, _ = write_grid(tmp_path, [1], [128], [0])
    broken = make_run(1, 128, 1)
    del broken["totals"]["train_time_s"]
    bad = write_run(tmp_path, "ws1_bs128_seed1", broken)
    with pytest.raises(agg.AggregateError, match="ws1_bs128_seed1.json .*train_time_s"):
        agg.aggregate([*paths, bad], RUN_SCHEMA)
    bad.write_text("{ truncated")
    with pytest.raises(agg.AggregateError, match="cannot read run"):
        agg.aggregate([bad], RUN_SCHEMA)


@pytest.mark.parametrize(
    "inside, key, shown",
    [
        ((4, 64, 1), "world_size", "config.world_size is 4 but the file name says world_size 2"),
        ((2, 64, 5), "seed", "config.seed is 5 but the file name says seed 1"),
        ((2, 128, 1), "batch_size", "config.batch_size is 128 but the file name says batch_size 64"),
    ],
)
def test_run_whose_contents_disagree_with_its_name_is_refused(tmp_path, inside, key, shown):
    paths, _ = write_grid(tmp_path, [1, 2], [64], [0, 1])
    tampered = write_run(tmp_path, "ws2_bs64_seed1", make_run(*inside))
    with pytest.raises(agg.AggregateError) as err:
        agg.aggregate(paths, RUN_SCHEMA)
    message = str(err.value)
    assert str(tampered) in message and shown in message and "delete the file and rerun its job" in message


def test_run_file_without_a_run_name_is_refused(tmp_path):
    path = write_run(tmp_path, "best_run", make_run(1, 128, 0))
    with pytest.raises(agg.AggregateError, match=r"best_run.json: the file name does not say .* ws<W>_bs<B>_seed<S>"):
        agg.aggregate([path], RUN_SCHEMA)


def test_runs_agreeing_with_the_workflow_config_pass(tmp_path):
    """Options the job resolves (auto threads, device, format, all-reduce) may differ from the config."""
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    result, _ = agg.aggregate(paths, RUN_SCHEMA, expected, GRID_CONFIG)
    assert [r["n_seeds"] for r in result["rows"]] == [2, 2]


@pytest.mark.parametrize(
    "section, key, value, shown",
    [
        ("train", "epochs", 5, "config.epochs is 3 but results/config.json has train.epochs: 5"),
        ("train", "lr", 0.1, "config.lr is 0.01 but results/config.json has train.lr: 0.1"),
        (
            "train",
            "target_accuracy",
            None,
            "config.target_accuracy is 50.0 but results/config.json has train.target_accuracy: None",
        ),
        (
            "data",
            "loader",
            "dataloader",
            "config.loader is 'resident' but results/config.json has data.loader: 'dataloader'",
        ),
        (
            "data",
            "source",
            "cifar10",
            "dataset.source is 'synthetic' but results/config.json has data.source: 'cifar10'",
        ),
    ],
)
def test_run_trained_with_other_options_is_refused(tmp_path, section, key, value, shown):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    config = {**GRID_CONFIG, section: {**GRID_CONFIG[section], key: value}}
    with pytest.raises(agg.AggregateError) as err:
        agg.aggregate(paths, RUN_SCHEMA, expected, config, "results/config.json")
    message = str(err.value)
    assert "ws1_bs128_seed0.json" in message and shown in message and "delete the file and rerun its job" in message


def test_run_outside_the_grid_is_refused(tmp_path):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    with pytest.raises(agg.AggregateError, match=r"ws2_bs128_seed1.json \(ws2_bs128_seed1\) is not part of the grid"):
        agg.aggregate(paths, RUN_SCHEMA, [name for name in expected if name != "ws2_bs128_seed1"])


# --------------------------------------------------------------------------- the command line


def test_cli_writes_csv_and_json(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0, 1])
    config = tmp_path / "config.json"
    config.write_text(json.dumps(GRID_CONFIG))
    csv, js = tmp_path / "summary.csv", tmp_path / "summary.json"
    assert (
        agg.main(
            [
                "--runs",
                *map(str, paths),
                "--schema",
                str(RUN_SCHEMA),
                "--config",
                str(config),
                "--csv",
                str(csv),
                "--json",
                str(js),
                "--expect",
                *expected,
            ]
        )
        == 0
    )
    table = pd.read_csv(csv)
    summary = json.loads(js.read_text())
    assert table.world_size.tolist() == [1, 2] and table.speedup_mean.iloc[1] == pytest.approx(
        summary["rows"][1]["speedup_mean"], rel=1e-5
    )
    assert math.isnan(table.karp_flatt.iloc[0]) and summary["rows"][0]["karp_flatt"] is None


def test_cli_without_runs_says_no_run_of_the_grid_exists(tmp_path, capsys):
    csv, js = tmp_path / "summary.csv", tmp_path / "summary.json"
    rc = agg.main(
        [
            "--runs",
            "--schema",
            str(RUN_SCHEMA),
            "--expect",
            "ws1_bs128_seed0",
            "ws2_bs128_seed0",
            "--csv",
            str(csv),
            "--json",
            str(js),
        ]
    )
    assert rc == 1 and not csv.exists() and not js.exists()
    err = capsys.readouterr().err
    assert "no finished run of this grid yet" in err and "ws1_bs128_seed0, ws2_bs128_seed0" in err
    assert "--configfile" in err


def test_cli_names_a_tampered_run(tmp_path, capsys):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0])
    paths[1].write_text(json.dumps(make_run(4, 128, 0)))
    rc = agg.main(
        [
            "--runs",
            *map(str, paths),
            "--expect",
            *expected,
            "--csv",
            str(tmp_path / "s.csv"),
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    assert rc == 1
    assert f"error: run {paths[1]}: config.world_size is 4" in capsys.readouterr().err
