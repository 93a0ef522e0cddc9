"""Measurement helpers: step clocks, memory, and the environment (communication: ddpbench.comm)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import socket
import sys
import time

import torch
import torch.distributed as dist

from ddpbench.machine import cpu_model, git_commit


def process_start_time() -> float:
    """When this process was created (epoch seconds, to a clock tick), from /proc.

    Falls back to the interpreter's first import of this module where /proc is missing.
    """
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); fields[] starts at field 3
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME


_IMPORT_TIME = time.time()


class StepClock:
    """Marks points in time without synchronising the device.

    On CPU a mark is ``perf_counter()``; on CUDA it is an event recorded on the current stream,
    read only in ``seconds()`` after one synchronisation at the end of the epoch.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> float | torch.cuda.Event:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (shared pages of the dataset included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pss_bytes() -> int | None:
    """Proportional set size now: shared pages divided among the processes mapping them."""
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mapped_file_memory(suffix: str) -> dict[str, int] | None:
    """Resident and proportional memory of this process's mappings of files ending in ``suffix``
    (the memory-mapped dataset): PSS summed over ranks shows whether they share one copy."""
    totals = {"rss_bytes": 0, "pss_bytes": 0}
    try:
        with open("/proc/self/smaps") as fh:
            current = False
            for line in fh:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping's header line
                    current = line.rstrip().endswith(suffix)
                elif current and first in ("Rss:", "Pss:"):
                    totals["rss_bytes" if first == "Rss:" else "pss_bytes"] += int(line.split()[1]) * 1024
    except OSError:
        return None
    return totals


def environment(device: torch.device, backend: str, threads_per_rank: int, cores: int) -> dict:
    try:  # the installed version, without importing it (importing torchvision would grow every rank's RSS)
        torchvision_version = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision_version = None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision_version,
        "backend": backend,
        "device": device.type,
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": cores,
        "threads_per_rank": threads_per_rank,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "gloo_socket_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
    }


def gather_objects(obj: object) -> list:
    """All ranks' ``obj`` in rank order (a collective: every rank must call it)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
