"""The summary arithmetic (paired speedup, t intervals, Karp-Flatt), the variants' comparison with
the baseline, what the report shows, the scaling prediction and the command line (ddpbench.summary)."""

import json
import math

import pandas as pd
import pytest
from conftest import RUN_SCHEMA
from runfactory import make_comm, make_run, write_comm, write_grid
from scipy import stats as sp
from test_runs import FACTORY_VARIANTS, GRID_CONFIG, VARIANT_CONFIG, predicted_study, variant_study, write_run

from ddpbench.columns import SUMMARY_COLUMNS
from ddpbench.comparison import COMPARISON_COLUMNS
from ddpbench.order import timed_order
from ddpbench.runs import RunsError, load_config
from ddpbench.summary import build_summary, main

# --------------------------------------------------------------------------- helpers


def summary_for(tmp_path, world_sizes=(1, 2, 4), seeds=(0, 1, 2), **kwargs):
    paths, expected = write_grid(tmp_path, world_sizes, [128], seeds, **kwargs)
    result, table = build_summary(paths, RUN_SCHEMA, expected)
    return result, table, paths


def per_seed(paths, variant, ws, key):
    """{seed: totals[key]} of one variant's runs at world size ws, read from the files."""
    runs = [json.loads(p.read_text()) for p in paths if p.parent.name == variant]
    return {r["config"]["seed"]: r["totals"][key] for r in runs if r["config"]["world_size"] == ws}


# --------------------------------------------------------------------------- arithmetic


def test_known_answer_speedup_interval_and_karp_flatt(tmp_path):
    """Three seeds at W = 1 and 2 with chosen times, one thread per worker, every number worked out by hand."""
    times = {(1, 0): 12.0, (1, 1): 10.0, (1, 2): 9.0, (2, 0): 8.0, (2, 1): 5.0, (2, 2): 6.0}
    paths = [
        write_run(tmp_path, f"ws{ws}_bs128_seed{seed}", make_run(ws, 128, seed, train_time=t, threads=1))
        for (ws, seed), t in times.items()
    ]
    result, _ = build_summary(paths, RUN_SCHEMA)
    one, two = result["rows"]
    assert [r["speedup"] for r in result["runs"] if r["world_size"] == 2] == pytest.approx([1.5, 2.0, 1.5])
    # Geometric mean of the paired speedups 12/8, 10/5, 9/6: 4.5 ** (1/3) (their arithmetic mean would be
    # 5/3, the ratio of mean times 31/19). The logs ln 1.5, ln 2, ln 1.5 deviate from their mean by -d/3, 2d/3,
    # -d/3 with d = ln(4/3): sd = d / sqrt(3), sd / sqrt(3) = d / 3; t(0.975, 2) = 4.302652729911275.
    gmean, factor = 4.5 ** (1 / 3), (4 / 3) ** (4.302652729911275 / 3)
    assert two["speedup_mean"] == pytest.approx(gmean, rel=1e-12) and two["n_speedup"] == 3
    assert two["speedup_ci95_low"] == pytest.approx(gmean / factor, rel=1e-9)
    assert two["speedup_ci95_high"] == pytest.approx(gmean * factor, rel=1e-9)
    assert two["efficiency_mean"] == pytest.approx(gmean / 2, rel=1e-12)
    assert two["efficiency_ci95_low"] == pytest.approx(gmean / factor / 2, rel=1e-9)
    # Karp-Flatt (1/S - 1/W) / (1 - 1/W) = 2 / S - 1.
    assert two["karp_flatt"] == pytest.approx(2 / gmean - 1, rel=1e-9)
    # sd (n - 1) of 12, 10, 9: squared deviations from 31/3 sum to 42/9, over 2 is 7/3.
    assert one["train_time_std_s"] == pytest.approx(math.sqrt(7 / 3), rel=1e-12)
    assert one["speedup_mean"] == 1.0 and [one["speedup_ci95_low"], one["speedup_ci95_high"]] == [1.0, 1.0]
    assert one["karp_flatt"] is None
    assert result["statistics"]["scaling_laws"] is None  # one thread per worker: the cores grow with W


def test_throughput_is_total_images_over_total_time(tmp_path):
    """Two runs of 6144 images whose steps take 0.98 of 2 s and 6 s: 12288 / (0.98 x 8) img/s (the
    harmonic mean of the per-run rates), not their arithmetic mean."""
    paths = [
        write_run(tmp_path, f"ws1_bs128_seed{seed}", make_run(1, 128, seed, train_time=t))
        for seed, t in ((0, 2.0), (1, 6.0))
    ]
    result, _ = build_summary(paths, RUN_SCHEMA)
    (row,) = result["rows"]
    # 48 equal steps, 4 of them warm-up: the steady 44 hold 44/48 of the images and of the time.
    assert [r["throughput_img_s"] for r in result["runs"]] == pytest.approx([3072 / 0.98, 1024 / 0.98])
    assert row["throughput_mean_img_s"] == pytest.approx(1536.0 / 0.98, rel=1e-12)
    assert row["whole_run_throughput_img_s"] == pytest.approx(1536.0, rel=1e-12)


def test_the_headline_figures_leave_out_the_warmup(tmp_path):
    """Every W = 1 run's first step takes 17 steps' time (steps of 16/17 the plain ones): the steady
    throughput and the speedup see only the steps after it; the whole-run figures and the warm-up
    share carry it."""
    paths = [
        write_run(
            tmp_path,
            f"ws{ws}_bs128_seed{seed}",
            make_run(ws, 128, seed, epochs=1, train_time=t, warmup_factor=17.0 if ws == 1 else 1.0, threads=1),
        )
        for ws, t in ((1, 2.0), (2, 1.0))
        for seed in range(3)
    ]
    result, _ = build_summary(paths, RUN_SCHEMA)
    one, two = result["rows"]
    step_w1 = 0.98 * 2.0 / 32  # 16 steps, the first weighing 17: 32 weights
    assert one["throughput_mean_img_s"] == pytest.approx(128 / step_w1, rel=1e-12)
    assert one["whole_run_throughput_img_s"] == pytest.approx(2048 / 2.0, rel=1e-12)
    assert two["speedup_mean"] == pytest.approx((256 / (0.98 * 1.0 / 8)) * step_w1 / 128, rel=1e-12)
    assert two["speedup_whole_run_mean"] == pytest.approx(2.0, rel=1e-12)
    assert one["warmup_share_first_epoch"] == pytest.approx(16 * step_w1 / 2.0, rel=1e-12)
    assert two["warmup_share_first_epoch"] == pytest.approx(0.0, abs=1e-12)
    assert two["step_skew_max"] == pytest.approx(1.01) and two["step_cv_within_run"] == pytest.approx(0.0, abs=1e-9)
    assert "double as the timing repetitions" in result["statistics"]["repetitions"]


def test_runs_record_their_planned_and_their_real_start_order(tmp_path):
    """The factory's runs started by world size, then seed; the plan put them in rounds by seed."""
    paths, names = write_grid(tmp_path, [1, 2], [128], [0, 1])
    planned = timed_order(names, 0)
    result, _ = build_summary(paths, RUN_SCHEMA, planned, {"grid": {"order_seed": 0}})
    runs = {r["name"]: r for r in result["runs"]}
    assert [runs[n]["planned_order"] for n in planned] == [1, 2, 3, 4]
    assert [runs[n]["start_order"] for n in ("ws1_bs128_seed0", "ws1_bs128_seed1", "ws2_bs128_seed0")] == [1, 2, 3]
    assert "grid.order_seed = 0" in result["statistics"]["run_order"]


def test_step_distributions_pool_the_steady_steps_and_keep_every_ranks_median(tmp_path):
    result, _, paths = summary_for(tmp_path, world_sizes=(1, 4), seeds=(0,))
    one, four = result["step_distributions"]
    run = json.loads(next(p for p in paths if p.name == "ws4_bs128_seed0.json").read_text())
    step = run["epochs"][0]["step_times_s"][0]  # the factory's steps are equal within an epoch
    assert four["world_size"] == 4 and four["median_s"] == pytest.approx(step)
    assert four["rank_median_s"] == pytest.approx([step * (1 + r / 100) for r in range(4)])
    assert one["steps"] == 48 - 4 and four["steps"] == 12 - 1  # a tenth of the steps is the warm-up


def test_accuracy_against_one_worker_is_paired_by_seed_and_its_cost_named(tmp_path):
    """The factory's accuracy falls by 2 log2(W) points at every seed: -2 at W = 2, -4 at W = 4, so the
    study costs more than one point from W = 2."""
    result, _, _ = summary_for(tmp_path)
    one, two, four = result["rows"]
    assert one["acc_change_vs_one"] == 0.0 and two["acc_change_vs_one"] == pytest.approx(-2.0)
    assert four["acc_change_vs_one"] == pytest.approx(-4.0) and four["n_acc_change_vs_one"] == 3
    (headline,) = result["headlines"]
    assert (headline["acc_cost_ws"], headline["acc_cost_change"], headline["acc_cost_n"]) == (2, pytest.approx(-2.0), 3)


def test_a_recipe_that_holds_accuracy_names_no_cost(tmp_path):
    result, _, _ = summary_for(tmp_path, world_sizes=(1,), seeds=(0, 1, 2))
    assert result["headlines"][0]["acc_cost_ws"] is None


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
        assert row["speedup_mean"] == pytest.approx(math.prod(speedups) ** (1 / 3))  # geometric mean
        if row["world_size"] > 1:  # the seeds disagree, so the interval has a width
            assert row["speedup_ci95_high"] - row["speedup_ci95_low"] > 0.01


def test_a_seed_without_its_one_worker_run_is_left_out_of_the_speedup(tmp_path):
    """Seed 2 has no W = 1 run: its W = 2 and 4 runs get no speedup (not one against the other seeds' mean
    one-worker time), the speedup is over seeds 0 and 1 only (n = 2: no interval), and the summary names them."""
    result, _, paths = summary_for(tmp_path, skip={(1, 128, 2)})
    runs = {(r["world_size"], r["seed"]): r for r in result["runs"]}
    assert runs[(2, 2)]["speedup"] is None and runs[(4, 2)]["efficiency"] is None
    assert [(u["world_size"], u["seed"]) for u in result["speedup_unpaired"]] == [(2, 2), (4, 2)]
    assert result["speedup_unpaired"][0]["name"] == "ws2_bs128_seed2"
    two = next(r for r in result["rows"] if r["world_size"] == 2)
    assert two["n_seeds"] == 3 and two["n_speedup"] == 2
    assert two["speedup_mean"] == pytest.approx(math.sqrt(runs[(2, 0)]["speedup"] * runs[(2, 1)]["speedup"]))
    assert two["speedup_ci95_low"] is None and two["speedup_ci95_high"] is None


def test_amdahl_fit_recovers_the_serial_fraction(tmp_path):
    """Times that follow Amdahl's law exactly, T(W) = 10 (0.2 + 0.8 / W), one thread per worker: f = 0.2."""
    paths = [
        write_run(tmp_path, f"ws{ws}_bs128_seed0", make_run(ws, 128, 0, train_time=10 * (0.2 + 0.8 / ws), threads=1))
        for ws in (1, 2, 4, 8)
    ]
    result, _ = build_summary(paths, RUN_SCHEMA)
    assert result["amdahl_serial_fraction"] == {128: pytest.approx(0.2, abs=1e-4)}
    assert [r["karp_flatt"] for r in result["rows"][1:]] == pytest.approx([0.2, 0.2, 0.2])


def test_with_the_cores_fixed_there_is_no_karp_flatt_or_amdahl_fit(tmp_path):
    """The factory splits 8 cores among the ranks: W = 1 already had them all."""
    result, _, _ = summary_for(tmp_path)
    assert result["resource_model"]["kind"] == "cores_fixed"
    assert all(r["karp_flatt"] is None for r in result["rows"])
    assert result["amdahl_serial_fraction"] == {128: None}
    laws = result["statistics"]["scaling_laws"]
    assert laws["left_out"] == [None] and "already used every core" in laws["reason"]


def test_a_single_seed_with_a_prediction_reports_n_1_and_no_nan(tmp_path):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0])
    comm = write_comm(tmp_path / "comm", [2, 4])
    result, _ = build_summary(paths, RUN_SCHEMA, expected, {"predict": {"bootstrap": 20}}, comm=comm)
    json.dumps(result, allow_nan=False)  # summary.json is strict JSON: no NaN anywhere
    assert [r["n_speedup"] for r in result["rows"]] == [1, 1]
    (case,) = result["prediction"]["validation"]
    assert case["validated"] and case["step_time_rel_error_ci95_low"] is not None  # one run drawn again: its own


def test_a_single_seed_has_no_interval(tmp_path):
    result, _, _ = summary_for(tmp_path, seeds=(0,))
    assert all(row["speedup_ci95_low"] is None and row["test_acc_std"] is None for row in result["rows"])
    assert all(row["n_speedup"] == 1 and row["speedup_mean"] is not None for row in result["rows"])
    assert all(h["acc_change_ci95_low"] is None and h["n_acc_change"] == 1 for h in result["headlines"])
    json.dumps(result, allow_nan=False)  # no NaN anywhere: intervals are null


def test_two_seeds_give_values_but_no_t1_interval(tmp_path):
    result, _, _ = summary_for(tmp_path, seeds=(0, 1))
    for row in result["rows"]:
        assert row["n_speedup"] == 2 and row["speedup_mean"] is not None and row["test_acc_mean"] is not None
        assert [row[k] for k in ("speedup_ci95_low", "efficiency_ci95_high", "test_acc_ci95_low")] == [None] * 3


def test_time_to_target_counts_every_run(tmp_path):
    """Seed 0's run at W = 4 never reached the target: no mean that drops it, and the count says 2 of 3."""
    paths, expected = write_grid(tmp_path, [1, 4], [128], [0, 1, 2])
    for path in paths:
        run = json.loads(path.read_text())
        if (run["config"]["world_size"], run["config"]["seed"]) == (4, 0):
            run["totals"]["time_to_target_s"] = None
            path.write_text(json.dumps(run))
    result, _ = build_summary(paths, RUN_SCHEMA, expected)
    one, four = result["rows"]
    assert (one["n_reached_target"], one["n_seeds"]) == (3, 3) and one["time_to_target_mean_s"] is not None
    assert (four["n_reached_target"], four["n_seeds"]) == (2, 3) and four["time_to_target_mean_s"] is None


def test_grid_without_world_size_one_is_an_error(tmp_path):
    paths, _ = write_grid(tmp_path, [2, 4], [128], [0])
    with pytest.raises(RunsError, match="no world size 1 run .* add 1 to grid.world_sizes"):
        build_summary(paths, RUN_SCHEMA)


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
            "variant": None,
            "batch_size": 128,
            "base_ws": 1,
            "largest_ws": 4,
            "best_speedup": best["speedup_mean"],
            "best_speedup_ci95_low": best["speedup_ci95_low"],
            "best_speedup_ci95_high": best["speedup_ci95_high"],
            "best_n": 3,
            "best_ws": best["world_size"],
            "speedup_largest": rows[4]["speedup_mean"],
            "efficiency_largest": rows[4]["efficiency_mean"],
            "efficiency_largest_ci95_low": rows[4]["efficiency_ci95_low"],
            "efficiency_largest_ci95_high": rows[4]["efficiency_ci95_high"],
            "n_largest": 3,
            "threads_base": 8,
            "threads_largest": 2,
            "acc_base": rows[1]["test_acc_mean"],
            "acc_largest": rows[4]["test_acc_mean"],
            # The factory's accuracy falls by 2 points per doubling, on every seed: no spread.
            "acc_change": pytest.approx(-4.0),
            "acc_change_ci95_low": pytest.approx(-4.0),
            "acc_change_ci95_high": pytest.approx(-4.0),
            "n_acc_change": 3,
            # More than a point lost from W = 2 on (-2 there, paired by seed).
            "acc_cost_points": 1.0,
            "acc_cost_ws": 2,
            "acc_cost_change": pytest.approx(-2.0),
            "acc_cost_change_ci95_low": pytest.approx(-2.0),
            "acc_cost_change_ci95_high": pytest.approx(-2.0),
            "acc_cost_n": 3,
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


def test_headline_accuracy_change_is_paired_by_seed(tmp_path):
    """Seed 2 lacks its W = 4 run: the change is over seeds 0 and 1 only, both ends over those seeds,
    not the W = 4 mean of two seeds minus the W = 1 mean of three (which the seed offset would bias)."""
    result, _, _ = summary_for(tmp_path, skip={(4, 128, 2)})
    (h,) = result["headlines"]
    assert h["n_acc_change"] == 2 and h["acc_change"] == pytest.approx(-4.0)
    assert h["acc_base"] == pytest.approx(60.5) and h["acc_largest"] == pytest.approx(56.5)  # seeds 0 and 1
    assert h["acc_change_ci95_low"] is None  # n = 2: no interval
    rows = {r["world_size"]: r for r in result["rows"]}
    assert rows[4]["test_acc_mean"] - rows[1]["test_acc_mean"] == pytest.approx(-4.5)  # unpaired would say


def test_runs_that_overlapped_on_a_host_are_named(tmp_path):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    shared = json.loads(paths[3].read_text())  # ws2 seed 1, in the same minute as ws1 seed 0
    shared["timestamps"] = dict(json.loads(paths[0].read_text())["timestamps"])
    paths[3].write_text(json.dumps(shared))
    result, _ = build_summary(paths, RUN_SCHEMA, expected)
    assert result["overlaps"] == [{"host": "node-a", "runs": ["ws1_bs128_seed0", "ws2_bs128_seed1"]}]


def test_timing_lock_waits_are_recorded(tmp_path):
    paths = [
        write_run(tmp_path, f"ws{ws}_bs128_seed0", make_run(ws, 128, 0, lock_wait=wait))
        for ws, wait in ((1, 0.5), (2, 2.0))
    ]
    result, _ = build_summary(paths, RUN_SCHEMA)
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
    result, _ = build_summary(paths, RUN_SCHEMA)
    hosts = next(m for m in result["machine"] if m["key"] == "hostnames")
    assert hosts == {"key": "hostnames", "label": "Hosts", "values": ["node-a", "node-b"]}


# --------------------------------------------------------------------------- the command line


def test_cli_writes_csv_and_json(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0, 1])
    config = tmp_path / "config.json"
    config.write_text(json.dumps(GRID_CONFIG))
    csv, js = tmp_path / "summary.csv", tmp_path / "summary.json"
    assert (
        main(
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
    rc = main(
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
    rc = main(
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


# --------------------------------------------------------------------------- variants


def test_known_answer_throughput_ratio_time_to_target_and_accuracy_difference(tmp_path):
    """Three seeds of a baseline and a variant at W = 1 with chosen times, accuracies and times to
    target; every number worked out by hand."""
    times = {"base": (12.0, 10.0, 9.0), "fast": (8.0, 5.0, 6.0)}
    offsets = {"base": (0.0, 0.0, 0.0), "fast": (-1.0, -2.0, -0.5)}
    to_target = {"base": (9.0, 8.0, 7.0), "fast": (9.0, 6.0, None)}  # fast seed 2 never reached it
    paths = []
    for variant in ("base", "fast"):
        (tmp_path / variant).mkdir()
        for seed in range(3):
            run = make_run(1, 128, seed, train_time=times[variant][seed], acc_offset=offsets[variant][seed])
            run["totals"]["time_to_target_s"] = to_target[variant][seed]
            paths.append(write_run(tmp_path / variant, f"ws1_bs128_seed{seed}", run))
    expected = [f"{v}/ws1_bs128_seed{s}" for v in ("base", "fast") for s in range(3)]
    result, _ = build_summary(paths, RUN_SCHEMA, expected)
    base, fast = result["rows"]
    assert (base["variant"], fast["variant"]) == ("base", "fast") and result["variants"]["baseline"] == "base"
    # Throughput 6144 images / time: the ratios are 12/8, 10/5, 9/6 = 1.5, 2, 1.5, as in the speedup test:
    # geometric mean 4.5 ** (1/3), interval gmean * (4/3) ** (+- t(0.975, 2) / 3).
    gmean, factor = 4.5 ** (1 / 3), (4 / 3) ** (4.302652729911275 / 3)
    assert fast["n_pairs_vs_baseline"] == 3
    assert fast["throughput_ratio_vs_baseline"] == pytest.approx(gmean, rel=1e-9)
    assert fast["throughput_ratio_ci95_low"] == pytest.approx(gmean / factor, rel=1e-9)
    assert fast["throughput_ratio_ci95_high"] == pytest.approx(gmean * factor, rel=1e-9)
    # The paired t-test of the log ratios: t = mean log / (d / 3) with d = ln(4/3), 2 degrees of freedom.
    t = math.log(gmean) / (math.log(4 / 3) / 3)
    assert fast["throughput_ratio_p"] == pytest.approx(2 * sp.t.sf(t, 2), rel=1e-9)
    # Accuracy differences -1, -2, -0.5: mean -7/6; squared deviations 1/36 + 25/36 + 16/36, over 2 is
    # 7/12; sd / sqrt(3) = sqrt(7) / 6.
    half = 4.302652729911275 * math.sqrt(7) / 6
    assert fast["test_acc_diff_vs_baseline"] == pytest.approx(-7 / 6, rel=1e-9)
    assert fast["test_acc_diff_ci95_low"] == pytest.approx(-7 / 6 - half, rel=1e-9)
    assert fast["test_acc_diff_ci95_high"] == pytest.approx(-7 / 6 + half, rel=1e-9)
    assert fast["test_acc_diff_p"] == pytest.approx(2 * sp.t.sf((7 / 6) / (math.sqrt(7) / 6), 2), rel=1e-9)
    # Time to target: only seeds 0 and 1 pair, 9/9 and 6/8: geometric mean sqrt(0.75); two pairs give no
    # interval and no test.
    assert fast["n_pairs_reached_target"] == 2
    assert fast["time_to_target_ratio_vs_baseline"] == pytest.approx(math.sqrt(0.75), rel=1e-12)
    assert [fast[f"time_to_target_ratio_{k}"] for k in ("ci95_low", "ci95_high", "p", "p_holm")] == [None] * 4
    # Holm over the two tests (p about 0.035 and 0.118): 2 x the smaller, then the larger (at least that).
    small = 2 * fast["throughput_ratio_p"]
    assert fast["throughput_ratio_p_holm"] == pytest.approx(small, rel=1e-12)
    assert fast["test_acc_diff_p_holm"] == pytest.approx(max(small, fast["test_acc_diff_p"]), rel=1e-12)
    assert not any(fast[f"{name}_marked"] for name in ("throughput_ratio", "time_to_target_ratio", "test_acc_diff"))
    assert result["variants"]["tests"]["n_tests"] == 2
    assert result["variants"]["tests"]["min_effect"] == {
        "throughput": 0.02,
        "time_to_target": 0.02,
        "accuracy_points": 0.5,
    }
    # The baseline against itself: ratio 1 and difference 0, without spread, and not tested.
    assert [base[k] for k in ("throughput_ratio_vs_baseline", "throughput_ratio_ci95_low")] == [1.0, 1.0]
    assert [base[k] for k in ("time_to_target_ratio_vs_baseline", "n_pairs_reached_target")] == [1.0, 3]
    assert [base[k] for k in ("test_acc_diff_vs_baseline", "test_acc_diff_ci95_high")] == [0.0, 0.0]
    assert base["throughput_ratio_p"] is None and base["test_acc_diff_marked"] is False
    speed = result["variants"]["speed_vs_accuracy"]
    assert [s["variant"] for s in speed] == ["base", "fast"]
    assert speed[1]["time_to_target_speedup"] == pytest.approx(1 / math.sqrt(0.75))
    assert speed[1]["time_to_target_speedup_ci95_low"] is None  # n = 2
    assert speed[1]["throughput_speedup"] == fast["throughput_ratio_vs_baseline"]
    assert speed[1]["throughput_speedup_ci95_low"] == pytest.approx(gmean / factor, rel=1e-9)


def test_a_cell_is_marked_only_where_the_corrected_test_and_the_effect_size_agree(tmp_path):
    """Three seeds, bf16 1.9x the throughput and half a point less accurate on every seed, fp16hook
    1.01x: bf16's throughput and accuracy are marked; fp16hook's 1 % (give or take its jitter) is not."""
    variants = {**FACTORY_VARIANTS, "fp16hook": {**FACTORY_VARIANTS["fp16hook"], "throughput_factor": 1.01}}
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1, 2], variants=variants)
    config = {**VARIANT_CONFIG, "grid": {**VARIANT_CONFIG["grid"], "seeds": [0, 1, 2]}}
    result, _ = build_summary(paths, RUN_SCHEMA, expected, config)
    rows = {(r["variant"], r["world_size"]): r for r in result["rows"]}
    for ws in (1, 2):
        fp16, bf16 = rows[("fp16hook", ws)], rows[("bf16", ws)]
        assert fp16["throughput_ratio_p_holm"] is not None and not fp16["throughput_ratio_marked"]
        assert bf16["throughput_ratio_marked"] and bf16["test_acc_diff_marked"]
        assert bf16["throughput_ratio_p_holm"] >= bf16["throughput_ratio_p"]
    # A larger minimum effect unmarks bf16's accuracy: half a point is below 1.
    config["report"] = {"min_effect": {"accuracy_points": 1.0}}
    result, _ = build_summary(paths, RUN_SCHEMA, expected, config)
    assert not any(r["test_acc_diff_marked"] for r in result["rows"])
    assert result["variants"]["tests"]["min_effect"]["accuracy_points"] == 1.0


def test_variant_rows_speedup_within_a_variant_and_ratios_from_the_runs(tmp_path):
    result, table, paths = variant_study(tmp_path)
    assert [(r["variant"], r["world_size"]) for r in result["rows"]] == [
        (v, ws) for v in ("fp32", "fp16hook", "bf16") for ws in (1, 2)
    ]  # the config's order, not the alphabet's
    assert list(table.columns[:2]) == ["variant", "world_size"] and "throughput_ratio_vs_baseline" in table
    for row in result["rows"]:
        v, ws = row["variant"], row["world_size"]
        own = per_seed(paths, v, 1, "train_time_s")  # speedup against the variant's own W = 1
        times = per_seed(paths, v, ws, "train_time_s")
        assert row["speedup_mean"] == pytest.approx(math.sqrt(math.prod(own[s] / times[s] for s in (0, 1))))
        mine, base = per_seed(paths, v, ws, "throughput_img_s"), per_seed(paths, "fp32", ws, "throughput_img_s")
        ratio = math.sqrt(math.prod(mine[s] / base[s] for s in (0, 1)))  # geometric mean
        assert row["throughput_ratio_vs_baseline"] == pytest.approx(ratio)
        assert row["n_pairs_vs_baseline"] == 2
    bf16 = [r for r in result["rows"] if r["variant"] == "bf16"]
    assert all(r["test_acc_diff_vs_baseline"] == pytest.approx(-0.5) for r in bf16)
    assert all(1.9 * 0.95 / 1.05 < r["throughput_ratio_vs_baseline"] < 1.9 * 1.05 / 0.95 for r in bf16)
    assert result["variants"]["names"] == ["fp32", "fp16hook", "bf16"]
    assert result["variants"]["overrides"]["bf16"] == {"train": {"precision": "bf16"}}
    assert result["amdahl_serial_fraction"].keys() == {"fp32", "fp16hook", "bf16"}
    assert {r["name"] for r in result["runs"]} >= {"fp32/ws1_bs128_seed0", "bf16/ws2_bs128_seed1"}
    assert result["overlaps"] == []  # the same (W, B, seed) of two variants ran at different times
    assert "throughput_ratio_vs_baseline" in result["definitions"]


def test_the_baseline_is_grid_baseline(tmp_path):
    config = {**VARIANT_CONFIG, "grid": {**VARIANT_CONFIG["grid"], "baseline": "bf16"}}
    result, _, _ = variant_study(tmp_path, config)
    assert result["variants"]["baseline"] == "bf16"
    rows = {(r["variant"], r["world_size"]): r for r in result["rows"]}
    assert rows[("bf16", 2)]["throughput_ratio_vs_baseline"] == 1.0
    assert rows[("fp32", 2)]["test_acc_diff_vs_baseline"] == pytest.approx(0.5)
    speed = {(s["variant"], s["world_size"]): s for s in result["variants"]["speed_vs_accuracy"]}
    assert (
        speed[("bf16", 1)]["throughput_speedup"] == 1.0 and speed[("fp32", 1)]["throughput_speedup"] < 0.6
    )  # 1 / 1.9, jittered
    config["grid"] = {**config["grid"], "baseline": "fp8"}
    with pytest.raises(RunsError, match=r"grid.baseline is 'fp8', which is not a variant"):
        variant_study(tmp_path / "again", config)


def test_missing_run_of_a_variant_is_named_with_its_variant(tmp_path):
    result, _, _ = variant_study(tmp_path, skip={("bf16", 2, 128, 1)})
    assert result["missing_runs"] == [{"variant": "bf16", "world_size": 2, "batch_size": 128, "seed": 1}]
    rows = {(r["variant"], r["world_size"]): r for r in result["rows"]}
    assert rows[("bf16", 2)]["n_seeds"] == 1 and rows[("bf16", 2)]["n_pairs_vs_baseline"] == 1


def test_cli_csv_has_a_variant_column_only_with_variants(tmp_path):
    for name, config, variants in (("plain", GRID_CONFIG, None), ("variants", VARIANT_CONFIG, FACTORY_VARIANTS)):
        paths, expected = write_grid(tmp_path / name / "runs", [1, 2], [128], [0, 1], variants=variants)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        csv, js = tmp_path / name / "summary.csv", tmp_path / name / "summary.json"
        args = ["--runs", *map(str, paths), "--config", str(tmp_path / name / "config.json"), "--expect", *expected]
        assert main([*args, "--csv", str(csv), "--json", str(js)]) == 0
    plain = pd.read_csv(tmp_path / "plain/summary.csv")
    assert list(plain.columns) == SUMMARY_COLUMNS  # as before variants existed
    summary = json.loads((tmp_path / "plain/summary.json").read_text())
    assert summary["variants"] is None and all(r["variant"] is None for r in summary["rows"])
    assert "throughput_ratio_vs_baseline" not in summary["rows"][0]
    table = pd.read_csv(tmp_path / "variants/summary.csv")
    assert list(table.columns) == ["variant", *SUMMARY_COLUMNS, *COMPARISON_COLUMNS]
    assert table.variant.tolist() == ["fp32", "fp32", "fp16hook", "fp16hook", "bf16", "bf16"]
    assert table.test_acc_diff_vs_baseline.tolist() == pytest.approx([0, 0, 0, 0, -0.5, -0.5])


# --------------------------------------------------------------------------- the resource model


def test_resource_model_cores_fixed_or_cores_per_worker_fixed(tmp_path):
    result, _, _ = summary_for(tmp_path / "auto")  # the factory splits 8 cores among the ranks
    model = result["resource_model"]
    assert model["kind"] == "cores_fixed" and model["by_variant"] is None
    assert model["by_world_size"] == [
        {"world_size": 1, "threads_per_worker": [8], "cores": [8]},
        {"world_size": 2, "threads_per_worker": [4], "cores": [8]},
        {"world_size": 4, "threads_per_worker": [2], "cores": [8]},
    ]
    result, _, _ = summary_for(tmp_path / "fixed", threads=2)
    assert result["resource_model"]["kind"] == "cores_per_worker_fixed"
    assert [w["cores"] for w in result["resource_model"]["by_world_size"]] == [[2], [4], [8]]


def test_resource_model_is_mixed_when_variants_differ(tmp_path):
    variants = {"split": {}, "one_thread": {"threads": 1, "config_overrides": {}}}
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0], variants=variants)
    result, _ = build_summary(paths, RUN_SCHEMA, expected)
    model = result["resource_model"]
    assert model["kind"] == "mixed"
    assert model["by_variant"] == {"split": "cores_fixed", "one_thread": "cores_per_worker_fixed"}


# --------------------------------------------------------------------------- the scaling prediction


def test_prediction_by_hand_for_one_point(tmp_path):
    paths, comm, config = predicted_study(tmp_path)
    result, _ = build_summary(paths, RUN_SCHEMA, config=load_config(config), comm=comm)
    prediction = result["prediction"]
    assert result["prediction_reason"] is None and prediction["variant"] is None
    assert prediction["comm_world_sizes"] == [2] and prediction["comm_files"] == [str(comm[0])]
    assert prediction["collective"]["alpha_s"] == pytest.approx(50e-6, rel=1e-6)
    assert prediction["collective"]["bandwidth_bytes_s"] == pytest.approx(1e9, rel=1e-6)
    assert prediction["formula"].startswith("T(n, W) = c + 2 (W - 1) alpha + 2 (W - 1) / W * n / B")
    assert prediction["algorithm"] == "ring" and prediction["collective"]["constant_s"] == 0.0
    assert prediction["networks"]["1GbE"] | {} == pytest.approx(
        {"bandwidth_gbit": 1.0, "latency_us": 50.0, "alpha_s": 100e-6, "bandwidth_bytes_s": 1.25e8}
    )
    # The reference worker is W = 2: per step (1.0 s / 8 steps = 0.125 s) data 2 % = 0.0025 s, the optimizer step
    # 96 % = 0.12 s of which 8 % exposed communication (0.0096 s), so compute 0.1104 s; other 0.0025 s; busy
    # communication 2 x exposed: half of it hidden. At W = 4 on the measured network, over the runs' buckets
    # (4194304 and 397352 bytes): busy = 2 x 6 x 50e-6 + 1.5 x 4591656 / 1e9 = 7.487484e-3 s, exposed half of it.
    # The wait for the slowest rank: at W = 2 the fit says busy = 2 x 2 x 50e-6 + 4591656 / 1e9 = 4.791656e-3 s,
    # exposed half of it, 2.395828e-3 s, of the 0.0096 s measured: 7.204172e-3 s of waiting, times
    # e(4) / e(2) = 1.0293754 / 0.5641896 = 1.8245203 at W = 4: 1.3144158e-2 s.
    # step = 0.0025 + 0.1104 + 0.0025 + 3.743742e-3 + 1.3144158e-2 = 0.1322879 s; throughput 4 x 128 / step;
    # speedup against the model's own one worker: the reference worker alone, 0.0025 + 0.1104 + 0.0025 = 0.1154 s
    # per step of 128 images.
    (row,) = [
        r
        for r in prediction["rows"]
        if (r["network"], r["batch_mode"], r["world_size"]) == ("measured", "per_worker", 4)
    ]
    assert row["comm_busy_s"] == pytest.approx(7.487484e-3, rel=1e-6)
    assert row["rank_wait_s"] == pytest.approx(1.3144158e-2, rel=1e-6)
    assert row["step_time_s"] == pytest.approx(0.1322879, rel=1e-6)
    assert row["throughput_samples_s"] == pytest.approx(512 / 0.1322879, rel=1e-6)
    one = 128 / 0.1154
    assert row["speedup"] == pytest.approx(512 / 0.1322879 / one, rel=1e-6)
    assert row["efficiency"] == pytest.approx(512 / 0.1322879 / one / 4, rel=1e-6)
    (curve,) = [c for c in prediction["curves"] if (c["network"], c["batch_mode"]) == ("1GbE", "per_worker")]
    assert curve["world_sizes"] == [1, 2, 4, 8, 16, 32, 64]  # up to predict.max_world_size
    assert curve["speedup"][0] == pytest.approx(1.0, rel=1e-12)  # the model's own one worker: 1 at W = 1
    assert curve["efficiency"][0] == pytest.approx(1.0, rel=1e-12)
    # All-reduce timed at W = 2 only: predicting W = 2 would fit its own timings, so it is not validated.
    (case,) = prediction["validation"]
    assert (case["held_out"], case["validated"]) == (2, False) and not prediction["validated"]
    assert "prediction-check.yaml" in case["reason"]
    # With timings at W = 4 as well, W = 2 is predicted from W = 1 and the fit to the W = 4 timings alone (the
    # same alpha and B): nothing hidden known at W = 1; per step data 0.002 s, compute 0.096 - 0.00192 =
    # 0.09408 s, other 0.002 s, and all of the busy 2 x 2 x 50e-6 + 4591656 / 1e9 = 4.791656e-3 s exposed:
    # 0.102871656 s against the measured 0.125 s.
    (tmp_path / "checked").mkdir()
    paths, comm, config = predicted_study(tmp_path / "checked", comm_world_sizes=(2, 4))
    result, _ = build_summary(paths, RUN_SCHEMA, config=load_config(config), comm=comm)
    (case,) = result["prediction"]["validation"]
    assert (case["held_out"], case["fit_world_sizes"], case["comm_world_sizes"]) == (2, [1], [4])
    assert case["predicted_step_time_s"] == pytest.approx(0.102871656, rel=1e-6)
    assert case["step_time_rel_error"] == pytest.approx(0.102871656 / 0.125 - 1, rel=1e-6)
    assert case["speedup_rel_error"] == pytest.approx((256 / 0.102871656 / 1280) / (2048 / 1.0 / 1280) - 1, rel=1e-6)
    # Exact timings and runs whose seeds differ only in accuracy: the bootstrap's interval is the estimate itself.
    assert case["predicted_step_time_s_ci95_low"] == pytest.approx(0.102871656, rel=1e-6)
    assert case["predicted_step_time_s_ci95_high"] == pytest.approx(0.102871656, rel=1e-6)
    assert prediction["assumptions"] and "prediction" in result["definitions"]


def test_cli_writes_the_prediction_csv_and_summary_csv_keeps_its_columns(tmp_path):
    paths, comm, config = predicted_study(tmp_path)
    out = {name: tmp_path / name for name in ("summary.csv", "summary.json", "prediction.csv")}
    args = ["--runs", *map(str, paths), "--schema", str(RUN_SCHEMA), "--config", str(config), "--comm", *map(str, comm)]
    args += ["--csv", str(out["summary.csv"]), "--json", str(out["summary.json"])]
    assert main([*args, "--prediction-csv", str(out["prediction.csv"])]) == 0
    summary = json.loads(out["summary.json"].read_text())
    assert list(pd.read_csv(out["summary.csv"]).columns) == SUMMARY_COLUMNS
    table = pd.read_csv(out["prediction.csv"])
    assert len(table) == len(summary["prediction"]["rows"]) == 2 * (7 + 7)  # 2 networks x (per_worker + global)
    for row, expected in zip(table.to_dict(orient="records"), summary["prediction"]["rows"], strict=True):
        assert (row["network"], row["batch_mode"], row["world_size"]) == (
            expected["network"],
            expected["batch_mode"],
            expected["world_size"],
        )
        assert row["efficiency"] == pytest.approx(expected["efficiency"], rel=1e-5)
        assert row["step_time_s"] == pytest.approx(expected["step_time_s"], rel=1e-5)


def test_a_grid_of_one_worker_still_aggregates_without_a_prediction(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1], [128], [0, 1])
    csv, js, pred = tmp_path / "summary.csv", tmp_path / "summary.json", tmp_path / "prediction.csv"
    args = ["--runs", *map(str, paths), "--expect", *expected, "--comm", "--csv", str(csv), "--json", str(js)]
    assert main([*args, "--prediction-csv", str(pred)]) == 0
    summary = json.loads(js.read_text())
    assert summary["prediction"] is None
    assert "no world size of 2 or more" in summary["prediction_reason"]
    assert pred.read_text().startswith("runs_batch_mode,batch_size,network,world_size,batch_mode")
    assert len(pred.read_text().splitlines()) == 1  # the header alone


def test_the_prediction_is_the_baselines_with_variants(tmp_path):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1], variants=FACTORY_VARIANTS)
    comm = write_comm(tmp_path / "comm", [2, 4])  # timings at 4 too: W = 2 can be checked
    result, _ = build_summary(paths, RUN_SCHEMA, expected, VARIANT_CONFIG, comm=comm)
    baseline = result["variants"]["baseline"]
    assert result["prediction"]["variant"] == baseline
    baseline_runs = [json.loads(p.read_text()) for p in paths if p.parent.name == baseline]
    w2 = [r for r in baseline_runs if r["config"]["world_size"] == 2]
    period = sum(r["totals"]["train_time_s"] for r in w2) / sum(e["steps"] for r in w2 for e in r["epochs"])
    (case,) = result["prediction"]["validation"]
    assert case["measured_step_time_s"] == pytest.approx(period)  # the baseline's runs, not the other variant's


def test_timings_that_fit_no_model_leave_the_prediction_null_with_the_reason(tmp_path):
    paths, comm, config = predicted_study(tmp_path)
    flat = make_comm(2)
    for point in flat["sweep"] + flat["buckets"]:
        point["median_s"] = 1e-3 / math.log2(16 * point["bytes"])  # larger messages faster: no bandwidth to fit
    comm[0].write_text(json.dumps(flat))
    result, _ = build_summary(paths, RUN_SCHEMA, comm=comm)
    assert result["prediction"] is None
    assert result["prediction_reason"].startswith("the scaling model could not be fitted: the timings do not grow")
