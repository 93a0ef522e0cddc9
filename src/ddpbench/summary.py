"""Build the scaling summary from run JSONs: one row per (world_size, batch_size), or per
(variant, world_size, batch_size) with grid.variants, plus everything the report shows (headlines,
learning curves, the resource model, machine, method, overlaps).

Speedup is T(1)/T(W) on the training time (``totals.train_time_s``: training phases only,
no evaluation), paired by seed at the same batch size; efficiency = speedup / W; the
Karp-Flatt metric e = (1/S - 1/W) / (1 - 1/W) estimates the serial fraction from the mean
speedup. Confidence intervals use Student's t across seeds (ddpbench.stats).

With variants (the config's grid.variants, or --expect names <variant>/ws<W>_bs<B>_seed<S>), a run's
variant is its folder (results/runs/<variant>/...); speedup stays within a variant, and every variant
is compared with the baseline (grid.baseline, else the first) at the same world size and batch size,
paired by seed (ddpbench.comparison): throughput and time-to-target ratios, test-accuracy difference.

Every run is read and checked first (ddpbench.runs): against its file name (ws<W>_bs<B>_seed<S>.json)
and, given the workflow's config, against the grid's options (with its variant's overrides): a run that
disagrees is refused.

With ``--comm`` (ddpbench.commbench's all-reduce timings), summary.json's ``prediction`` holds the
scaling model of ``ddpbench.predict`` fitted to the runs (the baseline variant's, with variants) and
to those timings, for the config's ``predict.networks`` up to ``predict.max_world_size``; without
timings it is null and ``prediction_reason`` says why. ``--prediction-csv`` writes its rows.

    python -m ddpbench.summary --runs results/runs/*.json --schema workflow/schemas/run.schema.json \
        --config results/config.json --expect ws1_bs128_seed0 ... --comm results/comm/ws2.json \
        --csv results/summary.csv --json results/summary.json --prediction-csv results/prediction.csv
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from ddpbench.comparison import (
    COMPARISON_COLUMNS,
    PAIRED,
    VARIANT_DEFINITIONS,
    add_baseline_pairs,
    comparison,
    variants_summary,
)
from ddpbench.conditions import machine, method, overlaps, resource_model, shared_run_config
from ddpbench.io import atomic_write_json, atomic_write_text, utc_now
from ddpbench.predict import DEFAULT_MAX_WORLD_SIZE, parse_networks, predict_from_runs, prediction_csv
from ddpbench.runs import RunsError, checked_runs, load_comm, load_config
from ddpbench.runtable import add_speedup, expected_missing, records, runs_table
from ddpbench.stats import amdahl_fit, ci95, karp_flatt

SUMMARY_COLUMNS = [
    "world_size",
    "batch_size",
    "global_batch_size",
    "n_seeds",
    "train_time_mean_s",
    "train_time_std_s",
    "train_loop_mean_s",
    "throughput_mean_img_s",
    "throughput_std_img_s",
    "speedup_mean",
    "speedup_ci95_low",
    "speedup_ci95_high",
    "efficiency_mean",
    "efficiency_ci95_low",
    "efficiency_ci95_high",
    "test_acc_mean",
    "test_acc_std",
    "test_acc_ci95_low",
    "test_acc_ci95_high",
    "karp_flatt",
    "time_to_target_mean_s",
    "n_reached_target",
    "data_share",
    "compute_share",
    "comm_share",
    "other_share",
    "eval_time_mean_s",
    "peak_rss_max_bytes",
    "threads_per_worker",
    "nnodes",
]
DEFINITIONS = {
    "train_time": "sum of the epochs' training phases on rank 0, excluding evaluation, in seconds",
    "speedup": "T(1)/T(W) of train_time, paired by seed at the same batch size (a seed without its own "
    "one-worker run is compared with the mean one-worker time)",
    "time_to_target": "mean over the runs that reached the target accuracy (n_reached_target of them)",
    "efficiency": "speedup / world_size",
    "karp_flatt": "(1/S - 1/W) / (1 - 1/W) from the mean speedup; empty at W = 1",
    "ci95": "mean +- t(0.975, n-1) * sd / sqrt(n) across seeds; empty for one seed",
    "amdahl_serial_fraction": "f minimising the squared error of 1 / (f + (1 - f) / W) against mean speedup",
    "startup_s": "rank 0's process creation to its first training step (not part of train_time)",
    "lock_wait_s": "seconds the run waited for the host-wide timing lock before it started (empty without one)",
    "overlaps": "pairs of runs whose start-to-finish spans overlapped on a shared host (their timings interfere)",
    "resource_model": "cores_fixed: threads_per_worker x world_size the same at every world size (one rank at W = 1 "
    "already uses all the cores, so efficiency compares W ranks with one rank on the same cores); "
    "cores_per_worker_fixed: threads_per_worker the same at every world size (classic scaling efficiency); "
    "mixed: neither",
}
PREDICTION_DEFINITIONS = {
    "prediction": "the scaling model (ddpbench.predict) fitted to the runs and the all-reduce timings of "
    "ddpbench.commbench: predicted step time, throughput, speedup and efficiency per network and batch mode "
    "up to predict.max_world_size, with its fitted communication parameters, validation and assumptions",
    "prediction_validation": "a measured world size predicted from the others (the largest from the smaller ones; "
    "with three or more, each left out in turn): relative error of the step time and of the speedup",
}


# --------------------------------------------------------------------------- the summary rows


def summary_row(variant: str, ws: int, bs: int, g: pd.DataFrame) -> dict:
    """The summary row of one (variant, world size, batch size) from its runs ``g``."""
    train = g.train_time_s.sum()
    speedup_ci, acc_ci = ci95(g.speedup), ci95(g.test_acc)
    speedup_mean = g.speedup.mean()
    return {
        "variant": variant,
        "world_size": ws,
        "batch_size": bs,
        "global_batch_size": int(g.global_batch_size.iloc[0]),
        "n_seeds": len(g),
        "train_time_mean_s": g.train_time_s.mean(),
        "train_time_std_s": g.train_time_s.std(ddof=1),
        "train_loop_mean_s": g.train_loop_s.mean(),
        "throughput_mean_img_s": g.throughput_img_s.mean(),
        "throughput_std_img_s": g.throughput_img_s.std(ddof=1),
        "speedup_mean": speedup_mean,
        "speedup_ci95_low": speedup_ci[0],
        "speedup_ci95_high": speedup_ci[1],
        "efficiency_mean": speedup_mean / ws,
        "efficiency_ci95_low": speedup_ci[0] / ws,
        "efficiency_ci95_high": speedup_ci[1] / ws,
        "test_acc_mean": g.test_acc.mean(),
        "test_acc_std": g.test_acc.std(ddof=1),
        "test_acc_ci95_low": acc_ci[0],
        "test_acc_ci95_high": acc_ci[1],
        "karp_flatt": karp_flatt(speedup_mean, ws),
        "time_to_target_mean_s": g.time_to_target_s.mean(),
        "n_reached_target": int(g.time_to_target_s.notna().sum()),
        # Shares of the training time (summed over seeds), for the step-time breakdown.
        "data_share": g.data_time_s.sum() / train,
        "compute_share": g.compute_time_s.sum() / train,
        "comm_share": g.comm_exposed_time_s.sum() / train if g.comm_exposed_time_s.notna().all() else math.nan,
        "other_share": g.other_time_s.sum() / train,
        "eval_time_mean_s": g.eval_time_s.mean(),
        "peak_rss_max_bytes": int(g.peak_rss_max_bytes.max()),
        "threads_per_worker": int(g.threads_per_worker.iloc[0]),
        "nnodes": int(g.nnodes.max()),
        **comparison(g),
    }


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, batch size, world size), in the runs table's order."""
    groups = df.groupby(["variant", "batch_size", "world_size"], sort=False)
    rows = [summary_row(v, ws, bs, g) for (v, bs, ws), g in groups]
    return pd.DataFrame(rows, columns=["variant", *SUMMARY_COLUMNS, *COMPARISON_COLUMNS])


def summary_columns(has_variants: bool) -> tuple[list[str], list[str]]:
    """(summary.csv's columns, summary.json's row keys): without variants the CSV keeps its columns."""
    if has_variants:
        columns = ["variant", *SUMMARY_COLUMNS, *COMPARISON_COLUMNS]
        return columns, columns
    return SUMMARY_COLUMNS, ["variant", *SUMMARY_COLUMNS]


def amdahl_fits(summary: pd.DataFrame) -> dict:
    """The Amdahl serial fraction per batch size ({batch_size: f}); with variants per variant
    ({variant: {batch_size: f}})."""
    fits = {
        (v, int(bs)): amdahl_fit(g.world_size, g.speedup_mean)
        for (v, bs), g in summary.groupby(["variant", "batch_size"], sort=False)
    }
    if all(v == "" for v, _ in fits):
        return {bs: f for (_, bs), f in fits.items()}
    nested: dict[str, dict] = {}
    for (v, bs), f in fits.items():
        nested.setdefault(v, {})[bs] = f
    return nested


# --------------------------------------------------------------------------- what the report shows


def headlines(summary: pd.DataFrame) -> list[dict]:
    """Per (variant, batch size): the best mean speedup, the speedup and efficiency at the largest
    world size, and the accuracy change from the smallest to the largest world size."""
    out = []
    for (variant, bs), g in summary.groupby(["variant", "batch_size"], sort=False):
        base, largest = g.iloc[0], g.iloc[-1]  # the summary is sorted by world size within a group
        best = g.loc[g.speedup_mean.idxmax()] if g.speedup_mean.notna().any() else base
        out.append(
            {
                "variant": variant,
                "batch_size": int(bs),
                "base_ws": int(base.world_size),
                "largest_ws": int(largest.world_size),
                "best_speedup": best.speedup_mean,
                "best_ws": int(best.world_size),
                "speedup_largest": largest.speedup_mean,
                "efficiency_largest": largest.efficiency_mean,
                "threads_base": int(base.threads_per_worker),
                "threads_largest": int(largest.threads_per_worker),
                "acc_base": base.test_acc_mean,
                "acc_largest": largest.test_acc_mean,
                "acc_change": largest.test_acc_mean - base.test_acc_mean,
            }
        )
    return records(pd.DataFrame(out))


def learning_curves(runs: list[dict], order: list[str] | None = None) -> list[dict]:
    """Per (variant, batch size, world size): test accuracy and loss per epoch, averaged over seeds
    (only the epochs every seed has)."""
    rank = {name: i for i, name in enumerate(order or [])}
    epochs = pd.DataFrame(
        [
            {
                "variant": r.get("_variant", ""),
                "batch_size": r["config"]["batch_size"],
                "world_size": r["config"]["world_size"],
                "seed": r["config"]["seed"],
                "epoch": e["epoch"],
                "test_acc": e["test_acc"],
                "test_loss": e["test_loss"],
            }
            for r in runs
            for e in r["epochs"]
        ]
    )
    out = []
    groups = epochs.groupby(["variant", "batch_size", "world_size"], sort=True)
    for (variant, bs, ws), g in sorted(groups, key=lambda item: (rank.get(item[0][0], 0), *item[0][1:])):
        n_seeds = g.seed.nunique()
        mean = g.groupby("epoch").agg(
            test_acc=("test_acc", "mean"), test_loss=("test_loss", "mean"), n=("seed", "size")
        )
        mean = mean[mean.n == n_seeds]
        out.append(
            {
                "variant": variant or None,
                "batch_size": int(bs),
                "world_size": int(ws),
                "n_seeds": int(n_seeds),
                "epoch": [int(e) for e in mean.index],
                "test_acc": mean.test_acc.tolist(),
                "test_loss": mean.test_loss.tolist(),
            }
        )
    return out


# --------------------------------------------------------------------------- the scaling prediction


def prediction_settings(config: dict | None) -> tuple[dict | None, int]:
    """The config's predict.networks (None: ddpbench.predict's defaults) and predict.max_world_size,
    the networks checked here so that a bad one fails the aggregation with its fix."""
    settings = (config or {}).get("predict") or {}
    networks = settings.get("networks")
    try:
        parse_networks(networks)
    except ValueError as err:
        raise RunsError(f"config predict.networks: {err}") from err
    return networks, int(settings.get("max_world_size") or DEFAULT_MAX_WORLD_SIZE)


def scaling_prediction(
    runs: list[dict], comm: list[dict], config: dict | None, baseline: str | None
) -> tuple[dict | None, str | None]:
    """(summary.json's prediction, None), or (None, why there is none). The prediction is the baseline
    variant's with variants: the comm timings are the baseline's too."""
    networks, max_world_size = prediction_settings(config)
    if not comm:
        return None, (
            "no all-reduce timings (results/comm/): the grid measures no world size of 2 or more on one node, "
            "so there is no communication to fit the model to; add 2 to grid.world_sizes"
        )
    chosen = [run for run in runs if run.get("_variant", "") == (baseline or "")]
    try:
        prediction = predict_from_runs(chosen, comm, networks, max_world_size)
    except ValueError as err:
        return None, f"the scaling model could not be fitted: {err}"
    sources = sorted((doc["world_size"], doc["_path"]) for doc in comm)
    return {
        "variant": baseline,
        "comm_files": [path for _, path in sources],
        "comm_world_sizes": sorted({w for w, _ in sources}),
        **prediction,
    }, None


# --------------------------------------------------------------------------- the whole summary


def build_summary(
    paths: list[Path],
    schema: Path | None = None,
    expected: list[str] | None = None,
    config: dict | None = None,
    config_source: str = "the workflow config",
    comm: list[Path] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """summary.json's content and the summary table (summary.csv) of the runs at ``paths``.

    ``expected`` names the grid's runs; ``config`` is the workflow config every run must agree with,
    and its grid.variants (or variant folders in ``expected``) make it a study of variants; ``comm``
    are ddpbench.commbench's outputs the scaling prediction is fitted to."""
    expected = expected or []
    runs, variants, baseline = checked_runs(paths, schema, expected, config, config_source)
    prediction, prediction_reason = scaling_prediction(runs, load_comm(comm or []), config, baseline)
    order = list(variants or [])
    table = add_baseline_pairs(add_speedup(runs_table(runs, order)), baseline)
    summary = summarize(table)
    csv_columns, json_columns = summary_columns(bool(variants))
    return {
        "generated_utc": utc_now(),
        "definitions": DEFINITIONS | (VARIANT_DEFINITIONS if variants else {}) | PREDICTION_DEFINITIONS,
        "rows": records(summary[json_columns]),
        "runs": records(table if variants else table.drop(columns=list(PAIRED))),
        "missing_runs": expected_missing(expected, table),
        "amdahl_serial_fraction": amdahl_fits(summary),
        "headlines": headlines(summary),
        "learning_curves": learning_curves(runs, order),
        "resource_model": resource_model(table),
        "variants": variants_summary(variants, baseline, summary),
        "machine": machine(runs),
        "method": method(runs, table),
        "overlaps": overlaps(table),
        "period": {"first_started_utc": table.started_utc.min(), "last_finished_utc": table.finished_utc.max()},
        "shared_run_config": shared_run_config(runs),
        "prediction": prediction,
        "prediction_reason": prediction_reason,
    }, summary[csv_columns]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpbench.summary", description="Aggregate run JSONs into the summary.")
    p.add_argument("--runs", nargs="*", default=[], type=Path, help="run JSONs (none: an error that says so)")
    p.add_argument("--schema", type=Path, help="validate every run against this JSON schema")
    p.add_argument(
        "--config", type=Path, help="the workflow config (results/config.json): every run's options must agree with it"
    )
    p.add_argument(
        "--expect",
        nargs="*",
        default=[],
        help="run names the grid asks for: ws<W>_bs<B>_seed<S>, or <variant>/ws<W>_bs<B>_seed<S> with grid.variants",
    )
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument(
        "--comm", nargs="*", default=[], type=Path, help="ddpbench.commbench outputs for the scaling prediction"
    )
    p.add_argument("--prediction-csv", type=Path, help="write the predicted rows here (only a header without)")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        source = f"the workflow config {args.config}"
        result, summary = build_summary(args.runs, args.schema, args.expect, config, source, args.comm)
    except (RunsError, OSError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    atomic_write_text(args.csv, summary.to_csv(index=False, float_format="%.6g"))
    atomic_write_json(args.json, result)
    if args.prediction_csv is not None:
        atomic_write_text(args.prediction_csv, prediction_csv(result["prediction"]))
    shown = ["world_size", "batch_size", "n_seeds", "train_time_mean_s", "speedup_mean", "efficiency_mean"]
    shown += ["test_acc_mean"] + (["variant", "throughput_ratio_vs_baseline"] if "variant" in summary else [])
    print(summary[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
