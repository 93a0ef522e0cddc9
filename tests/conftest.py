"""Shared fixtures: the repository, a synthetic dataset cache, and a torchrun launcher."""

from __future__ import annotations

import atexit
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import parallel
import pytest

from ddpbench.supervise import proc_stat

REPO = Path(__file__).resolve().parents[1]
RUN_SCHEMA = REPO / "workflow" / "schemas" / "run.schema.json"
SHARED_DATA = REPO.parent / "shared" / "data"
# ddpbench.peak keeps each host's measurement in a cache: the tests' (every workflow they run, the
# cluster's jobs too) stay in one of their own, measured once per session, not in the home folder's.
if "DDPBENCH_CACHE" not in os.environ:
    os.environ["DDPBENCH_CACHE"] = tempfile.mkdtemp(prefix="ddpbench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DDPBENCH_CACHE"], ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has made the run's folders
def pytest_configure(config) -> None:
    parallel.own_timing_lock(config._tmp_path_factory.getbasetemp())


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """A worker's collection (imports of torch, pandas, scipy: seconds of both cores) holds a share of
    the machine too, so that an ``alone`` test at the start waits until the other worker has collected."""
    with parallel.machine_share(parallel.run_root(session.config._tmp_path_factory.getbasetemp()), alone=False):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test, its set-up and tear-down included, holds its share of the machine (tests/parallel.py)."""
    root = parallel.run_root(item.config._tmp_path_factory.getbasetemp())
    with parallel.machine_share(root, alone=item.get_closest_marker("alone") is not None):
        return (yield)


# Seconds each costly module took with two tests at a time (the whole suite at 738d824, a 2-core
# EPYC VM; test_variants_workflow and test_timing_lock_workflow, split from test_workflow since,
# at 6f6ee06 and b116058). They only order the work, the longest first, so that neither worker is
# left with a long module at the end; a module not named here counts 10 s a slow test.
MODULE_SECONDS = {
    "test_workflow": 400,
    "test_bench": 350,
    "test_train": 270,
    "test_real_data": 250,
    "test_multinode": 220,
    "test_prediction_workflow": 125,
    "test_variants_workflow": 117,
    "test_emulated_run": 52,
    "test_timing_lock_workflow": 60,
}


def pytest_collection_modifyitems(config, items) -> None:
    """The ``alone`` modules first (the other worker waits out one of them either way, and at the
    start it has nothing half done), then the rest by their cost, the longest first."""
    alone = {item.module.__name__ for item in items if item.get_closest_marker("alone")}
    slow = collections.Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))

    def order(item) -> tuple[bool, int]:
        name = item.module.__name__
        return name not in alone, -MODULE_SECONDS.get(name, 10 * slow[name])

    items.sort(key=order)  # a stable sort: file order within a module


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    from ddpbench.cache import make_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, train_size=2048, test_size=512, seed=0)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie has ended (an orphan's reaper may be slow or absent)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in "ZX"


def bin_path(name: str) -> str:
    """A console script of this interpreter's environment (the venv the tests run in)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name) or name


# torch.compile's inductor builds CPU code with a C++ compiler (Debian: g++; .ci/run installs it).
needs_cxx = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler for inductor: apt-get install g++"
)


def torchrun_cmd(nproc: int, *args: str, threads: int = 1) -> list[str]:
    return [
        bin_path("torchrun"),
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "ddpbench.train",
        "--threads-per-worker",
        str(threads),
        *args,
    ]


def child_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=kwargs.pop("env", child_env()), **kwargs
    )


@pytest.fixture(scope="session")
def grid_study(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The .test/ grid run once through the snakemake CLI (once for all workers), for every workflow
    test that reads a finished study (tests/workflowcopy.py): (working copy, Snakemake's result). Never changed:
    a test copies it (workflowcopy.copy_study) before it runs anything there."""
    from workflowcopy import run_grid_study

    return parallel.once_per_run(tmp_path_factory.getbasetemp(), "grid-study", run_grid_study)
