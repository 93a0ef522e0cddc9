"""Aggregate run JSONs into the scaling summary: one row per (world_size, batch_size), or per
(variant, world_size, batch_size) with grid.variants, plus everything the report shows (headlines,
learning curves, the resource model, machine, method, overlaps).

Speedup is T(1)/T(W) on the training time (``totals.train_time_s``: training phases only,
no evaluation), paired by seed at the same batch size; efficiency = speedup / W; the
Karp-Flatt metric e = (1/S - 1/W) / (1 - 1/W) estimates the serial fraction from the mean
speedup. Confidence intervals use Student's t across seeds.

With variants (the config's grid.variants, or --expect names <variant>/ws<W>_bs<B>_seed<S>), a run's
variant is its folder (results/runs/<variant>/...); speedup stays within a variant, and every variant
is compared with the baseline (grid.baseline, else the first) at the same world size and batch size,
paired by seed: throughput and time-to-target ratios, test-accuracy difference, with t intervals.

Every run is checked against its file name (ws<W>_bs<B>_seed<S>.json) and, given the
workflow's config, against the grid's options (with its variant's overrides): a run that disagrees is refused.

With ``--comm`` (ddpbench.commbench's all-reduce timings), summary.json's ``prediction`` holds the
scaling model of ``ddpbench.predict`` fitted to the runs (the baseline variant's, with variants) and
to those timings, for the config's ``predict.networks`` up to ``predict.max_world_size``; without
timings it is null and ``prediction_reason`` says why. ``--prediction-csv`` writes its rows.

    python -m ddpbench.aggregate --runs results/runs/*.json --schema workflow/schemas/run.schema.json \
        --config results/config.json --expect ws1_bs128_seed0 ... --comm results/comm/ws2.json \
        --csv results/summary.csv --json results/summary.json --prediction-csv results/prediction.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml
from scipy import stats
from scipy.optimize import minimize_scalar

if TYPE_CHECKING:
    import jsonschema.protocols

from ddpbench.io import atomic_write_json, atomic_write_text, utc_now
from ddpbench.options import NetworkLink
from ddpbench.predict import DEFAULT_MAX_WORLD_SIZE, parse_networks, predict_from_runs, prediction_csv

RUN_NAME = re.compile(r"ws(?P<world_size>\d+)_bs(?P<batch_size>\d+)_seed(?P<seed>\d+)")
# A name in --expect: the run name, behind its variant's folder in a study with variants.
EXPECTED_NAME = re.compile(r"(?:(?P<variant>[^/]+)/)?" + RUN_NAME.pattern)
# The names the config schema allows for grid.variants: safe as a folder, and as plot text.
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
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
# Each variant against the baseline variant at the same (world_size, batch_size), paired by seed.
COMPARISON_COLUMNS = [
    "n_pairs_vs_baseline",
    "throughput_ratio_vs_baseline",
    "throughput_ratio_ci95_low",
    "throughput_ratio_ci95_high",
    "time_to_target_ratio_vs_baseline",
    "time_to_target_ratio_ci95_low",
    "time_to_target_ratio_ci95_high",
    "n_pairs_reached_target",
    "test_acc_diff_vs_baseline",
    "test_acc_diff_ci95_low",
    "test_acc_diff_ci95_high",
]
# Per-run values the comparison columns average: (run column, baseline's run column, how combined).
PAIRED = {
    "throughput_ratio": ("throughput_img_s", lambda run, base: run / base),
    "time_to_target_ratio": ("time_to_target_s", lambda run, base: run / base),
    "test_acc_diff": ("test_acc", lambda run, base: run - base),
}
# Train options the job resolves itself (auto -> a value): the run records the resolved value,
# so it legitimately differs from the workflow config's.
RESOLVED_BY_JOB = frozenset({"threads_per_worker", "device", "ranks_per_node", "channels_last", "allreduce"})
# ... but a number given for these is what the run used, and is checked.
CHECKED_WHEN_SET = frozenset({"threads_per_worker"})
# Options a run records with their defaults filled in ({bandwidth_gbit: 1} as {bandwidth_gbit: 1, latency_us: 0}).
RECORDED_AS = {"emulate_network": NetworkLink}
# Run-config keys that differ by design between the runs of one grid.
PER_RUN_KEYS = frozenset(
    {
        "seed",
        "world_size",
        "out",
        "nnodes",
        "ranks_per_node",
        "global_batch_size",
        "per_rank_batch_size",
        "lr_effective",
        "threads_per_worker",
        "batch_size",
    }
)
REDO = "delete the file and rerun its job (snakemake then trains that run again)"
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
VARIANT_DEFINITIONS = {
    "variant": "a named set of overrides of the train options (grid.variants); speedup and efficiency are "
    "within a variant, against its own world size 1",
    "baseline": "the variant the others are compared with (grid.baseline, else the first variant)",
    "n_pairs_vs_baseline": "seeds with a run of both the variant and the baseline at this world size and batch size",
    "throughput_ratio_vs_baseline": "mean over paired seeds of the variant's throughput / the baseline's, with its "
    "95 % t interval (throughput_ratio_ci95_low/_high); above 1: the variant trains more images per second",
    "time_to_target_ratio_vs_baseline": "mean over the seeds where both reached the target accuracy "
    "(n_pairs_reached_target) of the variant's time to target / the baseline's, with its 95 % t interval "
    "(time_to_target_ratio_ci95_low/_high); below 1: the variant reaches the target sooner",
    "test_acc_diff_vs_baseline": "mean over paired seeds of the variant's final test accuracy - the baseline's, "
    "in points, with its 95 % t interval (test_acc_diff_ci95_low/_high)",
    "time_to_target_speedup_vs_baseline": "1 / time_to_target_ratio_vs_baseline, its interval inverted: above 1 "
    "the variant reaches the target sooner (summary.json: variants.speed_vs_accuracy)",
}
PREDICTION_DEFINITIONS = {
    "prediction": "the scaling model (ddpbench.predict) fitted to the runs and the all-reduce timings of "
    "ddpbench.commbench: predicted step time, throughput, speedup and efficiency per network and batch mode "
    "up to predict.max_world_size, with its fitted communication parameters, validation and assumptions",
    "prediction_validation": "a measured world size predicted from the others (the largest from the smaller ones; "
    "with three or more, each left out in turn): relative error of the step time and of the speedup",
}
COMM_SCHEMA = "ddpbench.commbench/1"


class AggregateError(ValueError):
    pass


def run_name(world_size: int, batch_size: int, seed: int, variant: str | None = None) -> str:
    """A run's name, as the workflow names its files (results/runs/<name>.json): behind its
    variant's folder (<variant>/ws<W>_bs<B>_seed<S>) in a study with variants."""
    return (f"{variant}/" if variant else "") + f"ws{world_size}_bs{batch_size}_seed{seed}"


def grid_variants(config: dict | None, expected: list[str]) -> dict[str, dict | None] | None:
    """The study's variants and their overrides, in the config's order: from the config's
    grid.variants, else the variant folders of the --expect names (overrides unknown: None); None without."""
    configured = ((config or {}).get("grid") or {}).get("variants")
    if configured:
        variants = {name: overrides or {} for name, overrides in configured.items()}
    else:
        named = [m["variant"] for m in map(EXPECTED_NAME.fullmatch, expected) if m and m["variant"]]
        variants = {name: None for name in named}
    bad = [name for name in variants if not VARIANT_NAME.fullmatch(name)]
    if bad:
        raise AggregateError(
            f"variant name {bad[0]!r} is not a safe folder name (letters, digits, '_', '.', '-', "
            "starting with a letter or digit): rename it in grid.variants"
        )
    return variants or None


def baseline_variant(config: dict | None, variants: dict[str, dict] | None) -> str | None:
    """grid.baseline, else the first variant; None without variants."""
    if not variants:
        return None
    chosen = ((config or {}).get("grid") or {}).get("baseline") or next(iter(variants))
    if chosen not in variants:
        raise AggregateError(
            f"grid.baseline is {chosen!r}, which is not a variant: choose one of {list(variants)} (or null: the first)"
        )
    return chosen


# --------------------------------------------------------------------------- reading and checking runs


def read_run(
    path: Path, validator: jsonschema.protocols.Validator | None = None, schema_path: Path | None = None
) -> dict:
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AggregateError(f"cannot read run {path}: {err}. Delete it and re-run its training job.") from err
    if validator is not None:
        errors = sorted(validator.iter_errors(run), key=lambda e: list(e.path))
        if errors:
            where = "/".join(map(str, errors[0].path)) or "(top level)"
            raise AggregateError(
                f"run {path} does not match {schema_path}: {where}: {errors[0].message}. "
                "Delete it and re-run its training job."
            )
    return run


def run_variant(path: Path, variants: dict[str, dict] | None) -> str:
    """The variant a run belongs to: its folder's name in a study with variants; "" without."""
    if not variants:
        return ""
    folder = Path(path).parent.name
    if folder not in variants:
        raise AggregateError(
            f"run {path}: its folder {folder!r} is not one of grid.variants ({', '.join(variants)}); runs of a "
            "study with variants are results/runs/<variant>/ws<W>_bs<B>_seed<S>.json: move it, or leave it out"
        )
    return folder


def check_name(run: dict, path: Path) -> None:
    """The file name says which run it holds; its contents must agree (a copied or renamed file must not)."""
    match = RUN_NAME.fullmatch(Path(path).name.removesuffix(".json"))
    if match is None:
        raise AggregateError(
            f"run {path}: the file name does not say which run it holds; run files are named "
            "ws<W>_bs<B>_seed<S>.json, as the workflow writes them: rename it or rerun its job"
        )
    for key in ("world_size", "batch_size", "seed"):
        if run["config"][key] != int(match[key]):
            raise AggregateError(
                f"run {path}: config.{key} is {run['config'][key]!r} but the file name says {key} {match[key]}: "
                f"the file holds another run's result; {REDO}"
            )


def load_runs(paths: list[Path], schema_path: Path | None = None, variants: dict | None = None) -> list[dict]:
    """Read, validate (when given the schema) and name-check every run; each gets its ``_path``
    and ``_variant`` (its folder with variants, else "")."""
    validator = None
    if schema_path is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(json.loads(Path(schema_path).read_text()))
    runs = []
    for path in paths:
        run = read_run(path, validator, schema_path)
        check_name(run, path)
        run["_path"] = str(path)
        run["_variant"] = run_variant(path, variants)
        runs.append(run)
    return runs


def load_config(path: Path | None) -> dict | None:
    """The workflow's resolved config (results/config.json), or any YAML of the same shape."""
    return None if path is None else yaml.safe_load(Path(path).read_text())


def same_value(a: object, b: object) -> bool:
    """Equal, with numbers compared as numbers (the config's 60 is the run's 60.0)."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def variant_options(config: dict, variant: str) -> dict[str, tuple[str, object]]:
    """Each checked option's config key and value for a run of ``variant``: train: and data.loader
    with the variant's overrides on top (keys named where they were set)."""
    options = {key: (f"train.{key}", value) for key, value in (config.get("train") or {}).items()}
    if "loader" in (config.get("data") or {}):
        options["loader"] = ("data.loader", config["data"]["loader"])
    overrides = ((config.get("grid") or {}).get("variants") or {}).get(variant) or {}  # null: no override
    for section in ("train", "data"):
        for key, value in (overrides.get(section) or {}).items():
            options[key] = (f"grid.variants.{variant}.{section}.{key}", value)
    return options


def checked(key: str, value: object) -> bool:
    """Whether the run must have recorded the config's value for ``key``."""
    if key in CHECKED_WHEN_SET:
        return value != "auto"
    return key not in RESOLVED_BY_JOB


def recorded_form(key: str, value: object) -> object:
    """The config's value of ``key`` as a run records it: a link with its defaults filled in."""
    kind = RECORDED_AS.get(key)
    return dataclasses.asdict(kind(**value)) if kind is not None and isinstance(value, dict) else value


def option_pairs(run: dict, config: dict) -> Iterator[tuple[str, object, str, object]]:
    """(what the run recorded, its value, the config key, the config's value) for every checked option."""
    options = variant_options(config, run.get("_variant", ""))
    for key in sorted(options.keys() & run["config"].keys()):
        config_key, value = options[key]
        if checked(key, value):
            yield f"config.{key}", run["config"][key], config_key, recorded_form(key, value)
    data = config.get("data") or {}
    if "source" in data:
        yield "dataset.source", run["dataset"]["source"], "data.source", data["source"]


def check_options(run: dict, path: str, config: dict, source: str) -> None:
    """A run trained with other options than the grid's does not belong in its summary."""
    for run_key, run_value, config_key, config_value in option_pairs(run, config):
        if not same_value(run_value, config_value):
            raise AggregateError(
                f"run {path}: {run_key} is {run_value!r} but {source} has {config_key}: {config_value!r}: "
                f"the run was trained with other options than this grid; {REDO}"
            )


def check_grid(runs: list[dict], expected: list[str]) -> None:
    names = set(expected)
    for run in runs:
        cfg = run["config"]
        name = run_name(cfg["world_size"], cfg["batch_size"], cfg["seed"], run["_variant"])
        if name not in names:
            raise AggregateError(
                f"run {run['_path']} ({name}) is not part of the grid (--expect): "
                "leave it out of --runs, or add its world size, batch size and seed to the grid"
            )


# --------------------------------------------------------------------------- the per-run table


def run_row(run: dict) -> dict:
    """The numbers of one run that the summary and the report need."""
    cfg, tot, env = run["config"], run["totals"], run["environment"]
    step, data, train = tot["step_time_s"], tot["data_time_s"], tot["train_time_s"]
    lock = env.get("timing_lock")
    return {
        "variant": run.get("_variant", ""),
        "world_size": cfg["world_size"],
        "batch_size": cfg["batch_size"],
        "seed": cfg["seed"],
        "global_batch_size": cfg["global_batch_size"],
        "nnodes": cfg["nnodes"],
        "threads_per_worker": cfg["threads_per_worker"],
        "train_time_s": train,
        "train_loop_s": tot["train_loop_s"],
        "eval_time_s": tot["eval_time_s"],
        "data_time_s": data,
        "compute_time_s": tot["compute_time_s"] if tot["compute_time_s"] is not None else step,
        "comm_exposed_time_s": tot["comm_exposed_time_s"],
        "other_time_s": max(train - data - step, 0.0),
        "throughput_img_s": tot["throughput_img_s"],
        "test_acc": tot["final_test_acc"],
        "test_loss": tot["final_test_loss"],
        "time_to_target_s": tot["time_to_target_s"],
        "peak_rss_max_bytes": tot["peak_rss_bytes_max"],
        "hostnames": ",".join(env["hostnames"]),
        "path": run.get("_path"),
        "name": run_name(cfg["world_size"], cfg["batch_size"], cfg["seed"], run.get("_variant")),
        "startup_s": tot.get("process_start_to_first_step_s"),
        "lock_wait_s": lock["wait_s"] if lock else None,
        "started_utc": run["timestamps"]["started_utc"],
        "finished_utc": run["timestamps"]["finished_utc"],
    }


def runs_table(runs: list[dict], order: list[str] | None = None) -> pd.DataFrame:
    """One row per run, sorted by variant (in ``order``), batch size, world size and seed."""
    df = pd.DataFrame([run_row(run) for run in runs])
    if df.empty:
        raise AggregateError("no runs to aggregate: results/runs/ holds no run JSON")
    for column in ("comm_exposed_time_s", "time_to_target_s", "startup_s", "lock_wait_s"):
        df[column] = df[column].astype(float)  # None -> NaN
    dup = df.duplicated(["variant", "world_size", "batch_size", "seed"], keep=False)
    if dup.any():
        raise AggregateError(
            f"more than one run for the same (world_size, batch_size, seed): {sorted(df.loc[dup, 'path'])}; "
            "runs of different variants belong in results/runs/<variant>/ with grid.variants in --config"
        )
    rank = {name: i for i, name in enumerate(order or [])}
    return df.sort_values(
        ["variant", "batch_size", "world_size", "seed"],
        key=lambda column: column.map(rank) if column.name == "variant" else column,
    ).reset_index(drop=True)


def group_label(variant: str, batch_size: int) -> str:
    return (f"variant {variant}, " if variant else "") + f"batch size {batch_size}"


def add_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Per-run speedup against the same seed's one-worker run of the same variant and batch size.

    A seed without its own one-worker run is compared with the mean one-worker time.
    """
    base = df[df.world_size == 1]
    groups = set(zip(df.variant, df.batch_size, strict=True))
    missing = sorted(groups - set(zip(base.variant, base.batch_size, strict=True)))
    if missing:
        shown = [bs for _, bs in missing] if not any(v for v, _ in missing) else [group_label(*m) for m in missing]
        raise AggregateError(
            f"no world size 1 run for batch size(s) {shown}: speedup needs the one-worker baseline; "
            "add 1 to grid.world_sizes"
        )
    by_seed = base.set_index(["variant", "batch_size", "seed"]).train_time_s
    mean_by_group = base.groupby(["variant", "batch_size"]).train_time_s.mean()
    t1 = [
        by_seed.get((v, bs, seed), mean_by_group[(v, bs)])
        for v, bs, seed in zip(df.variant, df.batch_size, df.seed, strict=True)
    ]
    df = df.copy()
    df["speedup"] = np.asarray(t1) / df.train_time_s
    df["efficiency"] = df.speedup / df.world_size
    return df


def add_baseline_pairs(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Per run: its throughput and time-to-target ratios and accuracy difference against the baseline
    variant's run of the same world size, batch size and seed (NaN without one, or without variants)."""
    keys = ["world_size", "batch_size", "seed"]
    base = df[df.variant == baseline][keys + [column for column, _ in PAIRED.values()]]
    paired = df[keys].merge(base, on=keys, how="left", suffixes=("", "_base"), validate="many_to_one")
    df = df.copy()
    for name, (column, combine) in PAIRED.items():
        df[name] = combine(df[column].to_numpy(float), paired[column].to_numpy(float))
    return df


# --------------------------------------------------------------------------- the summary rows


def ci95(values: pd.Series) -> tuple[float, float]:
    """Student's t interval of the mean across seeds; NaN for fewer than two values."""
    values = values.dropna()
    if len(values) < 2:
        return (math.nan, math.nan)
    sem = stats.sem(values)
    if sem == 0:  # identical values: scipy returns NaN for a zero scale
        return (values.mean(), values.mean())
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sem)
    return (float(low), float(high))


def karp_flatt(speedup: float, world_size: int) -> float:
    if world_size <= 1 or not math.isfinite(speedup) or speedup <= 0:
        return math.nan
    return (1.0 / speedup - 1.0 / world_size) / (1.0 - 1.0 / world_size)


def comparison(g: pd.DataFrame) -> dict:
    """The comparison columns of one (variant, world_size, batch_size): means of the paired per-run
    values with their t intervals."""
    out = {"n_pairs_vs_baseline": int(g.throughput_ratio.notna().sum())}
    for name, mean in (
        ("throughput_ratio", "throughput_ratio_vs_baseline"),
        ("time_to_target_ratio", "time_to_target_ratio_vs_baseline"),
        ("test_acc_diff", "test_acc_diff_vs_baseline"),
    ):
        low, high = ci95(g[name])
        out |= {mean: g[name].mean(), f"{name}_ci95_low": low, f"{name}_ci95_high": high}
    out["n_pairs_reached_target"] = int(g.time_to_target_ratio.notna().sum())
    return out


def summary_row(variant: str, ws: int, bs: int, g: pd.DataFrame) -> dict:
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


def amdahl_fit(world_sizes: Iterable[float], speedups: Iterable[float]) -> float | None:
    """Serial fraction f of Amdahl's law S(W) = 1 / (f + (1 - f) / W), least squares on S."""
    w = np.asarray(world_sizes, dtype=float)
    s = np.asarray(speedups, dtype=float)
    keep = np.isfinite(s) & (w > 1)
    if not keep.any():
        return None
    w, s = w[keep], s[keep]
    result = minimize_scalar(
        lambda f: np.sum((1.0 / (f + (1.0 - f) / w) - s) ** 2), bounds=(0.0, 1.0), method="bounded"
    )
    return float(result.x)


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON values: NaN becomes null, numpy scalars become Python's, no variant ("") null."""
    out = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    for row in out:
        if row.get("variant") == "":
            row["variant"] = None
    return out


def expected_missing(expected: list[str], runs: pd.DataFrame) -> list[dict]:
    """The expected runs without a result; each names its variant only in a study with variants."""
    present = {(r.variant, r.world_size, r.batch_size, r.seed) for r in runs.itertuples()}
    missing = []
    for name in expected:
        m = EXPECTED_NAME.fullmatch(name)
        if not m:
            raise AggregateError(
                f"expected run {name!r} is not named ws<W>_bs<B>_seed<S> or <variant>/ws<W>_bs<B>_seed<S>"
            )
        key = (int(m["world_size"]), int(m["batch_size"]), int(m["seed"]))
        if (m["variant"] or "", *key) not in present:
            found = dict(zip(("world_size", "batch_size", "seed"), key, strict=True))
            missing.append({"variant": m["variant"], **found} if m["variant"] else found)
    return missing


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


def distinct(values: Iterable[object]) -> list:
    """The different values (list items counted one by one), in first-seen order, None left out."""
    seen = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in seen:
                seen.append(item)
    return seen


MACHINE_FIELDS = [
    ("cpu_model", "CPU"),
    ("logical_cores", "Logical cores"),
    ("cores_available", "Cores available"),
    ("device", "Device"),
    ("backend", "Backend"),
    ("torch", "PyTorch"),
    ("torchvision", "torchvision"),
    ("python", "Python"),
    ("hostnames", "Hosts"),
    ("platform", "Platform"),
    ("git_commit", "Git commit"),
]


def machine(runs: list[dict]) -> list[dict]:
    """What the runs ran on: each field's values, all of them where runs differ."""
    envs = [r["environment"] for r in runs]
    out = []
    for key, label in MACHINE_FIELDS:
        if key == "device":
            values = distinct(f"{e.get('device')} ({e.get('device_name')})" for e in envs)
        else:
            values = distinct(e.get(key) for e in envs)
        out.append({"key": key, "label": label, "values": values})
    return out


def timing_lock(runs: list[dict]) -> dict | None:
    """The host-wide lock timed runs queued on (environment.timing_lock), or None if no run took one."""
    held = [r["environment"]["timing_lock"] for r in runs if r["environment"].get("timing_lock")]
    if not held:
        return None
    waits = [lock["wait_s"] for lock in held]
    return {
        "paths": distinct(lock["path"] for lock in held),
        "n_runs": len(held),
        "wait_total_s": float(sum(waits)),
        "wait_max_s": float(max(waits)),
    }


def method(runs: list[dict], table: pd.DataFrame) -> dict:
    """The facts the "How this was measured" section quotes."""
    configs = [r["config"] for r in runs]
    threads = (
        table[["world_size", "threads_per_worker"]].drop_duplicates().sort_values(["world_size", "threads_per_worker"])
    )
    return {
        "threads": records(threads),
        "cores_available": distinct(r["environment"]["cores_available"] for r in runs),
        "epochs": distinct(c["epochs"] for c in configs),
        "model": distinct(r["model"]["name"] for r in runs),
        "parameters": distinct(r["model"]["parameters"] for r in runs),
        "dataset": distinct(r["dataset"]["source"] for r in runs),
        "train_samples": distinct(r["dataset"]["train_samples_used"] for r in runs),
        "test_samples": distinct(r["dataset"]["test_samples"] for r in runs),
        "batch_size_mode": distinct(c["batch_size_mode"] for c in configs),
        "loader": distinct(c["loader"] for c in configs),
        "allreduce": distinct(c["allreduce"] for c in configs if c["world_size"] > 1),
        "comm_timed": bool(table.comm_exposed_time_s.notna().any()),
        "startup_mean_s": None if table.startup_s.isna().all() else float(table.startup_s.mean()),
        "timing_lock": timing_lock(runs),
    }


def overlaps(table: pd.DataFrame) -> list[dict]:
    """Pairs of runs whose start-to-finish spans overlapped on a shared host."""
    spans = table.assign(host=table.hostnames.str.split(",")).explode("host")
    spans = spans.sort_values(["host", "started_utc", "name"])[["host", "started_utc", "finished_utc", "name"]]
    pairs = []
    for host, g in spans.groupby("host", sort=True):
        rows = list(g.itertuples(index=False))
        for i, run in enumerate(rows):
            for other in rows[i + 1 :]:
                if other.started_utc >= run.finished_utc:
                    break
                pairs.append({"host": host, "runs": [run.name, other.name]})
    return pairs


def resource_kind(g: pd.DataFrame) -> str:
    """How one set of runs shared the machine across world sizes (see DEFINITIONS["resource_model"])."""
    if g.threads_per_worker.nunique() == 1:
        return "cores_per_worker_fixed"
    if (g.threads_per_worker * g.world_size).nunique() == 1:
        return "cores_fixed"
    return "mixed"


def resource_model(table: pd.DataFrame) -> dict:
    """Whether the study held the total cores or the cores per worker fixed as the world size grew:
    what efficiency means (one rank on all the cores, or one rank on a worker's share)."""
    by_variant = {v: resource_kind(g) for v, g in table.groupby("variant", sort=False)}
    kinds = set(by_variant.values())
    cores = table.assign(cores=table.threads_per_worker * table.world_size)
    by_world_size = [
        {
            "world_size": int(ws),
            "threads_per_worker": sorted(int(t) for t in g.threads_per_worker.unique()),
            "cores": sorted(int(c) for c in g.cores.unique()),
        }
        for ws, g in cores.groupby("world_size", sort=True)
    ]
    return {
        "kind": kinds.pop() if len(kinds) == 1 else "mixed",
        "by_world_size": by_world_size,
        "by_variant": None if list(by_variant) == [""] else by_variant,
    }


def speed_vs_accuracy(summary: pd.DataFrame) -> list[dict]:
    """Per (variant, world size, batch size): throughput against the baseline's next to reaching the
    target against the baseline's, both as speedups (above 1: the variant is faster; the baseline's are 1)."""
    rows = summary
    ratio = rows.time_to_target_ratio_vs_baseline
    out = pd.DataFrame(
        {
            "variant": rows.variant,
            "world_size": rows.world_size,
            "batch_size": rows.batch_size,
            "throughput_speedup": rows.throughput_ratio_vs_baseline,
            "throughput_speedup_ci95_low": rows.throughput_ratio_ci95_low,
            "throughput_speedup_ci95_high": rows.throughput_ratio_ci95_high,
            "time_to_target_speedup": 1.0 / ratio,
            "time_to_target_speedup_ci95_low": 1.0 / rows.time_to_target_ratio_ci95_high,
            "time_to_target_speedup_ci95_high": 1.0 / rows.time_to_target_ratio_ci95_low,
            "n_pairs_reached_target": rows.n_pairs_reached_target,
        }
    )
    return records(out)


def variants_summary(variants: dict[str, dict] | None, baseline: str | None, summary: pd.DataFrame) -> dict | None:
    """What the report's Variants section shows besides the rows; None without variants."""
    if not variants:
        return None
    return {
        "names": list(variants),
        "baseline": baseline,
        "overrides": variants,
        "speed_vs_accuracy": speed_vs_accuracy(summary),
    }


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


def shared_run_config(runs: list[dict]) -> dict:
    """The options every run agrees on: what the grid held fixed, shown when no workflow config is given."""
    configs = [r["config"] for r in runs]
    return {k: v for k, v in configs[0].items() if k not in PER_RUN_KEYS and all(c.get(k) == v for c in configs)}


# --------------------------------------------------------------------------- the scaling prediction


def load_comm(paths: list[Path]) -> list[dict]:
    """ddpbench.commbench's outputs, each read and checked to be one; ``_path`` added."""
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise AggregateError(
                f"cannot read the communication benchmark {path}: {err}. Delete it and rerun its job "
                "(snakemake reruns ddpbench.commbench)."
            ) from err
        if not isinstance(doc, dict) or doc.get("schema") != COMM_SCHEMA:
            raise AggregateError(
                f"{path} is not a ddpbench.commbench output (schema {COMM_SCHEMA}): give --comm the files "
                "torchrun ... -m ddpbench.commbench --out wrote, or delete it and rerun its job"
            )
        docs.append({**doc, "_path": str(path)})
    return docs


def prediction_settings(config: dict | None) -> tuple[dict | None, int]:
    """The config's predict.networks (None: ddpbench.predict's defaults) and predict.max_world_size,
    the networks checked here so that a bad one fails the aggregation with its fix."""
    settings = (config or {}).get("predict") or {}
    networks = settings.get("networks")
    try:
        parse_networks(networks)
    except ValueError as err:
        raise AggregateError(f"config predict.networks: {err}") from err
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


def checked_runs(
    paths: list[Path], schema: Path | None, expected: list[str], config: dict | None, source: str
) -> tuple[list[dict], dict[str, dict | None] | None, str | None]:
    """The runs at ``paths``, read and checked against their names, the grid and the config;
    with the study's variants ({name: overrides}, or None) and its baseline variant."""
    if not paths:
        if expected:
            shown = ", ".join(expected[:4]) + (", ..." if len(expected) > 4 else "")
            raise AggregateError(
                f"no finished run of this grid yet: none of its {len(expected)} runs ({shown}) has a result; "
                "train them first (snakemake --cores all --keep-going, with the same --configfile as here)"
            )
        raise AggregateError("no run to aggregate: give run JSONs with --runs")
    variants = grid_variants(config, expected)
    baseline = baseline_variant(config, variants)
    runs = load_runs(paths, schema, variants)
    if config is not None:
        for run in runs:
            check_options(run, run["_path"], config, source)
    if expected:
        check_grid(runs, expected)
    return runs, variants, baseline


def aggregate(
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
    p = argparse.ArgumentParser(
        prog="python -m ddpbench.aggregate", description="Aggregate run JSONs into the summary."
    )
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
        result, summary = aggregate(args.runs, args.schema, args.expect, config, source, args.comm)
    except (AggregateError, OSError, yaml.YAMLError) as err:
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
