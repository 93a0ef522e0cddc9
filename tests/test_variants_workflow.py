"""Variants end to end through the `snakemake` CLI, on synthetic data: each variant's runs with its
overrides, summary rows per variant with ratios against the baseline, and the report's variant
table showing the same numbers. Its own copy of the repository (the grid differs from .test/'s)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from workflowcopy import GRID, copy_repo, snakemake, write_config

VARIANT_GRID = {
    **GRID,
    # Half the .test/ images: the runs' timings and ratios need a few steps, not more.
    "data": {**GRID["data"], "synthetic": {"train_size": 512, "test_size": 128}},
    "grid": {
        **GRID["grid"],
        "seeds": [0],
        "baseline": "buckets_1mb",  # (yaml.safe_dump sorts the keys: the first would be bf16_fp16_hook)
        "variants": {
            "buckets_1mb": {"train": {"bucket_cap_mb": 1}},
            "bf16_fp16_hook": {"train": {"precision": "bf16", "comm_hook": "fp16"}},
        },
    },
}


@pytest.mark.slow
def test_variants_through_the_cli(tmp_path):
    """Two variants (a bucket size; bf16 with the fp16 comm hook) x world sizes 1 and 2, one seed:
    each run in its variant's folder with its overrides, summary rows per variant with ratios
    against the baseline (not the first variant), and the report's variant table showing the same
    numbers. (Pairing by seed over several seeds: test_summary's known-answer tests.)"""
    workdir = copy_repo(tmp_path / "variants")
    config = write_config(workdir, "variants.yaml", VARIANT_GRID)
    result = snakemake(workdir, "--configfile", config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = {(p.parent.name, p.stem): json.loads(p.read_text()) for p in (workdir / "results/runs").glob("*/*.json")}
    assert len(runs) == 4
    assert runs[("bf16_fp16_hook", "ws2_bs128_seed0")]["config"]["comm_hook"] == "fp16"
    assert runs[("bf16_fp16_hook", "ws1_bs128_seed0")]["config"]["precision"] == "bf16"
    assert runs[("buckets_1mb", "ws1_bs128_seed0")]["config"]["precision"] == "fp32"
    gradients = runs[("buckets_1mb", "ws2_bs128_seed0")]["ddp"]["allreduce_payload_bytes_per_step"]
    assert runs[("bf16_fp16_hook", "ws2_bs128_seed0")]["ddp"]["allreduce_payload_bytes_per_step"] == gradients // 2
    buckets = {v: runs[(v, "ws2_bs128_seed0")]["ddp"]["buckets"] for v in VARIANT_GRID["grid"]["variants"]}
    assert buckets["buckets_1mb"] > buckets["bf16_fp16_hook"]  # DDP's 25 MB cap against 1 MB

    summary = json.loads((workdir / "results/summary.json").read_text())
    rows = {(r["variant"], r["world_size"]): r for r in summary["rows"]}
    assert sorted(rows) == sorted((v, w) for v in VARIANT_GRID["grid"]["variants"] for w in (1, 2))
    table = pd.read_csv(workdir / "results/summary.csv")
    assert list(table.columns[:2]) == ["variant", "world_size"] and len(table) == 4
    html = (workdir / "results/report.html").read_text()
    variants_table = html.split('<table class="variants">', 1)[1].split("</table>", 1)[0]
    for (variant, w), row in rows.items():
        totals = runs[(variant, f"ws{w}_bs128_seed0")]["totals"]
        base = runs[("buckets_1mb", f"ws{w}_bs128_seed0")]["totals"]
        ratio = totals["steady_throughput_img_s"] / base["steady_throughput_img_s"]
        assert row["throughput_ratio_vs_baseline"] == pytest.approx(ratio)
        assert row["test_acc_diff_vs_baseline"] == pytest.approx(totals["final_test_acc"] - base["final_test_acc"])
        one = runs[(variant, "ws1_bs128_seed0")]["totals"]["steady_throughput_img_s"]
        assert row["speedup_mean"] == pytest.approx(totals["steady_throughput_img_s"] / one)  # within the variant
        cell = re.search(
            rf'<tr data-variant="{variant}" data-world-size="{w}"[^>]*>.*?'
            r'data-col="throughput_ratio_vs_baseline" data-value="([^"]+)"',
            variants_table,
            re.S,
        )
        assert cell and float(cell[1]) == pytest.approx(row["throughput_ratio_vs_baseline"])
    assert rows[("buckets_1mb", 2)]["throughput_ratio_vs_baseline"] == 1.0
