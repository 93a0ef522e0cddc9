"""End to end through the `snakemake` CLI, in a temporary copy of the repository, on synthetic data.

The tests run in file order and share one working copy: a full run, then the incremental
behaviour on top of it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml
from conftest import REPO, RUN_SCHEMA, bin_path, child_env, run

COPIED = ["Snakefile", "config.yaml", "workflow", "profiles", "report", "envs", "src", ".test", "examples"]
TEST_CONFIG = ".test/config.yaml"  # the grid users run first: synthetic data, world sizes 1 and 2, one epoch
GRID = yaml.safe_load((REPO / TEST_CONFIG).read_text())
RUNS = [f"ws{w}_bs128_seed{s}" for w in (1, 2) for s in (0, 1)]


def copy_repo(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def write_config(workdir: Path, name: str, overrides: dict) -> str:
    (workdir / name).write_text(yaml.safe_dump(overrides))
    return name


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run([bin_path("snakemake"), "--cores", "all", *args], cwd=workdir, timeout=timeout)


def start_snakemake(workdir: Path, config: str, **kwargs) -> subprocess.Popen:
    """`snakemake --cores all --configfile CONFIG` in the background, its output in one text pipe."""
    return subprocess.Popen(
        [bin_path("snakemake"), "--cores", "all", "--configfile", config],
        cwd=workdir,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints before running (or for a dry run)."""
    table = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("workflow"))


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
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, override, expected):
    copy_repo(tmp_path)
    config = write_config(tmp_path, "bad.yaml", override)
    result = snakemake(tmp_path, "--configfile", config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in expected:
        assert text in output, output[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


@pytest.mark.parametrize("archive", ["*x.tar.gz", "it's.tar.gz"])
def test_odd_command_line_values_are_strings_not_yaml(tmp_path, archive):
    """--config values are YAML to Snakemake: one that is not valid YAML stays the string it is."""
    copy_repo(tmp_path)
    result = snakemake(tmp_path, "--config", f"data={{archive: {json.dumps(archive)}}}", "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert f"config data.archive: no file at {archive!r}" in output, output[-2000:]


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_grid_plans_its_runs(workdir, example):
    result = snakemake(workdir, "--configfile", f"examples/{example}", "--config", "data={source: synthetic}", "-n")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    grid = yaml.safe_load((REPO / "examples" / example).read_text())["grid"]
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
    result = snakemake(tmp_path, "--configfile", config, "-n")
    assert result.returncode != 0 and expected in result.stdout + result.stderr, result.stderr[-2000:]


def test_multinode_world_sizes_go_through_srun_and_c10d(workdir):
    """ranks_per_node splits a world size over nodes: one srun task per node, each a torchrun
    joining the c10d rendezvous; world sizes that fit one node keep --standalone."""
    config = write_config(
        workdir,
        "multinode.yaml",
        {
            **GRID,
            "grid": {"world_sizes": [1, 2, 4], "seeds": [0]},
            "train": {"ranks_per_node": 2, "threads_per_worker": 1},
        },
    )
    result = snakemake(workdir, "--configfile", config, "--dry-run", "--printshellcmds")
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout)["train"] == 2 and job_counts(result.stdout)["train_multinode"] == 1
    assert "srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=2" in result.stdout
    assert "torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d" in result.stdout
    assert "torchrun --standalone --nproc-per-node 2" in result.stdout
    uneven = write_config(
        workdir, "uneven.yaml", {**GRID, "grid": {"world_sizes": [1, 3], "seeds": [0]}, "train": {"ranks_per_node": 2}}
    )
    bad = snakemake(workdir, "--configfile", uneven, "--dry-run")
    assert bad.returncode != 0 and "does not split into nodes" in bad.stdout + bad.stderr


def test_full_run_writes_every_output(workdir, grid_config):
    result = snakemake(workdir, "--configfile", grid_config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    schema = json.loads(RUN_SCHEMA.read_text())
    runs = {}
    for name in RUNS:
        runs[name] = json.loads((workdir / f"results/runs/{name}.json").read_text())
        jsonschema.validate(runs[name], schema)
        assert "Epoch [1/1]" in (workdir / f"logs/train/{name}.log").read_text()
        assert (workdir / f"benchmarks/train/{name}.tsv").stat().st_size > 0
    for name in ("train_images.npy", "test_labels.npy", "meta.json"):
        assert (workdir / "resources/synthetic" / name).is_file()
    for log in ("logs/data/synthetic_cache.log", "logs/aggregate.log", "logs/report.log"):
        assert (workdir / log).is_file()
    assert runs["ws2_bs128_seed0"]["config"]["threads_per_worker"] >= 1
    assert runs["ws2_bs128_seed0"]["config"]["world_size"] == 2

    table = pd.read_csv(workdir / "results/summary.csv")
    summary = json.loads((workdir / "results/summary.json").read_text())
    assert list(table.world_size) == [1, 2] and list(table.n_seeds) == [2, 2]
    one, two = summary["rows"]
    assert one["speedup_mean"] == 1.0 and one["efficiency_mean"] == 1.0
    paired = [
        runs[f"ws1_bs128_seed{s}"]["totals"]["train_time_s"] / runs[f"ws2_bs128_seed{s}"]["totals"]["train_time_s"]
        for s in (0, 1)
    ]
    assert two["speedup_mean"] == pytest.approx(sum(paired) / 2)
    assert two["efficiency_mean"] == pytest.approx(two["speedup_mean"] / 2)
    assert summary["missing_runs"] == []
    html = (workdir / "results/report.html").read_text()
    assert "<script" not in html and html.count("<svg") >= 6
    assert sorted(p.name for p in (workdir / "results/plots").iterdir())


def test_second_run_has_nothing_to_do(workdir, grid_config):
    cache = workdir / "resources/synthetic/train_images.npy"
    before = cache.stat().st_mtime_ns
    result = snakemake(workdir, "--configfile", grid_config)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
    assert cache.stat().st_mtime_ns == before


def test_changing_epochs_reruns_the_training_jobs(workdir):
    config = write_config(workdir, "more-epochs.yaml", {**GRID, "train": {"epochs": 2}})
    result = snakemake(workdir, "--configfile", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 4 and "synthetic_cache" not in counts


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
    config = write_config(
        workdir, f"long-{how}.yaml", {**GRID, "grid": {"world_sizes": [1], "seeds": [seed]}, "train": {"epochs": 100}}
    )
    name = f"ws1_bs128_seed{seed}"
    target, log = workdir / f"results/runs/{name}.json", workdir / f"logs/train/{name}.log"
    proc = start_snakemake(workdir, config, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (log.exists() and "Epoch [1/100]" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    return proc, config, target, Path("results/runs") / f"{name}.json"


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
        time.sleep(6)  # an orphaned rank, were there one, would go on writing
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert not target.exists() and not list(target.parent.glob(".*.tmp"))
    if how == "killed_snakemake":  # its lock on the working directory stays: the README says what to do
        assert snakemake(workdir, "--configfile", config, "--unlock").returncode == 0
    dry = snakemake(workdir, "--configfile", config, "--dry-run")
    assert job_counts(dry.stdout)["train"] == 1


def test_two_workflows_on_one_host_time_their_runs_one_after_the_other(tmp_path):
    """Two copies of the workflow started at once: their timed runs queue on the host-wide lock,
    never overlap, and the run that waited records how long. One world size, so that no all-reduce
    timing (the commbench job, which takes the lock too but records no run) does the waiting."""
    grid = {**GRID, "grid": {"world_sizes": [1], "seeds": [0, 1]}, "train": {"epochs": 2}}
    copies = [copy_repo(tmp_path / name) for name in ("first", "second")]
    procs = []
    for workdir in copies:
        config = write_config(workdir, "grid.yaml", grid)
        procs.append(start_snakemake(workdir, config))
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    runs = [json.loads(path.read_text()) for w in copies for path in sorted((w / "results/runs").glob("*.json"))]
    spans = sorted((r["timestamps"]["started_utc"], r["timestamps"]["finished_utc"]) for r in runs)
    assert len(spans) == 4
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans)), spans
    locks = [r["environment"]["timing_lock"] for r in runs]
    assert all(lock["path"] == "/tmp/ddpbench-timing.lock" for lock in locks)
    assert max(lock["wait_s"] for lock in locks) > 1.0  # someone queued behind the other workflow
    logs = "".join(p.read_text() for w in copies for p in (w / "logs/train").glob("*.log"))
    assert "waiting for the timing lock" in logs


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


def test_lint_and_snakemake_report(workdir, grid_config):
    lint = snakemake(workdir, "--configfile", grid_config, "--lint")
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout[-3000:]
    report = snakemake(workdir, "--configfile", grid_config, "--report", "results/snakemake-report.zip")
    assert report.returncode == 0, report.stderr[-3000:]
    with zipfile.ZipFile(workdir / "results/snakemake-report.zip") as archive:
        names = archive.namelist()
    assert any(n.endswith("report.html") for n in names) and any(n.endswith("summary.csv") for n in names)


VARIANT_GRID = {
    **GRID,
    "grid": {
        **GRID["grid"],
        "baseline": "buckets_1mb",  # (yaml.safe_dump sorts the keys: the first would be bf16)
        "variants": {
            "buckets_1mb": {"train": {"bucket_cap_mb": 1}},
            "fp16_hook": {"train": {"comm_hook": "fp16"}},
            "bf16": {"train": {"precision": "bf16"}},
        },
    },
}


def test_variants_through_the_cli(tmp_path):
    """Three variants (a bucket size, a comm hook, bf16) x world sizes 1 and 2 x two seeds: each
    run in its variant's folder with its overrides, summary rows per variant with ratios paired by
    seed against the baseline, and the report's variant table showing the same numbers."""
    workdir = copy_repo(tmp_path / "variants")
    config = write_config(workdir, "variants.yaml", VARIANT_GRID)
    result = snakemake(workdir, "--configfile", config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = {(p.parent.name, p.stem): json.loads(p.read_text()) for p in (workdir / "results/runs").glob("*/*.json")}
    assert len(runs) == 12
    assert {runs[("fp16_hook", f"ws2_bs128_seed{s}")]["config"]["comm_hook"] for s in (0, 1)} == {"fp16"}
    assert runs[("bf16", "ws1_bs128_seed0")]["config"]["precision"] == "bf16"
    gradients = runs[("buckets_1mb", "ws2_bs128_seed0")]["ddp"]["allreduce_payload_bytes_per_step"]
    assert runs[("fp16_hook", "ws2_bs128_seed0")]["ddp"]["allreduce_payload_bytes_per_step"] == gradients // 2
    assert (
        runs[("buckets_1mb", "ws2_bs128_seed0")]["ddp"]["buckets"] > runs[("bf16", "ws2_bs128_seed0")]["ddp"]["buckets"]
    )

    summary = json.loads((workdir / "results/summary.json").read_text())
    rows = {(r["variant"], r["world_size"]): r for r in summary["rows"]}
    assert sorted(rows) == sorted((v, w) for v in VARIANT_GRID["grid"]["variants"] for w in (1, 2))
    table = pd.read_csv(workdir / "results/summary.csv")
    assert list(table.columns[:2]) == ["variant", "world_size"] and len(table) == 6
    html = (workdir / "results/report.html").read_text()
    variants_table = html.split('<table class="variants">', 1)[1].split("</table>", 1)[0]
    for (variant, w), row in rows.items():
        thr = [runs[(variant, f"ws{w}_bs128_seed{s}")]["totals"]["throughput_img_s"] for s in (0, 1)]
        base = [runs[("buckets_1mb", f"ws{w}_bs128_seed{s}")]["totals"]["throughput_img_s"] for s in (0, 1)]
        paired = sum(a / b for a, b in zip(thr, base, strict=True)) / 2
        assert row["throughput_ratio_vs_baseline"] == pytest.approx(paired)
        acc = [runs[(variant, f"ws{w}_bs128_seed{s}")]["totals"]["final_test_acc"] for s in (0, 1)]
        base_acc = [runs[("buckets_1mb", f"ws{w}_bs128_seed{s}")]["totals"]["final_test_acc"] for s in (0, 1)]
        assert row["test_acc_diff_vs_baseline"] == pytest.approx(sum(acc) / 2 - sum(base_acc) / 2)
        speedup = [
            runs[(variant, f"ws1_bs128_seed{s}")]["totals"]["train_time_s"]
            / runs[(variant, f"ws{w}_bs128_seed{s}")]["totals"]["train_time_s"]
            for s in (0, 1)
        ]
        assert row["speedup_mean"] == pytest.approx(sum(speedup) / 2)  # within the variant
        cell = re.search(
            rf'<tr data-variant="{variant}" data-world-size="{w}"[^>]*>.*?'
            r'data-col="throughput_ratio_vs_baseline" data-value="([^"]+)"',
            variants_table,
            re.S,
        )
        assert cell and float(cell[1]) == pytest.approx(row["throughput_ratio_vs_baseline"])
    assert rows[("buckets_1mb", 2)]["throughput_ratio_vs_baseline"] == 1.0
