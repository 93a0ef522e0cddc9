"""The model's FLOPs per training image (a known answer worked out by hand), the matrix-product
peak, the host's cache of it (ddpbench.peak), and the FLOP utilisation the summary derives from
them (ddpbench.utilisation)."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from ddpbench import peak
from ddpbench.utilisation import add_utilisation, attainable, gemm_at, utilisation_facts


def conv_macs(c_in, c_out, side):
    return side * side * c_out * c_in * 9


def test_simple_cnn_flops_per_image_by_hand():
    # Forward multiply-adds: three 3x3 convolutions (32x32, 16x16, 8x8 outputs) and two linear layers.
    forward = conv_macs(3, 32, 32) + conv_macs(32, 64, 16) + conv_macs(64, 128, 8) + 2048 * 512 + 512 * 10
    first_conv = conv_macs(3, 32, 32)
    # Backward: a gradient for the weights and one for the inputs of every layer, but the images need none.
    expected = 2 * (3 * forward - first_conv)
    assert expected == 66_484_224
    assert peak.flops_per_image("simple_cnn") == expected


def test_gemm_flops_is_2n3_over_the_median(monkeypatch):
    monkeypatch.setattr(peak, "GEMM_SECONDS", 0.05)
    result = peak.gemm_flops(1, "fp32", n=256)
    assert result["flops_s"] == pytest.approx(2 * 256**3 / result["median_s"]) and result["reps"] >= 3
    assert peak.thread_counts(6) == [1, 2, 4, 6] and peak.thread_counts(1) == [1]


def test_nominal_peak_only_with_a_clock(monkeypatch):
    monkeypatch.setattr(peak, "cpu_flags", lambda: {"avx512f", "fma"})
    monkeypatch.setattr(peak, "max_clock_hz", lambda: 3.0e9)
    assert peak.nominal_peak(4)["fp32_flops_s"] == 4 * 2 * 16 * 2 * 3.0e9
    monkeypatch.setattr(peak, "max_clock_hz", lambda: None)
    assert peak.nominal_peak(4) == {"fp32_flops_s": None, "reason": "the system exposes no maximum CPU clock"}


def test_a_host_measures_once_and_reuses_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(peak, "GEMM_SECONDS", 0.05)
    monkeypatch.setattr(peak, "GEMM_N", 256)
    first, second, again = (tmp_path / f"{n}.json" for n in ("first", "second", "again"))
    assert peak.main(["--out", str(first)]) == 0
    assert peak.main(["--out", str(second)]) == 0
    one, two = json.loads(first.read_text()), json.loads(second.read_text())
    assert not one["from_cache"] and two["from_cache"] and one["created_utc"] == two["created_utc"]
    assert one["flops_per_image"] == {"simple_cnn": 66_484_224} and [g["threads"] for g in one["gemm"]["fp32"]]
    assert peak.main(["--out", str(again), "--no-cache"]) == 0
    assert not json.loads(again.read_text())["from_cache"]
    assert not any(str(tmp_path) in json.dumps(v) for v in (one, two))  # nothing names the cache's path


PEAK = {
    "flops_per_image": {"simple_cnn": 60e6},
    "flops_counted": peak.COUNTED,
    "gemm": {"fp32": [{"threads": 1, "flops_s": 100e9}, {"threads": 2, "flops_s": 180e9}]},
    "gemm_method": "test",
    "nominal": {"fp32_flops_s": None, "reason": "test"},
    "created_utc": "2026-01-01T00:00:00.000+00:00",
    "bf16_native": False,
}


def test_attainable_peak_by_ranks_threads_and_cores():
    assert gemm_at(PEAK, "fp32", 2) == 180e9 and gemm_at(PEAK, "fp32", 4) == 360e9  # scaled from 2 threads
    assert attainable(PEAK, "fp32", 2, 1, cores=2) == 200e9  # two ranks, each its own core
    assert attainable(PEAK, "fp32", 8, 1, cores=2) == 180e9  # eight ranks share two cores: all of them
    assert gemm_at(PEAK, "bf16", 1) == 100e9  # no bf16 measured: the fp32 peak


def test_the_summary_gets_each_settings_mfu():
    table = pd.DataFrame(
        [
            {"variant": "", "batch_size": 128, "world_size": w, "model": "simple_cnn", "precision": p}
            | {"threads_per_rank": t, "cores_available": 2}
            for w, t, p in [(1, 2, "fp32"), (2, 1, "bf16")]
        ]
    )
    summary = pd.DataFrame(
        [{"variant": "", "batch_size": 128, "world_size": w, "throughput_mean_img_s": 1000.0} for w in (1, 2)]
    )
    out = add_utilisation(summary, table, PEAK)
    assert list(out.achieved_gflops_s) == [60.0, 60.0]
    assert list(out.attainable_gflops_s) == [180.0, 200.0]
    assert out.mfu.tolist() == pytest.approx([60 / 180, 60 / 200])
    facts = utilisation_facts(PEAK, table)
    assert facts["emulated_precisions"] == ["bf16"] and facts["flops_per_image"] == {"simple_cnn": 60e6}
    blank = add_utilisation(summary, table, None)
    assert all(math.isnan(v) for v in blank.mfu) and utilisation_facts(None, table) is None


def test_the_report_shows_each_settings_mfu_and_the_roofline_note(tmp_path):
    from conftest import RUN_SCHEMA
    from runfactory import write_grid

    from ddpbench.report import render
    from ddpbench.summary import build_summary

    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1, 2])
    summary, table = build_summary(paths, RUN_SCHEMA, expected, peak=PEAK)
    assert table.mfu.notna().all() and list(table.columns[-3:]) == ["achieved_gflops_s", "attainable_gflops_s", "mfu"]
    html = render(summary, plots=[])  # the page's text: test_plots checks the plots
    assert 'id="roofline"' in html and "60.0 MFLOP" in html and "No nominal peak: test." in html
    shown = [float(v) for v in re.findall(r'data-col="mfu" data-value="([^"]+)"', html)]
    assert shown == [row["mfu"] for row in summary["rows"]]
    plain, _ = build_summary(paths, RUN_SCHEMA, expected)
    assert plain["utilisation"] is None and 'id="roofline"' not in render(plain, plots=[])
