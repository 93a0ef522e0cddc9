"""How far each setting runs from the hardware's limit (ddpbench.peak's results/peak.json): its
achieved FLOP/s, the attainable peak of the cores it used, and their ratio, the model FLOP
utilisation (MFU).

Achieved: the setting's steady-state throughput (images/s over all ranks) x the model's training
FLOPs per image (matrix products and convolutions: peak.COUNTED). Attainable: for W ranks of t
threads, W x the measured matrix-product peak at t threads (each rank on its own cores), or the
peak at every core where W x t exceeds the cores (the ranks share them), in the run's precision
where the hardware has it natively and in fp32 otherwise (bf16 emulated: flagged). Pure: no torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

UTILISATION_COLUMNS = ["achieved_gflops_s", "attainable_gflops_s", "mfu"]
DEFINITIONS = {
    "achieved_gflops_s": "steady-state throughput x the model's training FLOPs per image (matrix products and "
    "convolutions, forward and backward; summary.json: utilisation.flops_counted), in GFLOP/s",
    "attainable_gflops_s": "the measured matrix-product peak of the cores the setting used (ddpbench.peak): "
    "W x the peak at a rank's threads, or the peak at every core where the ranks share them; the run's "
    "precision where the hardware has it, else fp32",
    "mfu": "model FLOP utilisation: achieved_gflops_s / attainable_gflops_s",
}


def load_peak(path: Path | None) -> dict | None:
    return None if path is None else json.loads(Path(path).read_text())


def gemm_at(peak: dict, precision: str, threads: int) -> float:
    """FLOP/s of the measured matrix product at ``threads`` (scaled from the nearest count below
    where that count was not measured), in ``precision`` where measured, else fp32."""
    points = peak["gemm"].get(precision) or peak["gemm"]["fp32"]
    below = [p for p in points if p["threads"] <= threads] or points[:1]
    nearest = max(below, key=lambda p: p["threads"])
    return nearest["flops_s"] * threads / nearest["threads"]


def attainable(peak: dict, precision: str, world_size: int, threads: int, cores: int) -> float:
    if world_size * threads > cores:  # the ranks share the cores: all of them, at most
        return gemm_at(peak, precision, cores)
    return world_size * gemm_at(peak, precision, threads)


def setting_facts(table: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, batch size, world size): the runs' precision, threads per rank and cores."""
    keys = ["variant", "batch_size", "world_size"]
    return table.groupby(keys, sort=False).agg(
        model=("model", "first"),
        precision=("precision", "first"),
        threads=("threads_per_rank", "max"),
        cores=("cores_available", "max"),
    )


def add_utilisation(summary: pd.DataFrame, table: pd.DataFrame, peak: dict | None) -> pd.DataFrame:
    """The summary with UTILISATION_COLUMNS (NaN without a peak measurement)."""
    summary = summary.copy()
    if peak is None:
        for column in UTILISATION_COLUMNS:
            summary[column] = math.nan
        return summary
    facts = setting_facts(table)
    achieved, limit = [], []
    for row in summary.itertuples():
        fact = facts.loc[(row.variant, row.batch_size, row.world_size)]
        achieved.append(row.throughput_mean_img_s * peak["flops_per_image"][fact.model] / 1e9)
        limit.append(attainable(peak, fact.precision, row.world_size, int(fact.threads), int(fact.cores)) / 1e9)
    summary["achieved_gflops_s"] = achieved
    summary["attainable_gflops_s"] = limit
    summary["mfu"] = summary.achieved_gflops_s / summary.attainable_gflops_s
    return summary


def utilisation_facts(peak: dict | None, table: pd.DataFrame) -> dict | None:
    """What summary.json says of the peak: the FLOP count, the measured and nominal peaks, and which
    precisions ran emulated."""
    if peak is None:
        return None
    emulated = sorted({p for p in table.precision if p == "bf16" and not peak["bf16_native"]})
    return {
        "flops_per_image": peak["flops_per_image"],
        "flops_counted": peak["flops_counted"],
        "gemm": peak["gemm"],
        "gemm_method": peak["gemm_method"],
        "nominal": peak["nominal"],
        "measured_utc": peak["created_utc"],
        "from_cache": peak.get("from_cache", False),
        "emulated_precisions": emulated,
    }
