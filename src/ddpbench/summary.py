"""Build the scaling summary from run JSONs: one row per (world_size, batch_size), or per
(variant, world_size, batch_size) with grid.variants, plus everything the report shows (headlines,
learning curves, the resource model, machine, method, overlaps).

Speedup is the steady-state throughput at W over W = 1's (``totals.steady_*``: rank 0's steps after
the warm-up, no evaluation; ``speedup_whole_run_mean`` is T(1)/T(W) of the training time), paired by
seed at the same batch size (a seed without its one-worker run is left out, and listed), summarised
as a geometric mean with the t interval of the mean log speedup; efficiency = speedup / W; the
Karp-Flatt metric e = (1/S - 1/W) / (1 - 1/W) estimates the serial fraction from the mean speedup
(not where the cores were fixed). Throughput is steady images over steady time. Every interval
carries its n and needs three values (ddpbench.stats).

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

from ddpbench.columns import DEFINITIONS, PREDICTION_DEFINITIONS, SUMMARY_COLUMNS, summary_columns
from ddpbench.comparison import (
    COMPARISON_COLUMNS,
    MIN_EFFECT,
    PAIRED,
    VARIANT_DEFINITIONS,
    add_baseline_pairs,
    comparison,
    comparison_tests,
    mark_cells,
    variants_summary,
)
from ddpbench.conditions import machine, method, overlaps, resource_kind, resource_model, shared_run_config
from ddpbench.io import atomic_write_json, atomic_write_text, utc_now
from ddpbench.order import describe as describe_order
from ddpbench.predict import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_MAX_WORLD_SIZE,
    parse_networks,
    predict_from_runs,
    prediction_csv,
)
from ddpbench.runs import RunsError, checked_runs, load_comm, load_config
from ddpbench.runtable import (
    add_run_order,
    add_speedup,
    expected_missing,
    learning_curves,
    records,
    runs_table,
    step_distributions,
    unpaired_speedup,
)
from ddpbench.stats import (
    CONFIDENCE,
    MEAN_METHOD,
    MIN_INTERVAL_N,
    RATIO_METHOD,
    amdahl_fit,
    geometric_mean_interval,
    karp_flatt,
    mean_interval,
    paired_difference,
    pooled_rate,
)
from ddpbench.utilisation import add_utilisation, load_peak, utilisation_facts

# --------------------------------------------------------------------------- the summary rows


def summary_row(variant: str, ws: int, bs: int, g: pd.DataFrame, scaling_laws: bool = True) -> dict:
    """The summary row of one (variant, world size, batch size) from its runs ``g``; without
    ``scaling_laws`` (the cores were fixed) no Karp-Flatt metric."""
    train = g.train_time_s.sum()
    speedup, acc = geometric_mean_interval(g.speedup), mean_interval(g.test_acc)
    change = mean_interval(g.acc_change_vs_one)
    reached = int(g.time_to_target_s.notna().sum())
    return {
        "variant": variant,
        "world_size": ws,
        "batch_size": bs,
        "global_batch_size": int(g.global_batch_size.iloc[0]),
        "n_seeds": len(g),
        "train_time_mean_s": g.train_time_s.mean(),
        "train_time_std_s": g.train_time_s.std(ddof=1),
        "train_loop_mean_s": g.train_loop_s.mean(),
        "throughput_mean_img_s": pooled_rate(g.steady_images, g.steady_time_s),
        "throughput_std_img_s": g.throughput_img_s.std(ddof=1),
        "whole_run_throughput_img_s": pooled_rate(g.images, g.train_time_s),
        "speedup_whole_run_mean": geometric_mean_interval(g.speedup_whole_run).value,
        "warmup_share_first_epoch": g.warmup_share_first_epoch.mean(),
        "compile_mean_s": g.compile_s.mean(),
        "step_cv_within_run": g.step_cv.mean(),
        "throughput_cv_between_runs": g.throughput_img_s.std(ddof=1) / g.throughput_img_s.mean(),
        "step_skew_max": g.step_skew.max(),
        "speedup_mean": speedup.value,
        "speedup_ci95_low": speedup.low,
        "speedup_ci95_high": speedup.high,
        "n_speedup": speedup.n,
        "efficiency_mean": speedup.value / ws,
        "efficiency_ci95_low": speedup.low / ws,
        "efficiency_ci95_high": speedup.high / ws,
        "test_acc_mean": acc.value,
        "test_acc_std": g.test_acc.std(ddof=1),
        "test_acc_ci95_low": acc.low,
        "test_acc_ci95_high": acc.high,
        **interval("acc_change_vs_one", change),
        "n_acc_change_vs_one": change.n,
        "karp_flatt": karp_flatt(speedup.value, ws) if scaling_laws else math.nan,
        "time_to_target_mean_s": g.time_to_target_s.mean() if reached == len(g) else math.nan,
        "n_reached_target": reached,
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


def cores_fixed(df: pd.DataFrame) -> list[str]:
    """The variants ("" without variants) whose runs held the total cores fixed: W = 1 already used
    every core, so Karp-Flatt and the Amdahl fit, which assume the cores grow with W, do not apply."""
    return [v for v, g in df.groupby("variant", sort=False) if resource_kind(g) == "cores_fixed"]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, batch size, world size), in the runs table's order."""
    fixed = set(cores_fixed(df))
    groups = df.groupby(["variant", "batch_size", "world_size"], sort=False)
    rows = [summary_row(v, ws, bs, g, v not in fixed) for (v, bs, ws), g in groups]
    return pd.DataFrame(rows, columns=["variant", *SUMMARY_COLUMNS, *COMPARISON_COLUMNS])


def amdahl_fits(summary: pd.DataFrame, fixed: list[str]) -> dict:
    """The Amdahl serial fraction per batch size ({batch_size: f}); with variants per variant
    ({variant: {batch_size: f}}); None for the variants in ``fixed`` (cores fixed)."""
    fits = {
        (v, int(bs)): None if v in fixed else amdahl_fit(g.world_size, g.speedup_mean)
        for (v, bs), g in summary.groupby(["variant", "batch_size"], sort=False)
    }
    if all(v == "" for v, _ in fits):
        return {bs: f for (_, bs), f in fits.items()}
    nested: dict[str, dict] = {}
    for (v, bs), f in fits.items():
        nested.setdefault(v, {})[bs] = f
    return nested


def scaling_laws(fixed: list[str]) -> dict | None:
    """Why Karp-Flatt and the Amdahl fit are left out, and of which variants; None where they apply."""
    if not fixed:
        return None
    return {
        "left_out": [v or None for v in fixed],
        "reason": "the cores were fixed: the one-worker run already used every core, while Karp-Flatt and "
        "Amdahl's law assume each added worker brings its own",
    }


# --------------------------------------------------------------------------- what the report shows


def interval(prefix: str, estimate) -> dict:
    """An estimate as summary.json's keys: prefix, prefix_ci95_low/_high."""
    return {prefix: estimate.value, f"{prefix}_ci95_low": estimate.low, f"{prefix}_ci95_high": estimate.high}


def accuracy_change(runs: pd.DataFrame, base_ws: int, largest_ws: int):
    """The test-accuracy change from base_ws to largest_ws, paired by seed: (mean of both over the
    paired seeds, and the mean difference with its interval and n)."""
    base = runs[runs.world_size == base_ws].set_index("seed").test_acc
    largest = runs[runs.world_size == largest_ws].set_index("seed").test_acc
    both = base.index.intersection(largest.index)
    change = mean_interval(paired_difference(largest[both], base[both]))
    return base[both].mean(), largest[both].mean(), change


def headline(g: pd.DataFrame, runs: pd.DataFrame) -> dict:
    """The headline of one (variant, batch size): its summary rows ``g`` by world size and its runs."""
    base, largest = g.iloc[0], g.iloc[-1]  # the summary is sorted by world size within a group
    best = g.loc[g.speedup_mean.idxmax()] if g.speedup_mean.notna().any() else base
    acc_base, acc_largest, change = accuracy_change(runs, int(base.world_size), int(largest.world_size))
    return {
        "variant": base.variant,
        "batch_size": int(base.batch_size),
        "base_ws": int(base.world_size),
        "largest_ws": int(largest.world_size),
        "best_speedup": best.speedup_mean,
        "best_speedup_ci95_low": best.speedup_ci95_low,
        "best_speedup_ci95_high": best.speedup_ci95_high,
        "best_n": int(best.n_speedup),
        "best_ws": int(best.world_size),
        "speedup_largest": largest.speedup_mean,
        "efficiency_largest": largest.efficiency_mean,
        "efficiency_largest_ci95_low": largest.efficiency_ci95_low,
        "efficiency_largest_ci95_high": largest.efficiency_ci95_high,
        "n_largest": int(largest.n_speedup),
        "threads_base": int(base.threads_per_worker),
        "threads_largest": int(largest.threads_per_worker),
        "acc_base": acc_base,
        "acc_largest": acc_largest,
        **interval("acc_change", change),
        "n_acc_change": change.n,
        **accuracy_cost(g),
    }


ACC_COST_POINTS = 1.0  # the accuracy a user will give up for the speed of more workers


def accuracy_cost(g: pd.DataFrame) -> dict:
    """The smallest world size of the summary rows ``g`` (by world size) whose test accuracy, paired by
    seed with W = 1's, fell by more than ACC_COST_POINTS on average, with its change and interval."""
    costly = g[g.acc_change_vs_one < -ACC_COST_POINTS]
    first = costly.iloc[0] if len(costly) else None
    return {
        "acc_cost_points": ACC_COST_POINTS,
        "acc_cost_ws": int(first.world_size) if first is not None else None,
        **{
            f"acc_cost_change{end}": first[f"acc_change_vs_one{end}"] if first is not None else None
            for end in ("", "_ci95_low", "_ci95_high")
        },
        "acc_cost_n": int(first.n_acc_change_vs_one) if first is not None else None,
    }


def headlines(summary: pd.DataFrame, table: pd.DataFrame) -> list[dict]:
    """Per (variant, batch size): the best mean speedup, the speedup and efficiency at the largest
    world size, and the accuracy change from the smallest to the largest world size paired by seed,
    each with its interval and n."""
    runs = dict(list(table.groupby(["variant", "batch_size"], sort=False)))
    out = [headline(g, runs[key]) for key, g in summary.groupby(["variant", "batch_size"], sort=False)]
    return records(pd.DataFrame(out))


def statistics(fixed: list[str], config: dict | None = None) -> dict:
    """How the summary's estimates are computed and the runs ordered, for the report to name
    (summary.json: statistics); without the workflow ``config`` the planned order is unknown."""
    grid = (config or {}).get("grid")
    return {
        "confidence": CONFIDENCE,
        "min_interval_n": MIN_INTERVAL_N,
        "ratios": RATIO_METHOD,
        "differences": MEAN_METHOD,
        "throughput": DEFINITIONS["throughput"],
        "steady_state": DEFINITIONS["steady_state"],
        "repetitions": "seeds are the unit of replication for accuracy and double as the timing repetitions; "
        + DEFINITIONS["variability"],
        "scaling_laws": scaling_laws(fixed),
        "run_order": describe_order(grid.get("order_seed")) if grid else None,
    }


# --------------------------------------------------------------------------- the scaling prediction


def prediction_settings(config: dict | None) -> dict:
    """predict_from_runs's settings from the config's predict section (left out: its defaults), the
    networks checked here so that a bad one fails the aggregation with its fix."""
    settings = (config or {}).get("predict") or {}
    networks = settings.get("networks")
    try:
        parse_networks(networks)
    except ValueError as err:
        raise RunsError(f"config predict.networks: {err}") from err
    return {
        "networks": networks,
        "max_world_size": int(settings.get("max_world_size") or DEFAULT_MAX_WORLD_SIZE),
        "algorithm": settings.get("algorithm", "auto"),
        "bootstrap": int(settings.get("bootstrap", DEFAULT_BOOTSTRAP)),
    }


def scaling_prediction(
    runs: list[dict], comm: list[dict], config: dict | None, baseline: str | None
) -> tuple[dict | None, str | None]:
    """(summary.json's prediction, None), or (None, why there is none). The prediction is the baseline
    variant's with variants: the comm timings are the baseline's too."""
    settings = prediction_settings(config)
    if not comm:
        return None, (
            "no all-reduce timings (results/comm/): the grid measures no world size of 2 or more on one node, "
            "so there is no communication to fit the model to; add 2 to grid.world_sizes"
        )
    chosen = [run for run in runs if run.get("_variant", "") == (baseline or "")]
    try:
        prediction = predict_from_runs(chosen, comm, **settings)
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


def min_effect(config: dict | None) -> dict:
    """report.min_effect of the config, its defaults (MIN_EFFECT) filled in."""
    given = ((config or {}).get("report") or {}).get("min_effect") or {}
    return {key: float(given.get(key, default)) for key, default in MIN_EFFECT.items()}


def build_summary(
    paths: list[Path],
    schema: Path | None = None,
    expected: list[str] | None = None,
    config: dict | None = None,
    config_source: str = "the workflow config",
    comm: list[Path] | None = None,
    peak: dict | None = None,
) -> tuple[dict, pd.DataFrame]:
    """summary.json's content and the summary table (summary.csv) of the runs at ``paths``.

    ``expected`` names the grid's runs; ``config`` is the workflow config every run must agree with,
    and its grid.variants (or variant folders in ``expected``) make it a study of variants; ``comm``
    are ddpbench.commbench's outputs the scaling prediction is fitted to; ``peak`` ddpbench.peak's
    measurement, for each setting's FLOP utilisation."""
    expected = expected or []
    runs, variants, baseline = checked_runs(paths, schema, expected, config, config_source)
    prediction, prediction_reason = scaling_prediction(runs, load_comm(comm or []), config, baseline)
    order = list(variants or [])
    table = add_baseline_pairs(add_speedup(add_run_order(runs_table(runs, order), expected)), baseline)
    effect = min_effect(config)
    summary, n_tests = mark_cells(summarize(table), baseline, effect)
    summary = add_utilisation(summary, table, peak)
    fixed = cores_fixed(table)
    csv_columns, json_columns = summary_columns(bool(variants))
    return {
        "generated_utc": utc_now(),
        "definitions": DEFINITIONS | (VARIANT_DEFINITIONS if variants else {}) | PREDICTION_DEFINITIONS,
        "rows": records(summary[json_columns]),
        "runs": records(table if variants else table.drop(columns=list(PAIRED))),
        "missing_runs": expected_missing(expected, table),
        "speedup_unpaired": unpaired_speedup(table),
        "amdahl_serial_fraction": amdahl_fits(summary, fixed),
        "statistics": statistics(fixed, config),
        "headlines": headlines(summary, table),
        "learning_curves": learning_curves(runs, order),
        "step_distributions": step_distributions(runs, order),
        "resource_model": resource_model(table),
        "variants": variants_summary(variants, baseline, summary, comparison_tests(n_tests, effect)),
        "machine": machine(runs),
        "method": method(runs, table),
        "overlaps": overlaps(table),
        "period": {"first_started_utc": table.started_utc.min(), "last_finished_utc": table.finished_utc.max()},
        "shared_run_config": shared_run_config(runs),
        "prediction": prediction,
        "prediction_reason": prediction_reason,
        "utilisation": utilisation_facts(peak, table),
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
        help="run names the grid asks for, in the order they were planned to start (ddpbench.order): "
        "ws<W>_bs<B>_seed<S>, or <variant>/ws<W>_bs<B>_seed<S> with grid.variants",
    )
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument(
        "--comm", nargs="*", default=[], type=Path, help="ddpbench.commbench outputs for the scaling prediction"
    )
    p.add_argument("--prediction-csv", type=Path, help="write the predicted rows here (only a header without)")
    p.add_argument("--peak", type=Path, help="ddpbench.peak's results/peak.json, for the FLOP utilisation")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        source = f"the workflow config {args.config}"
        peak = load_peak(args.peak)
        result, summary = build_summary(args.runs, args.schema, args.expect, config, source, args.comm, peak)
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
