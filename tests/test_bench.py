"""The benchmark harness (bench/run.py) measures every figure and ratio it promises, end to end
on a tiny synthetic dataset (its numbers mean nothing here; their presence and relations do)."""

import json
import math
import sys

import pytest
from conftest import REPO, child_env, needs_cxx, run

from ddpbench.cpus import cores_available


@pytest.mark.slow
def test_bench_run_writes_every_figure_and_ratio(tmp_path, synthetic_cache):
    cores = cores_available()
    w = 2 if cores >= 2 else 1  # at most two ranks, whatever the machine's size
    t = max(1, cores // w)
    out = tmp_path / "bench.json"
    result = run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--data",
            str(synthetic_cache),
            "--reps",
            "1",
            "--epochs",
            "2",
            "--max-train-samples",
            "256",  # 4 steps an epoch: the emulated bf16 step of an AVX2 CPU is 10 times fp32's
            "--bound-steps",
            "3",
            "--bound-warmup",
            "1",
            "--batch-size",
            "64",
            "--max-world-size",
            str(w),
            "--bf16",
            "on",
            "--out",
            str(out),
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bench = json.loads(out.read_text())
    figures = {
        f"compute_bound_{cores}t_bf16",
        "engine_ws1_bf16",
        f"compute_bound_{cores}t",
        f"compute_bound_{cores}t_contiguous",
        "engine_ws1",
        "per_sample_dataloader_ws1",
        "study_pipeline_ws1",
    }
    if w > 1:
        figures |= {
            f"compute_bound_{t}t_x{w}_at_once",
            f"compute_bound_{t}t_x{w}_synchronised",
            f"engine_ws{w}",
            f"engine_ws{w}_shared_memory",
            f"allreduce_ws{w}",
            f"allreduce_shared_memory_ws{w}",
        }
    assert figures <= set(bench["figures"])

    def median(name):
        fig = bench["figures"][name]
        return fig.get("images_per_s", fig.get("median_s", fig))["median"]

    assert all(median(name) > 0 for name in figures)
    engine = bench["figures"]["engine_ws1"]
    assert engine["launch_to_first_step_s"]["median"] > 0 and engine["peak_rss_bytes_total"]["median"] > 0
    ratios = bench["ratios_of_medians"]
    assert all(math.isfinite(v) for v in ratios.values())
    assert ratios["ws1_vs_compute_bound"] == pytest.approx(median("engine_ws1") / median(f"compute_bound_{cores}t"))
    assert ratios["ws1_bf16_vs_ws1_fp32"] == pytest.approx(median("engine_ws1_bf16") / median("engine_ws1"))
    assert ratios["ws1_bf16_vs_bf16_compute_bound"] == pytest.approx(
        median("engine_ws1_bf16") / median(f"compute_bound_{cores}t_bf16")
    )
    assert ratios["ws1_vs_study_pipeline"] == pytest.approx(median("engine_ws1") / median("study_pipeline_ws1"))
    # Model FLOP utilisation against the matrix-product peak of the same threads, fp32 and bf16.
    flops = bench["settings"]["model_flops_per_image"]
    for suffix in ("", "_bf16"):
        bound = bench["figures"][f"compute_bound_{cores}t{suffix}"]
        gemm = bound["gemm_flops_s"]["median"]
        assert ratios[f"engine_ws1{suffix}_mfu"] == pytest.approx(median(f"engine_ws1{suffix}") * flops / gemm)
        assert 0 < ratios[f"compute_bound_{cores}t{suffix}_mfu"] < 1.5
    if w > 1:
        assert ratios[f"ws{w}_vs_{w}x_compute_bound_{t}t"] == pytest.approx(
            median(f"engine_ws{w}") / (w * median(f"compute_bound_{t}t"))
        )
        assert ratios[f"ws{w}_vs_compute_bound_{t}t_x{w}_synchronised"] == pytest.approx(
            median(f"engine_ws{w}") / median(f"compute_bound_{t}t_x{w}_synchronised")
        )
        # The default measures DDP's own all-reduce; ddpbench's shared-memory exchange is the comparison.
        assert ratios[f"ws{w}_shared_memory_vs_backend_allreduce"] == pytest.approx(
            median(f"engine_ws{w}_shared_memory") / median(f"engine_ws{w}")
        )
        assert f"rss_increase_ws1_to_ws{w}_over_dataset" in ratios
    assert "ratios of medians:" in result.stdout  # the printed table


@pytest.mark.slow  # torchrun launches and inductor's builds
@needs_cxx
def test_compile_precision_bench_pairs_every_setting_with_fp32_eager(tmp_path, synthetic_cache):
    """bench/compile_precision.py: per setting the engine, its compute bound, their ratio and MFU,
    and the ratio to fp32 eager of the same round (its own is 1 in every round)."""
    out = tmp_path / "compile.json"
    args = ["--data", str(synthetic_cache), "--reps", "1", "--epochs", "2", "--max-train-samples", "256"]
    args += ["--bound-steps", "3", "--bound-warmup", "1", "--batch-size", "64", "--precisions", "fp32"]
    env = child_env() | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = run([sys.executable, str(REPO / "bench" / "compile_precision.py"), *args, "--out", str(out)], env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bench = json.loads(out.read_text())
    assert set(bench["ratios"]) == {"fp32_none", "fp32_default"}
    eager, compiled = bench["figures"]["engine_fp32_none"], bench["figures"]["engine_fp32_default"]
    assert "compile_s" not in eager and compiled["compile_s"]["median"] > 0  # None for eager runs: left out
    assert bench["ratios"]["fp32_none"]["engine_vs_fp32_eager"]["median"] == 1.0
    ratio = bench["ratios"]["fp32_default"]["engine_vs_fp32_eager"]["median"]
    assert ratio == pytest.approx(compiled["images_per_s"]["median"] / eager["images_per_s"]["median"])
    bound = bench["figures"]["bound_fp32_default"]
    mfu = bench["ratios"]["fp32_default"]["bound_mfu"]["median"]
    flops = bench["settings"]["model_flops_per_image"]
    assert mfu == pytest.approx(bound["images_per_s"]["median"] * flops / bound["gemm_flops_s"]["median"])
    assert "fp32_default" in result.stdout and "vs fp32 eager" in result.stdout  # the printed table
