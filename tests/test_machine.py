"""The machine state a run records (ddpbench.machine): read from sysfs and /proc where they say
it, "unknown" where they do not, never a guess. Fake sysfs trees give the known answers."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ddpbench import machine

RUN_SCHEMA = Path(__file__).resolve().parents[1] / "workflow/schemas/run.schema.json"
TORCH_SHOW = """PyTorch built with:
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, TORCH_VERSION=2.14.1
"""


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_governor_names_one_policy_or_the_mix(tmp_path):
    assert machine.governor(tmp_path) == "unknown"  # a container without cpufreq
    for cpu in (0, 1):
        write(tmp_path, f"cpu{cpu}/cpufreq/scaling_governor", "performance")
    assert machine.governor(tmp_path) == "performance"
    write(tmp_path, "cpu2/cpufreq/scaling_governor", "powersave")
    assert machine.governor(tmp_path) == "mixed: performance, powersave"


@pytest.mark.parametrize(
    "files, expected",
    [
        ({}, "unknown"),
        ({"intel_pstate/no_turbo": "1"}, "off"),
        ({"intel_pstate/no_turbo": "0"}, "on"),
        ({"cpufreq/boost": "1"}, "on"),
        ({"cpufreq/boost": "0"}, "off"),
    ],
)
def test_turbo_from_intel_pstate_or_cpufreq_boost(tmp_path, files, expected):
    for relative, text in files.items():
        write(tmp_path, relative, text)
    assert machine.turbo(tmp_path) == expected


@pytest.mark.parametrize(
    "files, expected",
    [
        ({}, "unknown"),
        ({"smt/active": "1"}, "on"),
        ({"smt/active": "0"}, "off"),
        ({"smt/control": "notsupported"}, "off"),
    ],
)
def test_smt_from_the_kernels_control(tmp_path, files, expected):
    for relative, text in files.items():
        write(tmp_path, relative, text)
    assert machine.smt(tmp_path) == expected


def test_numa_nodes_and_clock_source(tmp_path):
    assert machine.numa_nodes(tmp_path) == "unknown"
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
    (tmp_path / "possible").write_text("0-1\n")
    assert machine.numa_nodes(tmp_path) == 2
    assert machine.clock_source(tmp_path / "absent") == "unknown"
    write(tmp_path, "current_clocksource", "tsc")
    assert machine.clock_source(tmp_path / "current_clocksource") == "tsc"


def test_steal_share_is_the_stolen_part_of_the_elapsed_ticks(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3\n")
    start = machine.cpu_times(stat)
    assert start == machine.CpuTimes(steal=35, total=1000)  # guest time (7) is already in user time
    stat.write_text("cpu  150 0 60 1600 10 0 5 135 7 0\n")
    assert machine.steal_share(start, machine.cpu_times(stat)) == pytest.approx(100 / 960)
    assert machine.steal_share(start, None) == "unknown"
    assert machine.steal_share(start, start) == "unknown"  # no time passed: no share to give
    stat.write_text("intr 1 2 3\n")
    assert machine.cpu_times(stat) is None


def test_torch_build_names_its_libraries_and_says_unknown_for_the_rest():
    assert machine.torch_build(TORCH_SHOW) == {
        "blas": "mkl",
        "lapack": "mkl",
        "onednn": "3.12.0",
        "mkl": "2024.2",
        "cpu_capability": "AVX512",
        "openmp": "201511",
    }
    assert set(machine.torch_build("PyTorch built with:\n  - GCC 13.3\n").values()) == {"unknown"}


def test_git_dirty_follows_tracked_changes_only(tmp_path, monkeypatch):
    run = __import__("subprocess").run
    run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("one\n")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    run(["git", "-C", str(tmp_path), *env, "commit", "-qm", "a"], check=True)
    (tmp_path / "untracked.txt").write_text("new\n")
    assert machine.git_dirty(str(tmp_path)) is False
    (tmp_path / "a.txt").write_text("two\n")
    assert machine.git_dirty(str(tmp_path)) is True
    assert machine.git_dirty(str(tmp_path / "not-a-dir")) == "unknown"


def test_this_hosts_state_fits_the_run_schema():
    """What a run on this host records is valid against the run schema's environment."""
    state = machine.state(machine.cpu_times(), machine.cpu_times(), TORCH_SHOW)
    schema = json.loads(RUN_SCHEMA.read_text())["properties"]["environment"]
    jsonschema.validate(
        {**state, **{k: "x" for k in ("python", "torch", "backend", "device", "device_name")}},
        {
            **schema,
            "required": list(state),
        },
    )
