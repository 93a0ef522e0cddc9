"""End to end through the `snakemake` CLI, in temporary copies of the repository, on synthetic data.

The fast tier: configs refused before any job, and dry runs (``snakemake_quick``: the CLI with its
imports paid once). The slow tier reads the .test/ grid, run once per session (conftest's
``grid_study``), in one copy that the tests share in file order: the full run's outputs, then the
incremental behaviour on top of it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml
from conftest import REPO, RUN_SCHEMA
from workflowcopy import (
    GRID,
    RUNS,
    TEST_CONFIG,
    copy_repo,
    copy_study,
    job_counts,
    snakemake,
    snakemake_quick,
    start_snakemake,
    write_config,
)

from ddpbench.bundle import load_bundle


@pytest.fixture(scope="module")
def plain_copy(tmp_path_factory) -> Path:
    """A copy of the repository that only dry runs use."""
    return copy_repo(tmp_path_factory.mktemp("plain") / "workflow")


@pytest.fixture(scope="module")
def workdir(grid_study, tmp_path_factory) -> Path:
    """The finished .test/ grid, this module's to change."""
    return copy_study(grid_study[0], tmp_path_factory.mktemp("workflow") / "workflow")


@pytest.fixture(scope="module")
def grid_config(workdir) -> str:
    return TEST_CONFIG


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"data": {"source": "imagenet"}}, ["imagenet", "'cifar10'", "'synthetic'", "source"]),
        ({"train": {"epoch": 3}}, ["epoch", "Additional properties"]),
        ({"train": {"augment": "mixup"}}, ["mixup", "flip_crop", "augment"]),
        ({"grid": {"world_sizes": [1, 512]}}, ["[512]", "allow_oversubscribe"]),
        ({"grid": {"world_sizes": [2]}}, ["must include 1"]),
        ({"grid": {"world_sizes": [1, 2, 2]}}, ["grid.world_sizes", "non-unique", "Allowed: Ranks per run"]),
        ({"grid": {"world_sizes": [0, 1]}}, ["grid.world_sizes", "0 is less than the minimum of 1"]),
        ({"data": {"url": "javascript:alert(1)"}}, ["data.url", "https://, http:// or file:// URL"]),
        ({"train": {"threads_per_worker": "many"}}, ["train.threads_per_worker", "Allowed: CPU threads per rank"]),
        ({"train": {"lr_schedule": "step"}}, ["train.lr_schedule", "'cosine'", "'linear'"]),
        (
            {"train": {"epochs": 2, "warmup_epochs": 2}},
            ["train.warmup_epochs = 2 is not shorter than train.epochs = 2"],
        ),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, override, expected):
    copy_repo(tmp_path)
    config = write_config(tmp_path, "bad.yaml", override)
    result = snakemake_quick(tmp_path, "--configfile", config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in expected:
        assert text in output, output[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


@pytest.mark.parametrize("archive", ["*x.tar.gz", "it's.tar.gz"])
def test_odd_command_line_values_are_strings_not_yaml(tmp_path, archive):
    """--config values are YAML to Snakemake: one that is not valid YAML stays the string it is."""
    copy_repo(tmp_path)
    result = snakemake_quick(tmp_path, "--config", f"data={{archive: {json.dumps(archive)}}}", "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert f"config data.archive: no file at {archive!r}" in output, output[-2000:]


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_grid_plans_its_runs(plain_copy, example):
    args = ("--configfile", f"examples/{example}", "--config", "data={source: synthetic}", "-n")
    result = snakemake_quick(plain_copy, *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    grid = yaml.safe_load((REPO / "examples" / example).read_text()).get("grid")
    if grid is None:  # compare.yaml: config.yaml's study (its world sizes this machine's), beside compare:
        assert job_counts(result.stdout)["train"] >= 3
        return
    runs = len(grid.get("variants", [None])) * len(grid["world_sizes"]) * len(grid["seeds"])
    assert job_counts(result.stdout)["train"] == runs


@pytest.mark.parametrize(
    "variants, expected",
    [
        ({"a/b": {}}, "config grid.variants: 'a/b' does not match"),
        ({"x": {"train": {"precison": "bf16"}}}, "config grid.variants.x.train: Additional properties"),
        ({"x": {"train": {"precision": "fp8"}}}, "config grid.variants.x.train.precision: 'fp8' is not one of"),
        ({"x": {"train": {"ranks_per_node": 2}}}, "config grid.variants.x.train.ranks_per_node: it decides"),
    ],
)
def test_a_bad_variant_is_named_before_any_job(tmp_path, variants, expected):
    copy_repo(tmp_path)
    config = write_config(tmp_path, "bad.yaml", {**GRID, "grid": {**GRID["grid"], "variants": variants}})
    result = snakemake_quick(tmp_path, "--configfile", config, "-n")
    assert result.returncode != 0 and expected in result.stdout + result.stderr, result.stderr[-2000:]


def test_multinode_world_sizes_go_through_srun_and_c10d(plain_copy):
    """ranks_per_node splits a world size over nodes: one srun task per node, each a torchrun
    joining the c10d rendezvous; world sizes that fit one node keep --standalone."""
    workdir = plain_copy
    config = write_config(
        workdir,
        "multinode.yaml",
        {
            **GRID,
            "grid": {"world_sizes": [1, 2, 4], "seeds": [0]},
            "train": {"ranks_per_node": 2, "threads_per_worker": 1},
        },
    )
    result = snakemake_quick(workdir, "--configfile", config, "--dry-run", "--printshellcmds")
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout)["train"] == 2 and job_counts(result.stdout)["train_multinode"] == 1
    assert "srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=2" in result.stdout
    assert "torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d" in result.stdout
    assert "torchrun --standalone --nproc-per-node 2" in result.stdout
    uneven = write_config(
        workdir, "uneven.yaml", {**GRID, "grid": {"world_sizes": [1, 3], "seeds": [0]}, "train": {"ranks_per_node": 2}}
    )
    bad = snakemake_quick(workdir, "--configfile", uneven, "--dry-run")
    assert bad.returncode != 0 and "does not split into nodes" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_full_run_writes_every_output(grid_study, workdir):
    """`snakemake --cores all --configfile .test/config.yaml` (the session's grid_study; this copy of it)."""
    result = grid_study[1]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert counts["train"] == 4 and counts["commbench"] == 1 and counts["synthetic_cache"] == 1
    assert counts["bundle"] == 1
    schema = json.loads(RUN_SCHEMA.read_text())
    runs = {}
    for name in RUNS:
        runs[name] = json.loads((workdir / f"results/runs/{name}.json").read_text())
        jsonschema.validate(runs[name], schema)
        assert "Epoch [1/1]" in (workdir / f"logs/train/{name}.log").read_text()
        assert (workdir / f"benchmarks/train/{name}.tsv").stat().st_size > 0
    for name in ("train_images.npy", "test_labels.npy", "meta.json"):
        assert (workdir / "resources/synthetic" / name).is_file()
    for log in ("logs/data/synthetic_cache.log", "logs/comm/commbench.log", "logs/aggregate.log", "logs/report.log"):
        assert (workdir / log).is_file()
    assert runs["ws2_bs128_seed0"]["config"]["threads_per_worker"] >= 1
    assert runs["ws2_bs128_seed0"]["config"]["world_size"] == 2

    table = pd.read_csv(workdir / "results/summary.csv")
    summary = json.loads((workdir / "results/summary.json").read_text())
    assert list(table.world_size) == [1, 2] and list(table.n_seeds) == [2, 2]
    one, two = summary["rows"]
    assert one["speedup_mean"] == 1.0 and one["efficiency_mean"] == 1.0
    steady = {name: run["totals"]["steady_throughput_img_s"] for name, run in runs.items()}
    paired = [steady[f"ws2_bs128_seed{s}"] / steady[f"ws1_bs128_seed{s}"] for s in (0, 1)]  # warm-up left out
    assert two["speedup_mean"] == pytest.approx(math.sqrt(paired[0] * paired[1]))  # geometric mean
    assert two["efficiency_mean"] == pytest.approx(two["speedup_mean"] / 2)
    assert summary["missing_runs"] == []
    html = (workdir / "results/report.html").read_text()
    assert "<script" not in html and html.count("<svg") >= 6
    assert sorted(p.name for p in (workdir / "results/plots").iterdir())
    # The portable bundle: every run, the summary and commbench's timings, named from results/.
    bundle = load_bundle(workdir / "results/bundle.tar.gz")
    assert sorted(run["_path"] for run in bundle.runs) == sorted(f"runs/{name}.json" for name in RUNS)
    assert {"summary.json", "comm/ws2.json", "config.json"} <= set(bundle.manifest["members"])
    assert bundle.summary["rows"] == summary["rows"] and bundle.manifest["machine"]["hosts"] == sorted(
        {run["environment"]["hostname"] for run in runs.values()}
    )


@pytest.mark.slow
def test_second_run_has_nothing_to_do(workdir, grid_config):
    cache = workdir / "resources/synthetic/train_images.npy"
    before = cache.stat().st_mtime_ns
    result = snakemake_quick(workdir, "--configfile", grid_config)  # not a dry run: it would run what it found
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
    assert cache.stat().st_mtime_ns == before


@pytest.mark.slow
def test_changing_epochs_reruns_the_training_jobs(workdir):
    config = write_config(workdir, "more-epochs.yaml", {**GRID, "train": {"epochs": 2}})
    result = snakemake_quick(workdir, "--configfile", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 4 and "synthetic_cache" not in counts


@pytest.mark.slow
def test_adding_a_seed_runs_only_the_new_jobs(workdir):
    config = write_config(workdir, "three-seeds.yaml", {**GRID, "grid": {"world_sizes": [1, 2], "seeds": [0, 1, 2]}})
    old = {name: (workdir / f"results/runs/{name}.json").stat().st_mtime_ns for name in RUNS}
    result = snakemake(workdir, "--configfile", config)
    assert result.returncode == 0, result.stdout[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert counts["train"] == 2 and counts["aggregate"] == 1 and "synthetic_cache" not in counts
    assert {name: (workdir / f"results/runs/{name}.json").stat().st_mtime_ns for name in RUNS} == old
    assert [r["n_seeds"] for r in json.loads((workdir / "results/summary.json").read_text())["rows"]] == [3, 3]


def _processes_writing(out: Path) -> list[int]:
    """The launcher, torchrun and ranks of the run that writes ``out``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and b"ddpbench.train" in cmdline:
            pids.append(int(proc.name))
    return pids


def _launcher_pid(out: Path) -> int:
    """The torchrun process that trains towards ``out``."""
    for pid in _processes_writing(out):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(b"torchrun" in part for part in cmdline[:2]):
            return pid
    raise AssertionError(f"no torchrun process writing {out}")


def _start_long_run(workdir: Path, how: str, seed: int) -> tuple[subprocess.Popen, str, Path, Path]:
    """A run of 100 short epochs (256 images each: the first ends a second after start-up)."""
    train = {"epochs": 100, "max_train_samples": 256}
    config = write_config(
        workdir, f"long-{how}.yaml", {**GRID, "grid": {"world_sizes": [1], "seeds": [seed]}, "train": train}
    )
    name = f"ws1_bs128_seed{seed}"
    target, log = workdir / f"results/runs/{name}.json", workdir / f"logs/train/{name}.log"
    proc = start_snakemake(workdir, config, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (log.exists() and "Epoch [1/100]" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    return proc, config, target, Path("results/runs") / f"{name}.json"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "killed_job", "killed_snakemake"])
def test_interrupted_run_leaves_no_trusted_result(workdir, how):
    """Ctrl-C (SIGINT to the terminal's process group), a killed training job, or kill -9 of
    Snakemake itself (an OOM kill, a lost SSH session): the launch ends within seconds, no run
    JSON appears, and after `--unlock` the next invocation runs the job again."""
    proc, config, target, relative = _start_long_run(workdir, how, seed={"ctrl_c": 7, "killed_job": 8}.get(how, 9))
    try:
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "killed_job":
            os.kill(_launcher_pid(relative), signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=120)
        deadline = time.monotonic() + 20
        while _processes_writing(relative) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_writing(relative), "the training launch outlived its Snakemake"
        time.sleep(2)  # an orphaned rank, were there one, would go on writing
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert not target.exists() and not list(target.parent.glob(".*.tmp"))
    if how != "ctrl_c":  # the rank got SIGTERM (from torchrun, or as its launcher died): its log says where
        log = (workdir / "logs/train" / relative.name).with_suffix(".log").read_text()
        assert re.search(r"rank 0 stopped by SIGTERM while (training|evaluating after) epoch \d+/100, for", log), log
    if how == "killed_snakemake":  # its lock on the working directory stays: the README says what to do
        assert snakemake_quick(workdir, "--configfile", config, "--unlock").returncode == 0
    dry = snakemake_quick(workdir, "--configfile", config, "--dry-run")
    assert job_counts(dry.stdout)["train"] == 1


@pytest.mark.slow
def test_partial_report_lists_what_is_missing(workdir):
    """After failures, `snakemake partial_report` reports the runs that exist and names the rest."""
    config = write_config(workdir, "partial.yaml", {**GRID, "grid": {"world_sizes": [1, 2], "seeds": [0, 1, 9]}})
    result = snakemake(workdir, "partial_report", "--configfile", config)  # --configfile takes several files
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert "train" not in counts and counts["partial_report"] == 1
    summary = json.loads((workdir / "results/partial/summary.json").read_text())
    assert summary["missing_runs"] == [
        {"world_size": 1, "batch_size": 128, "seed": 9},
        {"world_size": 2, "batch_size": 128, "seed": 9},
    ]
    html = (workdir / "results/partial/report.html").read_text()
    assert "ws1_bs128_seed9" in html and "ws2_bs128_seed9" in html


@pytest.mark.slow
def test_lint_and_snakemake_report(workdir, grid_config):
    lint = snakemake_quick(workdir, "--configfile", grid_config, "--lint")
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout[-3000:]
    report = snakemake_quick(workdir, "--configfile", grid_config, "--report", "results/snakemake-report.zip")
    assert report.returncode == 0, report.stderr[-3000:]
    with zipfile.ZipFile(workdir / "results/snakemake-report.zip") as archive:
        names = archive.namelist()
    assert any(n.endswith("report.html") for n in names) and any(n.endswith("summary.csv") for n in names)
