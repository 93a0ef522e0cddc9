"""Runs against runs. Each variant of a study against its baseline variant (grid.baseline, else the
first) at the same world size and batch size, paired by seed: the throughput and time-to-target
ratios, summarised on the log scale (geometric mean, t interval of the mean log ratio), and the
test-accuracy difference (mean, t interval), each with a paired t-test; the tests of the table's
cells Holm-corrected together, and a cell marked only where the corrected test and a minimum effect
size both say so (ddpbench.stats). And one setting's runs against another set of them
(against_reference: machines in ddpbench.compare, one machine over time in ddpbench.history),
paired by seed where enough seeds match, else with Welch's unpaired test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ddpbench.runtable import records
from ddpbench.stats import (
    CORRECTION,
    DIFFERENCE_TEST,
    MIN_INTERVAL_N,
    RATIO_TEST,
    geometric_mean_interval,
    holm,
    mean_interval,
    paired_difference,
    paired_ratio,
    paired_t_test,
    welch_difference,
    welch_ratio,
)

# A marked cell's corrected p-value is below this (the level of the 95 % intervals).
ALPHA = 0.05
# report.min_effect's defaults: a ratio counts from 2 % either way, an accuracy difference from half a point.
MIN_EFFECT = {"throughput": 0.02, "time_to_target": 0.02, "accuracy_points": 0.5}
# Per-run values the comparison columns summarise: (run column, how the run's and the baseline's combine).
PAIRED = {
    "throughput_ratio": ("throughput_img_s", paired_ratio),
    "time_to_target_ratio": ("time_to_target_s", paired_ratio),
    "test_acc_diff": ("test_acc", paired_difference),
}
# Each compared quantity: (its name, whether it is a ratio, its report.min_effect key).
METRICS = (
    ("throughput_ratio", True, "throughput"),
    ("time_to_target_ratio", True, "time_to_target"),
    ("test_acc_diff", False, "accuracy_points"),
)
# A setting as ddpbench.compare and ddpbench.history compare it across bundles.
SETTING = ["variant", "batch_size", "world_size"]
# Two sets of runs of one setting (machines, or one machine over time: ddpbench.compare, ddpbench.history):
# (name, per-run column, whether it is a ratio, its report.min_effect key).
QUANTITIES = (
    ("throughput", "throughput_img_s", True, "throughput"),
    ("test_acc", "test_acc", False, "accuracy_points"),
)
STAT_SUFFIXES = ("_vs_baseline", "_ci95_low", "_ci95_high", "_p", "_p_holm", "_marked")
COMPARISON_COLUMNS = [
    "n_pairs_vs_baseline",
    *(f"{name}{suffix}" for name, _, _ in METRICS[:2] for suffix in STAT_SUFFIXES),
    "n_pairs_reached_target",
    *(f"test_acc_diff{suffix}" for suffix in STAT_SUFFIXES),
]
VARIANT_DEFINITIONS = {
    "variant": "a named set of overrides of the train options (grid.variants); speedup and efficiency are "
    "within a variant, against its own world size 1",
    "baseline": "the variant the others are compared with (grid.baseline, else the first variant)",
    "n_pairs_vs_baseline": "seeds with a run of both the variant and the baseline at this world size and batch size",
    "throughput_ratio_vs_baseline": "geometric mean over paired seeds of the variant's throughput / the "
    "baseline's, with the 95 % t interval of the mean log ratio (throughput_ratio_ci95_low/_high; none below 3 "
    "pairs); above 1: the variant trains more images per second",
    "time_to_target_ratio_vs_baseline": "geometric mean over the seeds where both reached the target accuracy "
    "(n_pairs_reached_target) of the variant's time to target / the baseline's, with the 95 % t interval of the "
    "mean log ratio (time_to_target_ratio_ci95_low/_high); below 1: the variant reaches the target sooner",
    "test_acc_diff_vs_baseline": "mean over paired seeds of the variant's final test accuracy - the baseline's, "
    "in points, with its 95 % t interval (test_acc_diff_ci95_low/_high)",
    "<quantity>_p": f"two-sided p-value of the cell's paired test: for a ratio the {RATIO_TEST}, for the accuracy the "
    f"{DIFFERENCE_TEST}; none below 3 pairs, and none for the baseline's own rows",
    "<quantity>_p_holm": f"the p-value after {CORRECTION} (every variant, world size and batch size, "
    "all three quantities)",
    "<quantity>_marked": f"the corrected p-value is below {ALPHA} and the effect is at least report.min_effect "
    "(a ratio at least 1 + throughput or time_to_target, or at most its inverse; a difference at least "
    "accuracy_points points either way)",
    "time_to_target_speedup_vs_baseline": "1 / time_to_target_ratio_vs_baseline, its interval inverted: above 1 "
    "the variant reaches the target sooner (summary.json: variants.speed_vs_accuracy)",
}


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


def comparison(g: pd.DataFrame) -> dict:
    """The comparison columns of one (variant, world_size, batch_size) before the correction: each
    quantity's estimate with its interval and the p-value of its paired test."""
    out = {"n_pairs_vs_baseline": int(g.throughput_ratio.notna().sum())}
    for name, ratio, _ in METRICS:
        values = g[name].to_numpy(float)
        estimate = geometric_mean_interval(values) if ratio else mean_interval(values)
        null = np.ones_like(values) if ratio else np.zeros_like(values)
        p, _ = paired_t_test(values, null, log=ratio)
        out |= {
            f"{name}_vs_baseline": estimate.value,
            f"{name}_ci95_low": estimate.low,
            f"{name}_ci95_high": estimate.high,
            f"{name}_p": p,
            f"{name}_p_holm": math.nan,
            f"{name}_marked": False,
        }
    out["n_pairs_reached_target"] = int(g.time_to_target_ratio.notna().sum())
    return out


def large_enough(values: pd.Series, ratio: bool, minimum: float) -> pd.Series:
    """Whether each estimate is at least the minimum effect: a ratio from 1 + minimum (or its inverse)."""
    size = np.abs(np.log(values)) if ratio else values.abs()
    return size >= (math.log1p(minimum) if ratio else minimum) - 1e-12


def mark_cells(summary: pd.DataFrame, baseline: str | None, min_effect: dict) -> tuple[pd.DataFrame, int]:
    """The summary with its comparison cells Holm-corrected together and marked where the corrected
    p-value is below ALPHA and the estimate at least its minimum effect; and the number of tests.
    The baseline's own rows are not tested."""
    if baseline is None:
        return summary, 0
    summary = summary.copy()
    own = summary.variant == baseline
    for name, _, _ in METRICS:
        summary.loc[own, f"{name}_p"] = math.nan
    p = summary[[f"{name}_p" for name, _, _ in METRICS]].to_numpy(float)
    adjusted = holm(p.ravel()).reshape(p.shape)
    for i, (name, ratio, key) in enumerate(METRICS):
        summary[f"{name}_p_holm"] = adjusted[:, i]
        effect = large_enough(summary[f"{name}_vs_baseline"], ratio, min_effect[key])
        summary[f"{name}_marked"] = (summary[f"{name}_p_holm"] < ALPHA) & effect
    return summary, int(np.count_nonzero(~np.isnan(p)))


def speed_vs_accuracy(summary: pd.DataFrame) -> list[dict]:
    """Per (variant, world size, batch size): throughput against the baseline's next to reaching the
    target against the baseline's, both as speedups (above 1: the variant is faster; the baseline's are 1)."""
    rows = summary
    out = pd.DataFrame(
        {
            "variant": rows.variant,
            "world_size": rows.world_size,
            "batch_size": rows.batch_size,
            "throughput_speedup": rows.throughput_ratio_vs_baseline,
            "throughput_speedup_ci95_low": rows.throughput_ratio_ci95_low,
            "throughput_speedup_ci95_high": rows.throughput_ratio_ci95_high,
            "n_pairs_vs_baseline": rows.n_pairs_vs_baseline,
            "time_to_target_speedup": 1.0 / rows.time_to_target_ratio_vs_baseline,
            "time_to_target_speedup_ci95_low": 1.0 / rows.time_to_target_ratio_ci95_high,
            "time_to_target_speedup_ci95_high": 1.0 / rows.time_to_target_ratio_ci95_low,
            "n_pairs_reached_target": rows.n_pairs_reached_target,
        }
    )
    return records(out)


def variants_summary(
    variants: dict[str, dict] | None, baseline: str | None, summary: pd.DataFrame, tests: dict
) -> dict | None:
    """What the report's Variants section shows besides the rows; None without variants."""
    if not variants:
        return None
    return {
        "names": list(variants),
        "baseline": baseline,
        "overrides": variants,
        "speed_vs_accuracy": speed_vs_accuracy(summary),
        "tests": tests,
    }


def comparison_tests(n_tests: int, min_effect: dict) -> dict:
    """How the Variants table's cells are tested and marked (summary.json: variants.tests)."""
    return {
        "ratio_test": RATIO_TEST,
        "difference_test": DIFFERENCE_TEST,
        "correction": CORRECTION,
        "n_tests": n_tests,
        "alpha": ALPHA,
        "min_effect": min_effect,
    }


def against_reference(group: pd.DataFrame, ref: pd.DataFrame) -> dict:
    """Throughput ratio and accuracy difference against the reference's runs of the same setting:
    paired by seed where MIN_INTERVAL_N seeds match, else Welch's unpaired test."""
    common = sorted(set(group.seed) & set(ref.seed))
    paired = len(common) >= MIN_INTERVAL_N
    out = {"test": "paired" if paired else "unpaired", "n_pairs": len(common) if paired else 0}
    if paired:
        mine, theirs = group.set_index("seed").loc[common], ref.set_index("seed").loc[common]
    for name, column, ratio, _ in QUANTITIES:
        if paired:
            a, b = mine[column].to_numpy(float), theirs[column].to_numpy(float)
            estimate = geometric_mean_interval(a / b) if ratio else mean_interval(a - b)
            p, _ = paired_t_test(a, b, log=ratio)
        else:
            compare = welch_ratio if ratio else welch_difference
            estimate, p = compare(group[column].to_numpy(float), ref[column].to_numpy(float))
        suffix = "ratio" if ratio else "diff"
        out |= {
            f"{name}_{suffix}": estimate.value,
            f"{name}_{suffix}_ci95_low": estimate.low,
            f"{name}_{suffix}_ci95_high": estimate.high,
            f"{name}_p": p,
        }
    return out
