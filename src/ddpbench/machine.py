"""The machine's state that moves timings, as far as this host lets a process read it: frequency
governor, turbo, SMT, NUMA nodes, clock source, kernel, the steal time of a virtual machine over
the run, whether the checkout was dirty, and how torch was built (BLAS, oneDNN, CPU capability).

A value that cannot be read is recorded as ``"unknown"``, never guessed: a container without
/sys/devices/system/cpu/cpufreq says nothing about the governor. No torch here (the build
description is passed in), so the facts can be tested on any text.
"""

from __future__ import annotations

import glob
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "unknown"
CPU = Path("/sys/devices/system/cpu")


def read_text(path: Path | str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo): avx512f, avx512_bf16, amx_bf16, ...; none where unreadable."""
    line = next((line for line in (read_text("/proc/cpuinfo") or "").splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def governor(cpu: Path = CPU) -> str:
    """The cpufreq governor of every CPU, one name if they agree (e.g. "performance"), else "mixed: ..."."""
    names = sorted({text for p in glob.glob(str(cpu / "cpu[0-9]*/cpufreq/scaling_governor")) if (text := read_text(p))})
    if not names:
        return UNKNOWN
    return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)


def turbo(cpu: Path = CPU) -> str:
    """ "on" or "off": intel_pstate's no_turbo (1 means off), else cpufreq's boost (1 means on)."""
    no_turbo = read_text(cpu / "intel_pstate/no_turbo")
    if no_turbo in ("0", "1"):
        return "off" if no_turbo == "1" else "on"
    boost = read_text(cpu / "cpufreq/boost")
    if boost in ("0", "1"):
        return "on" if boost == "1" else "off"
    return UNKNOWN


def smt(cpu: Path = CPU) -> str:
    """ "on" or "off" (hyper-threads active), from the kernel's SMT control."""
    active = read_text(cpu / "smt/active")
    if active in ("0", "1"):
        return "on" if active == "1" else "off"
    return "off" if read_text(cpu / "smt/control") in ("notsupported", "off", "forceoff") else UNKNOWN


def numa_nodes(node: Path = Path("/sys/devices/system/node")) -> int | str:
    count = len(glob.glob(str(node / "node[0-9]*")))
    return count or UNKNOWN


def clock_source(path: Path = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")) -> str:
    return read_text(path) or UNKNOWN


def git_output(args: list[str], cwd: str | None) -> str | None:
    """What ``git ARGS`` printed in ``cwd``; None where git is missing or fails (not a checkout)."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_dirty(cwd: str | None = None) -> bool | str:
    """Whether the checkout had uncommitted changes to tracked files (untracked files do not count)."""
    out = git_output(["status", "--porcelain", "--untracked-files=no"], cwd)
    return UNKNOWN if out is None else bool(out.strip())


def git_commit(cwd: str | None = None) -> str | None:
    """The commit checked out in ``cwd`` (default: here); None outside a git checkout."""
    return (git_output(["rev-parse", "HEAD"], cwd) or "").strip() or None


@dataclass(frozen=True)
class CpuTimes:
    """The host's CPU time counters (/proc/stat's first line, in clock ticks)."""

    steal: int
    total: int


def cpu_times(stat: Path = Path("/proc/stat")) -> CpuTimes | None:
    line = (read_text(stat) or "").splitlines()[:1]
    fields = line[0].split() if line else []
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user, nice]
    ticks = [int(v) for v in fields[1:9]]
    return CpuTimes(steal=ticks[7], total=sum(ticks))


def steal_share(start: CpuTimes | None, end: CpuTimes | None) -> float | str:
    """The share of the host's CPU time the hypervisor gave to others between the two readings."""
    if start is None or end is None or end.total <= start.total:
        return UNKNOWN
    return (end.steal - start.steal) / (end.total - start.total)


BUILD_PATTERNS = {
    "blas": r"BLAS_INFO=([^,\s]+)",
    "lapack": r"LAPACK_INFO=([^,\s]+)",
    "onednn": r"MKL-DNN v([\w.]+)|oneDNN v([\w.]+)",
    "mkl": r"Math Kernel Library Version ([\d.]+)",
    "cpu_capability": r"CPU capability usage: (\w+)",
    "openmp": r"OpenMP (\d+)",
}


def torch_build(config_text: str) -> dict[str, str]:
    """The libraries torch's CPU kernels use, from ``torch.__config__.show()``."""
    found = {}
    for key, pattern in BUILD_PATTERNS.items():
        match = re.search(pattern, config_text)
        found[key] = next((g for g in match.groups() if g), UNKNOWN) if match else UNKNOWN
    return found


def state(cpu_start: CpuTimes | None, cpu_end: CpuTimes | None, torch_config: str) -> dict:
    """The whole record, as a run's environment carries it."""
    return {
        "cpu_governor": governor(),
        "turbo": turbo(),
        "smt": smt(),
        "numa_nodes": numa_nodes(),
        "clock_source": clock_source(),
        "kernel": platform.release() or UNKNOWN,
        "steal_share": steal_share(cpu_start, cpu_end),
        "git_dirty": git_dirty(),
        "torch_build": torch_build(torch_config),
    }
