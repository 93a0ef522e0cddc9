"""The scaling prediction end to end through the `snakemake` CLI, on synthetic data: the all-reduce
benchmark job as it is planned (a dry run), then summary.json's prediction and its validation,
results/prediction.csv and the report's "Beyond this machine" section for the .test/ grid's runs
and all-reduce timings (conftest's grid_study, copied: a predict: section of its own re-runs the
summary and the report, not the timed jobs); then the same over an emulated 1 Gbit/s link (root
and tc), where the fitted bandwidth must be the link's.

The slow tests share one working copy and run in file order: the emulated run reuses the dataset.
Its jobs run with --resources bench_slot=2, which leaves the host-wide timing lock to other
workflows on this host (a CI run may hold it for minutes); the jobs still run one at a time, as each
asks for every core.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflowcopy import GRID, copy_repo, copy_study, job_counts, snakemake, snakemake_quick, write_config

CONFIG = {  # the .test/ grid (world sizes 1 and 2, seeds 0 and 1), predicted for a 1 Gbit/s network too
    **GRID,
    "predict": {"max_world_size": 256, "networks": {"1GbE": {"bandwidth_gbit": 1, "latency_us": 50}}},
}
EMULATED = {
    **CONFIG,
    "grid": {**CONFIG["grid"], "seeds": [0]},
    "train": {**CONFIG["train"], "emulate_network": {"bandwidth_gbit": 1}},
}
UNLOCKED = ("--resources", "bench_slot=2")


@pytest.fixture(scope="module")
def workdir(grid_study, tmp_path_factory) -> Path:
    """The finished .test/ grid (its runs and results/comm/ws2.json), this module's to change."""
    return copy_study(grid_study[0], tmp_path_factory.mktemp("prediction") / "workflow")


def failed(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def test_the_comm_benchmark_is_launched_as_the_runs_are(tmp_path):
    """A dry run: one commbench job, at the largest one-node world size, timing every one of 2 or more, under
    ddpbench.launch and the timing lock (the default profile's single bench_slot), with the model's buckets;
    with variants only the baseline's (the prediction's), with its options; none for W = 1 alone."""
    workdir = copy_repo(tmp_path / "workflow")
    grid = {**CONFIG["grid"], "world_sizes": [1, 2, 4], "allow_oversubscribe": True}
    config = write_config(workdir, "plan.yaml", {**CONFIG, "grid": grid})
    result = snakemake_quick(workdir, "--configfile", config, "-n", "-p")
    assert result.returncode == 0, failed(result)
    assert job_counts(result.stdout)["commbench"] == 1
    (command,) = re.findall(r"^.*-m ddpbench.commbench .*$", result.stdout, re.M)
    assert '-m ddpbench.launch --watch-pid "$DDPBENCH_SNAKEMAKE_PID" --timing-lock' in command
    assert "-- torchrun --standalone --nproc-per-node 4 -m ddpbench.commbench --world-sizes 2,4" in command
    assert "--out results/comm/ws2.json results/comm/ws4.json --model simple_cnn --bucket-cap-mb 25.0" in command
    # The step timed with all ranks computing: the grid's first batch (config.yaml's 128), at the runs' threads
    # per rank, pinned.
    assert "--step-batch 128 --threads-per-rank 1" in command and "DDPBENCH_PIN=1 " in command
    variants = {"plain": None, "small_buckets": {"train": {"bucket_cap_mb": 1}}}
    grid = {**CONFIG["grid"], "variants": variants, "baseline": "small_buckets"}
    config = write_config(workdir, "variants.yaml", {**CONFIG, "grid": grid})
    result = snakemake_quick(workdir, "--configfile", config, "-n", "-p")
    assert result.returncode == 0 and job_counts(result.stdout)["commbench"] == 1, failed(result)
    assert "--out results/comm/small_buckets/ws2.json --model simple_cnn --bucket-cap-mb 1 " in result.stdout
    one_worker = write_config(workdir, "one.yaml", {**CONFIG, "grid": {**CONFIG["grid"], "world_sizes": [1]}})
    result = snakemake_quick(workdir, "--configfile", one_worker, "-n")
    assert result.returncode == 0 and "commbench" not in job_counts(result.stdout), failed(result)


def check_prediction(workdir: Path, seeds: list[int]) -> dict:
    """What a finished run must hold, whatever the network: the comm file, summary.json's prediction and
    its validation (none possible from W = 1 and 2 alone), prediction.csv and the report's section.
    Returns summary.json."""
    comm = json.loads((workdir / "results/comm/ws2.json").read_text())
    assert (comm["schema"], comm["world_size"], comm["backend"]) == ("ddpbench.commbench/1", 2, "gloo")
    runs = {
        w: [json.loads((workdir / f"results/runs/ws{w}_bs128_seed{s}.json").read_text()) for s in seeds] for w in (1, 2)
    }
    # The model's own DDP buckets, as the runs built them: all of SimpleCNN's float32 gradients.
    assert sum(b["bytes"] for b in comm["buckets"]) == 4 * runs[2][0]["model"]["parameters"]
    summary = json.loads((workdir / "results/summary.json").read_text())
    prediction = summary["prediction"]
    assert summary["prediction_reason"] is None and prediction["comm_world_sizes"] == [2]
    assert set(prediction["networks"]) == {"measured", "1GbE"} and prediction["max_world_size"] == 256
    assert {r["world_size"] for r in prediction["rows"]} == {2**k for k in range(9)}
    # W = 2 could only be predicted from the W = 2 timings themselves: not validated, and the report says so.
    (case,) = prediction["validation"]
    assert (case["held_out"], case["validated"]) == (2, False) and "prediction-check.yaml" in case["reason"]
    table = pd.read_csv(workdir / "results/prediction.csv")
    assert len(table) == len(prediction["rows"])
    html = (workdir / "results/report.html").read_text()
    part = html[html.index('<section id="prediction">') :]
    part = part[: part.index("</section>")]
    assert "<h2>Beyond this machine</h2>" in part and '<figure id="plot-prediction"' in part
    # commbench's timing of the two ranks computing at once, as the model used it and the report shows it.
    together = comm["compute"]
    assert together["steps_alone"] == 2 * together["steps_together"] >= 4 and together["batch"] == 128  # each rank
    slowdown = max(1.0, together["slowdown"])  # faster together than alone is never used
    assert prediction["profiles"][0]["colocation"]["measured"] == [
        [2, slowdown, pytest.approx(together["rank_wait_s"] / together["together_median_s"])]
    ]
    shown = re.search(r'data-col="slowdown" data-ranks="2" data-value="([^"]+)"', part)
    assert shown and float(shown[1]) == slowdown
    assert "not validated on this study" in part and 'class="prediction-validation"' not in part
    curve = next(c for c in prediction["curves"] if (c["network"], c["batch_mode"]) == ("1GbE", "per_worker"))
    row = re.search(r'<tr data-network="1GbE" data-batch-mode="per_worker".*?</tr>', part, re.S)[0]
    cells = dict(re.findall(r'data-col="efficiency_at_(\d+)" data-value="([^"]*)"', row))
    assert {int(w): float(v) for w, v in cells.items()} == {
        w: curve["efficiency"][curve["world_sizes"].index(w)] for w in (8, 64, 256)
    }
    return summary


@pytest.mark.slow
def test_prediction_through_the_workflow(workdir):
    """The grid's runs and commbench timings (from its first run), predicted with this config's predict:
    section: the summary and the report are made again, the timed jobs are not."""
    config = write_config(workdir, "predict.yaml", CONFIG)
    result = snakemake(workdir, "--configfile", config)
    assert result.returncode == 0, failed(result)
    counts = job_counts(result.stdout + result.stderr)
    assert counts["aggregate"] == 1 and "train" not in counts and "commbench" not in counts, counts
    assert (workdir / "logs/comm/commbench.log").exists()
    seconds = pd.read_csv(workdir / "benchmarks/comm/commbench.tsv", sep="\t")["s"].iloc[0]
    print(f"commbench at W = 2 took {seconds:.1f} s")
    summary = check_prediction(workdir, CONFIG["grid"]["seeds"])
    fit = summary["prediction"]["collective"]
    assert fit["alpha_s"] >= 0 and fit["bandwidth_gbit"] > 0 and fit["points"] >= 6
    again = snakemake_quick(workdir, "--configfile", config, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, failed(again)  # the timings are kept


def emulation_unavailable() -> str | None:
    if os.geteuid() != 0 or shutil.which("tc") is None:
        return "emulated networks need root and tc"
    launch = subprocess.run([sys.executable, "-m", "ddpbench.netem", "launch", "--help"], capture_output=True)
    if launch.returncode != 0:
        return "needs netem launch"
    check = subprocess.run(
        [sys.executable, "-m", "ddpbench.netem", "check", "--bandwidth-gbit", "1"], capture_output=True, text=True
    )
    if check.returncode:
        return check.stderr.strip() or "ddpbench.netem check failed"
    return None


@pytest.mark.slow
def test_prediction_over_an_emulated_link(workdir):
    """The runs and the all-reduce timings cross a 1 Gbit/s link (tbf) between two namespaces: the
    fitted bandwidth is the link's, not loopback's, and the report still holds the section."""
    reason = emulation_unavailable()
    if reason:
        pytest.skip(reason)
    config = write_config(workdir, "emulated.yaml", EMULATED)
    result = snakemake(workdir, "--configfile", config, *UNLOCKED)
    assert result.returncode == 0, failed(result)
    comm = json.loads((workdir / "results/comm/ws2.json").read_text())
    assert comm["environment"]["gloo_socket_ifname"] != "lo"  # the shaped interface
    run = json.loads((workdir / "results/runs/ws2_bs128_seed0.json").read_text())
    assert run["environment"]["emulated_link"]["bandwidth_gbit"] == 1
    summary = check_prediction(workdir, EMULATED["grid"]["seeds"])
    fitted = summary["prediction"]["collective"]["bandwidth_gbit"]
    assert 0.3 < fitted < 1.1, fitted  # about the link's 1 Gbit/s: a ring of two sends n bytes per rank
    assert yaml.safe_load((workdir / "results/config.json").read_text())["train"]["emulate_network"] == {
        "bandwidth_gbit": 1
    }
