"""The benchmark harness (bench/run.py) measures every figure and ratio it promises, end to end
on a tiny synthetic dataset (its numbers mean nothing here; their presence and shape do)."""

import json
import math
import sys

import pytest

from conftest import REPO, run
from ddpbench.metrics import cores_available


@pytest.mark.slow
def test_bench_run_writes_every_figure_and_ratio(tmp_path, synthetic_cache):
    out = tmp_path / "bench.json"
    result = run([sys.executable, str(REPO / "bench" / "run.py"), "--data", str(synthetic_cache), "--reps", "1",
                  "--epochs", "2", "--max-train-samples", "512", "--bound-steps", "3", "--out", str(out)], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bench = json.loads(out.read_text())
    w, t = cores_available(), 1
    figures = {f"compute_bound_{w}t", "engine_ws1", "per_sample_dataloader_ws1",
               "study_pipeline_ws1"}
    if w > 1:
        figures |= {f"compute_bound_{t}t_x{w}_at_once", f"compute_bound_{t}t_x{w}_synchronised", f"engine_ws{w}",
                    f"engine_ws{w}_backend_allreduce", f"allreduce_ws{w}", f"allreduce_shared_memory_ws{w}"}
    assert figures <= set(bench["figures"])
    for name in figures:
        fig = bench["figures"][name]
        values = fig.get("images_per_s", fig.get("median_s", fig))
        assert values["min"] <= values["median"] <= values["max"] and values["n"] == 1, name
    engine = bench["figures"]["engine_ws1"]
    assert engine["launch_to_first_step_s"]["median"] > 0 and engine["peak_rss_bytes_total"]["median"] > 0
    ratios = bench["ratios_of_medians"]
    expected = {"ws1_vs_compute_bound", "ws1_vs_study_pipeline", "ws1_vs_per_sample_dataloader"}
    if w > 1:
        expected |= {f"ws{w}_vs_{w}x_compute_bound_{t}t", f"ws{w}_vs_compute_bound_{t}t_x{w}_synchronised",
                     f"rss_increase_ws1_to_ws{w}_over_dataset"}
    assert expected <= set(ratios)
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert "ratios of medians:" in result.stdout  # the printed table
