"""A rank's process set-up: who it is, which cores and threads it uses, its process group, and
the process-level settings that keep a benchmark honest (die with the launcher, keep the heap)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ddpbench.cpus import core_block, cores_available, job_cpus, may_pin
from ddpbench.supervise import die_with_parent


@dataclass(frozen=True)
class Dist:
    """This rank's place in the launch, decided once at start-up."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str
    threads: int
    cpu_affinity: list[int] | None
    cores_available: int

    @property
    def nnodes(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def one_node(self) -> bool:
        return self.world_size == self.local_world_size


def init_distributed(device: str, threads_per_worker: int | str, timeout: float) -> Dist:
    """Threads first (inter-op threads can only be set before any parallel work), then the group.

    ``threads_per_worker`` "auto" divides the job's CPUs among the node's ranks; ``device``
    "auto" is cuda where this node has a GPU."""
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cores = cores_available()  # before pinning narrows this process's view
    threads = int(threads_per_worker) if threads_per_worker != "auto" else max(1, job_cpus(cores) // local_world_size)
    pinned = pin_to_cores(local_rank, local_world_size, threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    torch_device, backend = select_device(device, local_rank)
    gloo_on_loopback_within_one_node()
    if "RANK" not in os.environ:  # plain `python -m ddpbench.train`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout),
        device_id=torch_device if torch_device.type == "cuda" else None,
    )
    return Dist(
        dist.get_rank(),
        dist.get_world_size(),
        local_rank,
        local_world_size,
        torch_device,
        backend,
        threads,
        pinned,
        cores,
    )


def select_device(device: str, local_rank: int) -> tuple[torch.device, str]:
    """(device, backend): cuda:LOCAL_RANK with nccl, or the CPU with gloo."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu"), "gloo"
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is visible; use train.device: cpu")
    torch_device = torch.device("cuda", local_rank)
    torch.cuda.set_device(torch_device)
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    return torch_device, "nccl"


def gloo_on_loopback_within_one_node() -> None:
    """When every rank of the launch is on this node (torchrun's WORLD_SIZE = LOCAL_WORLD_SIZE,
    or no launcher), keep gloo's pair connections on loopback unless the user chose an interface."""
    if os.environ.get("WORLD_SIZE", "1") == os.environ.get("LOCAL_WORLD_SIZE", "1"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def pin_to_cores(local_rank: int, local_world_size: int, threads: int) -> list[int] | None:
    """Give each rank on this node its own block of ``threads`` cores, when this launch owns them
    (``cpus.may_pin``: the blocks fill the cores we may use, or DDPBENCH_PIN=1)."""
    cores = len(os.sched_getaffinity(0))
    wanted = local_world_size * threads
    if not may_pin(wanted <= cores, wanted == cores):
        return None
    block = core_block(local_rank, threads)
    os.sched_setaffinity(0, block)
    return block


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_launcher() -> None:
    """Under torchrun, end this rank when the launcher dies (say, a killed Snakemake job), so an
    orphaned rank never finishes on its own and writes a result nobody asked for any more."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    die_with_parent(signal.SIGTERM)
    if os.getppid() == 1:  # the launcher was already gone before prctl took effect
        sys.exit("torchrun exited before this rank started")


def retain_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc maps every allocation over 128 KiB afresh and unmaps it when freed, so each
    step's multi-MiB activations and gradients are new pages for the kernel to fault in and zero
    (system time; bench/compute_bound.py --heap system measures what that costs). Fixed
    thresholds keep such blocks in the heap for the next step, as PyTorch's CUDA caching
    allocator does on a GPU."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc's; musl has none
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
