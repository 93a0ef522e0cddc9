"""The summary arithmetic: paired speedup, efficiency, Karp-Flatt, t-intervals, and bad grids."""

import json
import math

import pandas as pd
import pytest
from scipy import stats

from conftest import RUN_SCHEMA
from ddpbench import aggregate as agg
from runfactory import make_run, write_grid


def summary_for(tmp_path, world_sizes=(1, 2, 4), seeds=(0, 1, 2), **kwargs):
    paths, expected = write_grid(tmp_path, world_sizes, [128], seeds, **kwargs)
    result, table = agg.aggregate(paths, RUN_SCHEMA, expected)
    return result, table, paths


def test_speedup_is_paired_by_seed(tmp_path):
    result, table, paths = summary_for(tmp_path)
    runs = {(r["config"]["world_size"], r["config"]["seed"]): r["totals"]["train_time_s"]
            for r in map(lambda p: json.loads(p.read_text()), paths)}
    for row in result["rows"]:
        w = row["world_size"]
        speedups = [runs[(1, s)] / runs[(w, s)] for s in (0, 1, 2)]
        assert row["speedup_mean"] == pytest.approx(sum(speedups) / 3)
        assert row["efficiency_mean"] == pytest.approx(row["speedup_mean"] / w)
        sd = pd.Series(speedups).std(ddof=1)
        half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
        if w == 1:
            assert row["speedup_mean"] == 1.0 and row["karp_flatt"] is None
        else:
            assert row["speedup_ci95_low"] == pytest.approx(row["speedup_mean"] - half)
            assert row["speedup_ci95_high"] == pytest.approx(row["speedup_mean"] + half)
            s = row["speedup_mean"]
            assert row["karp_flatt"] == pytest.approx((1 / s - 1 / w) / (1 - 1 / w))
    # The factory's runs follow Amdahl's law with a serial fraction near 0.15.
    assert result["amdahl_serial_fraction"][128] == pytest.approx(0.15, abs=0.02)
    assert list(table.columns[:4]) == ["world_size", "batch_size", "global_batch_size", "n_seeds"]


def test_required_columns_are_present(tmp_path):
    _, table, _ = summary_for(tmp_path)
    for column in ("world_size", "batch_size", "global_batch_size", "n_seeds", "train_time_mean_s",
                   "train_time_std_s", "throughput_mean_img_s", "speedup_mean", "speedup_ci95_low",
                   "speedup_ci95_high", "efficiency_mean", "test_acc_mean", "test_acc_std", "karp_flatt",
                   "time_to_target_mean_s"):
        assert column in table.columns


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


def test_invalid_run_is_refused_with_its_path(tmp_path):
    paths, _ = write_grid(tmp_path, [1], [128], [0])
    broken = make_run(1, 128, 1)
    del broken["totals"]["train_time_s"]
    bad = tmp_path / "ws1_bs128_seed1.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(agg.AggregateError, match="ws1_bs128_seed1.json .*train_time_s"):
        agg.aggregate([*paths, bad], RUN_SCHEMA)
    bad.write_text("{ truncated")
    with pytest.raises(agg.AggregateError, match="cannot read run"):
        agg.aggregate([bad], RUN_SCHEMA)


def test_cli_writes_csv_and_json(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0, 1])
    csv, js = tmp_path / "summary.csv", tmp_path / "summary.json"
    assert agg.main(["--runs", *map(str, paths), "--schema", str(RUN_SCHEMA), "--csv", str(csv), "--json", str(js),
                     "--expect", *expected]) == 0
    table = pd.read_csv(csv)
    assert len(table) == 2 and json.loads(js.read_text())["rows"][1]["world_size"] == 2
