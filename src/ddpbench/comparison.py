"""Each variant of a study against its baseline variant (grid.baseline, else the first) at the same
world size and batch size, paired by seed: throughput and time-to-target ratios and the test-accuracy
difference, each a mean over the paired seeds with its Student's t interval (ddpbench.stats)."""

from __future__ import annotations

import pandas as pd

from ddpbench.runtable import records
from ddpbench.stats import ci95, paired_difference, paired_ratio

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
# Per-run values the comparison columns average: (run column, how the run's and the baseline's combine).
PAIRED = {
    "throughput_ratio": ("throughput_img_s", paired_ratio),
    "time_to_target_ratio": ("time_to_target_s", paired_ratio),
    "test_acc_diff": ("test_acc", paired_difference),
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
