"""The workflow tests' tools: a temporary copy of the repository, the `snakemake` CLI run in it, and
the `.test/` grid run once per session (conftest's ``grid_study``) for every test that reads a
finished study.

Launches are what the workflow tests cost (python, torch and torchrun start-up in every job), so:
- a Snakemake call that runs no job (a dry run, a config refused before any job, --unlock, --lint)
  goes through ``snakemake_quick``: the same CLI entry point, its imports paid once (snakemake_cli.py);
- a test that needs finished runs copies the session's study (``copy_study``, which keeps the files'
  times and Snakemake's records, so nothing reruns) rather than running the grid again.
"""

from __future__ import annotations

import atexit
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from conftest import REPO, bin_path, child_env, run
from snakemake_cli import SnakemakeCLI

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


def copy_study(source: Path, dest: Path) -> Path:
    """A finished working copy, copied with its files' times and Snakemake's records (.snakemake/):
    Snakemake finds in the copy what it found in ``source``."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "__pycache__"))
    return dest


def write_config(workdir: Path, name: str, overrides: dict) -> str:
    (workdir / name).write_text(yaml.safe_dump(overrides))
    return name


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run([bin_path("snakemake"), "--cores", "all", *args], cwd=workdir, timeout=timeout)


_CLI: list[SnakemakeCLI] = []


def snakemake_quick(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """As ``snakemake``, for a call that runs no job: `snakemake --cores all ARGS` through the console
    script's entry point, in a child forked from a process that has imported Snakemake (a second
    where a new process takes three)."""
    if not _CLI:
        scratch = Path(tempfile.mkdtemp(prefix="snakemake-cli-"))
        _CLI.append(SnakemakeCLI(sys.executable, bin_path("snakemake"), child_env(), scratch))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        atexit.register(_CLI[0].close)
    return _CLI[0].run(["--cores", "all", *args], workdir, timeout=timeout)


def start_snakemake(workdir: Path, config: str, *args: str, **kwargs) -> subprocess.Popen:
    """`snakemake --cores all --configfile CONFIG` in the background, its output in one text pipe."""
    return subprocess.Popen(
        [bin_path("snakemake"), "--cores", "all", "--configfile", config, *args],
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


def run_grid_study(dest: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """The users' first grid (.test/config.yaml), run through the CLI in a fresh copy: 4 training
    runs, the all-reduce benchmark, the summary (with its prediction) and the report."""
    workdir = copy_repo(dest)
    return workdir, snakemake(workdir, "--configfile", TEST_CONFIG)
