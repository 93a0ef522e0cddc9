"""Aggregate run JSONs into the scaling summary: one row per (world_size, batch_size).

Speedup is T(1)/T(W) on the training time (``totals.train_time_s``: training phases only,
no evaluation), paired by seed at the same batch size; efficiency = speedup / W; the
Karp-Flatt metric e = (1/S - 1/W) / (1 - 1/W) estimates the serial fraction from the mean
speedup. Confidence intervals use Student's t across seeds.

    python -m ddpbench.aggregate --runs results/runs/*.json --schema workflow/schemas/run.schema.json \
        --csv results/summary.csv --json results/summary.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ddpbench.io import atomic_write_json, atomic_write_text, utc_now

RUN_NAME = re.compile(r"ws(?P<world_size>\d+)_bs(?P<batch_size>\d+)_seed(?P<seed>\d+)")


def run_name(world_size: int, batch_size: int, seed: int) -> str:
    """A run's name, as the workflow names its files (results/runs/<name>.json)."""
    return f"ws{world_size}_bs{batch_size}_seed{seed}"
SUMMARY_COLUMNS = [
    "world_size", "batch_size", "global_batch_size", "n_seeds",
    "train_time_mean_s", "train_time_std_s", "train_loop_mean_s",
    "throughput_mean_img_s", "throughput_std_img_s",
    "speedup_mean", "speedup_ci95_low", "speedup_ci95_high",
    "efficiency_mean", "efficiency_ci95_low", "efficiency_ci95_high",
    "test_acc_mean", "test_acc_std", "test_acc_ci95_low", "test_acc_ci95_high",
    "karp_flatt", "time_to_target_mean_s", "n_reached_target",
    "data_share", "compute_share", "comm_share", "other_share", "eval_time_mean_s",
    "peak_rss_max_bytes", "threads_per_worker", "nnodes",
]


class AggregateError(ValueError):
    pass


def load_runs(paths: list[Path], schema_path: Path | None = None) -> list[dict]:
    validator = None
    if schema_path is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(json.loads(Path(schema_path).read_text()))
    runs = []
    for path in paths:
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
        run["_path"] = str(path)
        runs.append(run)
    return runs


def runs_table(runs: list[dict]) -> pd.DataFrame:
    """One row per run with the numbers the summary and the report need."""
    rows = []
    for run in runs:
        cfg, tot = run["config"], run["totals"]
        step = tot["step_time_s"]
        data = tot["data_time_s"]
        exposed = tot["comm_exposed_time_s"]
        train = tot["train_time_s"]
        rows.append({
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
            "comm_exposed_time_s": exposed if exposed is not None else np.nan,
            "other_time_s": max(train - data - step, 0.0),
            "throughput_img_s": tot["throughput_img_s"],
            "test_acc": tot["final_test_acc"],
            "test_loss": tot["final_test_loss"],
            "time_to_target_s": tot["time_to_target_s"] if tot["time_to_target_s"] is not None else np.nan,
            "peak_rss_max_bytes": tot["peak_rss_bytes_max"],
            "hostnames": ",".join(run["environment"]["hostnames"]),
            "path": run.get("_path"),
        })
    df = pd.DataFrame(rows)
    if df.empty:
        raise AggregateError("no runs to aggregate: results/runs/ holds no run JSON")
    dup = df.duplicated(["world_size", "batch_size", "seed"], keep=False)
    if dup.any():
        raise AggregateError(f"more than one run for the same (world_size, batch_size, seed): {sorted(df.loc[dup, 'path'])}")
    return df.sort_values(["batch_size", "world_size", "seed"]).reset_index(drop=True)


def add_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Per-run speedup against the same seed's one-worker run at the same batch size.

    A seed without its own one-worker run is compared with the mean one-worker time.
    """
    base = df[df.world_size == 1]
    missing = sorted(set(df.batch_size) - set(base.batch_size))
    if missing:
        raise AggregateError(
            f"no world size 1 run for batch size(s) {missing}: speedup needs the one-worker baseline; "
            "add 1 to grid.world_sizes"
        )
    by_seed = base.set_index(["batch_size", "seed"]).train_time_s
    mean_by_bs = base.groupby("batch_size").train_time_s.mean()
    t1 = [by_seed.get((bs, seed), mean_by_bs[bs]) for bs, seed in zip(df.batch_size, df.seed)]
    df = df.copy()
    df["speedup"] = np.asarray(t1) / df.train_time_s
    df["efficiency"] = df.speedup / df.world_size
    return df


def ci95(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return (values.mean() - half, values.mean() + half)


def karp_flatt(speedup: float, world_size: int) -> float:
    if world_size <= 1 or not math.isfinite(speedup) or speedup <= 0:
        return math.nan
    return (1.0 / speedup - 1.0 / world_size) / (1.0 - 1.0 / world_size)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (bs, ws), g in df.groupby(["batch_size", "world_size"], sort=True):
        train = g.train_time_s.sum()
        speedup_ci = ci95(g.speedup)
        acc_ci = ci95(g.test_acc)
        speedup_mean = g.speedup.mean()
        rows.append({
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
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def amdahl_fit(world_sizes, speedups) -> float | None:
    """Serial fraction f of Amdahl's law S(W) = 1 / (f + (1 - f) / W), least squares on S."""
    w = np.asarray(world_sizes, dtype=float)
    s = np.asarray(speedups, dtype=float)
    keep = np.isfinite(s) & (w > 1)
    if not keep.any():
        return None
    from scipy.optimize import minimize_scalar

    w, s = w[keep], s[keep]
    result = minimize_scalar(lambda f: np.sum((1.0 / (f + (1.0 - f) / w) - s) ** 2), bounds=(0.0, 1.0), method="bounded")
    return float(result.x)


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON values: NaN becomes null."""
    out = []
    for row in df.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else (v.item() if hasattr(v, "item") else v))
                    for k, v in row.items()})
    return out


def expected_missing(expected: list[str], runs: pd.DataFrame) -> list[dict]:
    present = {(r.world_size, r.batch_size, r.seed) for r in runs.itertuples()}
    missing = []
    for name in expected:
        m = RUN_NAME.fullmatch(name)
        if not m:
            raise AggregateError(f"expected run {name!r} is not named ws<W>_bs<B>_seed<S>")
        key = (int(m["world_size"]), int(m["batch_size"]), int(m["seed"]))
        if key not in present:
            missing.append(dict(zip(("world_size", "batch_size", "seed"), key)))
    return missing


def aggregate(paths: list[Path], schema: Path | None = None, expected: list[str] | None = None) -> tuple[dict, pd.DataFrame]:
    runs = add_speedup(runs_table(load_runs(paths, schema)))
    summary = summarize(runs)
    amdahl = {int(bs): amdahl_fit(g.world_size, g.speedup_mean) for bs, g in summary.groupby("batch_size")}
    return {
        "generated_utc": utc_now(),
        "definitions": {
            "train_time": "sum of the epochs' training phases on rank 0, excluding evaluation, in seconds",
            "speedup": "T(1)/T(W) of train_time, paired by seed at the same batch size (a seed without its own "
                       "one-worker run is compared with the mean one-worker time)",
            "time_to_target": "mean over the runs that reached the target accuracy (n_reached_target of them)",
            "efficiency": "speedup / world_size",
            "karp_flatt": "(1/S - 1/W) / (1 - 1/W) from the mean speedup; empty at W = 1",
            "ci95": "mean +- t(0.975, n-1) * sd / sqrt(n) across seeds; empty for one seed",
            "amdahl_serial_fraction": "f minimising the squared error of 1 / (f + (1 - f) / W) against mean speedup",
        },
        "rows": _records(summary),
        "runs": _records(runs),
        "missing_runs": expected_missing(expected or [], runs),
        "amdahl_serial_fraction": amdahl,
    }, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpbench.aggregate", description="Aggregate run JSONs into the summary.")
    p.add_argument("--runs", nargs="+", required=True, type=Path)
    p.add_argument("--schema", type=Path, help="validate every run against this JSON schema")
    p.add_argument("--expect", nargs="*", default=[], help="run names (ws<W>_bs<B>_seed<S>) the grid asks for")
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        result, summary = aggregate(args.runs, args.schema, args.expect)
    except AggregateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    atomic_write_text(args.csv, summary.to_csv(index=False, float_format="%.6g"))
    atomic_write_json(args.json, result)
    print(summary[["world_size", "batch_size", "n_seeds", "train_time_mean_s", "speedup_mean", "efficiency_mean",
                   "test_acc_mean"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
