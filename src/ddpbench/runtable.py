"""The per-run table the summary is built from: one row per checked run (ddpbench.runs), its paired
speedup and efficiency, the grid's runs without a result, the mean learning curves, and tables as
JSON records."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ddpbench.runs import EXPECTED_NAME, RunsError, run_name
from ddpbench.stats import paired_difference, paired_ratio


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
        "threads_per_rank": env["threads_per_rank"],
        "cores_available": env["cores_available"],
        "precision": cfg["precision"],
        "compile": cfg.get("compile", "none"),  # runs before train.compile ran eager
        "model": cfg["model"],
        "train_time_s": train,
        "train_loop_s": tot["train_loop_s"],
        "eval_time_s": tot["eval_time_s"],
        "data_time_s": data,
        "compute_time_s": tot["compute_time_s"] if tot["compute_time_s"] is not None else step,
        "comm_exposed_time_s": tot["comm_exposed_time_s"],
        "other_time_s": max(train - data - step, 0.0),
        "images": tot["images"],
        # The headline figures are the steady state's (ddpbench.records.steady_state): no warm-up.
        "throughput_img_s": tot["steady_throughput_img_s"],
        "steady_images": tot["steady_images"],
        "steady_time_s": tot["steady_time_s"],
        "whole_run_throughput_img_s": tot["throughput_img_s"],
        "warmup_steps": tot["warmup_steps"],
        "warmup_cost_s": tot["warmup_cost_s"],
        "warmup_share_first_epoch": tot["warmup_cost_s"] / run["epochs"][0]["train_time_s"],
        "compile_s": tot.get("compile_s"),
        "step_cv": tot["steady_step_time_cv"],
        "step_skew": tot["step_skew_max"],
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
        raise RunsError("no runs to aggregate: results/runs/ holds no run JSON")
    for column in (
        "comm_exposed_time_s",
        "compile_s",
        "time_to_target_s",
        "startup_s",
        "lock_wait_s",
        "step_cv",
        "step_skew",
    ):
        df[column] = df[column].astype(float)  # None -> NaN
    dup = df.duplicated(["variant", "world_size", "batch_size", "seed"], keep=False)
    if dup.any():
        raise RunsError(
            f"more than one run for the same (world_size, batch_size, seed): {sorted(df.loc[dup, 'path'])}; "
            "runs of different variants belong in results/runs/<variant>/ with grid.variants in --config"
        )
    rank = {name: i for i, name in enumerate(order or [])}
    return df.sort_values(
        ["variant", "batch_size", "world_size", "seed"],
        key=lambda column: column.map(rank) if column.name == "variant" else column,
    ).reset_index(drop=True)


def add_run_order(df: pd.DataFrame, planned: list[str]) -> pd.DataFrame:
    """Every run's place in ``planned`` (the order ddpbench.order meant them to start in; empty for a
    run not in it) and its real start order among these runs (by started_utc), both from 1."""
    position = {name: i + 1 for i, name in enumerate(planned)}
    df = df.copy()
    df["planned_order"] = df.name.map(position).astype(float)
    df["start_order"] = pd.to_datetime(df.started_utc).rank(method="first").astype(int)
    return df


def group_label(variant: str, batch_size: int) -> str:
    return (f"variant {variant}, " if variant else "") + f"batch size {batch_size}"


def add_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Per-run speedup against the same seed's one-worker run of the same variant and batch size:
    the ratio of their steady-state throughputs (``speedup``), and T(1)/T(W) of the whole training
    time, warm-up included (``speedup_whole_run``); and the change of test accuracy in points
    (``acc_change_vs_one``).

    A seed without its own one-worker run has no speedup (NaN): it is left out of its setting's
    speedup, not compared with the other seeds' one-worker time (unpaired_speedup lists it)."""
    base = df[df.world_size == 1]
    groups = set(zip(df.variant, df.batch_size, strict=True))
    missing = sorted(groups - set(zip(base.variant, base.batch_size, strict=True)))
    if missing:
        shown = [bs for _, bs in missing] if not any(v for v, _ in missing) else [group_label(*m) for m in missing]
        raise RunsError(
            f"no world size 1 run for batch size(s) {shown}: speedup needs the one-worker baseline; "
            "add 1 to grid.world_sizes"
        )
    keys = ["variant", "batch_size", "seed"]
    columns = ["train_time_s", "throughput_img_s", "test_acc"]
    one = df[keys].merge(base[keys + columns], on=keys, how="left", validate="many_to_one")
    df = df.copy()
    df["speedup"] = paired_ratio(df.throughput_img_s.to_numpy(float), one.throughput_img_s.to_numpy(float))
    df["speedup_whole_run"] = paired_ratio(one.train_time_s.to_numpy(float), df.train_time_s.to_numpy(float))
    df["acc_change_vs_one"] = paired_difference(df.test_acc.to_numpy(float), one.test_acc.to_numpy(float))
    df["efficiency"] = df.speedup / df.world_size
    return df


def unpaired_speedup(df: pd.DataFrame) -> list[dict]:
    """The runs left out of their setting's speedup: their seed has no one-worker run."""
    left_out = df[df.speedup.isna()][["variant", "world_size", "batch_size", "seed", "name"]]
    return records(left_out)


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON values: NaN becomes null, numpy scalars become Python's, no variant ("") null."""
    out = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    for row in out:
        if row.get("variant") == "":
            row["variant"] = None
    return out


def expected_missing(expected: list[str], runs: pd.DataFrame) -> list[dict]:
    """The expected runs without a result, in the grid's order (variants as first named, then world
    size, batch size, seed: not the planned start order); each names its variant only with variants."""
    present = {(r.variant, r.world_size, r.batch_size, r.seed) for r in runs.itertuples()}
    missing = []
    for name in expected:
        m = EXPECTED_NAME.fullmatch(name)
        if not m:
            raise RunsError(f"expected run {name!r} is not named ws<W>_bs<B>_seed<S> or <variant>/ws<W>_bs<B>_seed<S>")
        key = (int(m["world_size"]), int(m["batch_size"]), int(m["seed"]))
        if (m["variant"] or "", *key) not in present:
            found = dict(zip(("world_size", "batch_size", "seed"), key, strict=True))
            missing.append({"variant": m["variant"], **found} if m["variant"] else found)
    variants = list(dict.fromkeys(m.get("variant") for m in missing))
    return sorted(
        missing, key=lambda m: (variants.index(m.get("variant")), m["world_size"], m["batch_size"], m["seed"])
    )


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


STEP_QUANTILES = {"p5_s": 5, "p25_s": 25, "median_s": 50, "p75_s": 75, "p95_s": 95}


def steady_steps(run: dict) -> list[float]:
    """Rank 0's steps after the run's warm-up (ddpbench.records.steady_state), in order."""
    series = [t for e in run["epochs"] for t in e["step_times_s"]]
    return series[run["totals"]["warmup_steps"] :]


def step_distributions(runs: list[dict], order: list[str] | None = None) -> list[dict]:
    """Per (variant, batch size, world size): rank 0's steady-state steps pooled over the seeds, as
    the percentiles of STEP_QUANTILES in seconds, and each rank's median step (the median over the
    seeds' epochs of its per-epoch median)."""
    rank = {name: i for i, name in enumerate(order or [])}
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        cfg = r["config"]
        groups.setdefault((r.get("_variant", ""), cfg["batch_size"], cfg["world_size"]), []).append(r)
    out = []
    for (variant, bs, ws), members in sorted(groups.items(), key=lambda item: (rank.get(item[0][0], 0), *item[0][1:])):
        steady = [t for r in members for t in steady_steps(r)]
        quantiles = np.percentile(steady, list(STEP_QUANTILES.values())).tolist()
        medians = [[e["step_time_ranks"][i]["median_s"] for r in members for e in r["epochs"]] for i in range(ws)]
        out.append(
            {
                "variant": variant or None,
                "batch_size": int(bs),
                "world_size": int(ws),
                "n_seeds": len(members),
                "steps": len(steady),
                **dict(zip(STEP_QUANTILES, quantiles, strict=True)),
                "rank_median_s": [float(np.median([m for m in ms if m is not None])) for ms in medians],
            }
        )
    return out
