"""Time the all-reduce DDP's gradients go through, for ``ddpbench.predict``'s communication model.

    torchrun --standalone --nproc-per-node W -m ddpbench.commbench --out comm.json \
        [--sizes BYTES,...] [--buckets BYTES,...] [--model simple_cnn] [--reps N] [--device cpu|cuda|auto]
    torchrun --standalone --nproc-per-node 8 -m ddpbench.commbench --world-sizes 2,4,8 \
        --out ws2.json ws4.json ws8.json [--step-batch 128] ...

Times ``dist.all_reduce`` of float32 tensors over a sweep of message sizes (powers of 4 from 8 B,
and 64 MiB) and over the given bucket sizes (``--model`` adds the model's own DDP buckets), on
gloo (CPU) or nccl (CUDA, synchronised before the clock is read). Per size: warm-up calls, then
repetitions, each preceded by a barrier and timed on every rank; a repetition's time is the
slowest rank's, and the size's time the median over repetitions. Rank 0 writes one JSON file per
world size: with ``--world-sizes``, the first W ranks of one launch time each W in a group of
their own (one start-up for all, the others waiting), else all of them.

With ``--model`` and ``--step-batch``, it also times the model's training step without any
communication (forward, backward, SGD step at that batch, fp32, channels_last, at
``--threads-per-rank``), on rank 0 alone and on all W ranks at once, in alternating blocks: how
much slower a rank computes when the node's other ranks compute too (shared memory bandwidth,
caches, clocks; on a VM, the host), and how far apart the ranks' step times fall, which is what
a synchronising all-reduce waits for. A run at one rank shows neither.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ddpbench.distributed import gloo_on_loopback_within_one_node, pin_to_cores, select_device
from ddpbench.io import atomic_write_json, utc_now
from ddpbench.machine import cpu_model
from ddpbench.step import sgd_step, step_model
from ddpbench.supervise import exit_finished

FLOAT32_BYTES = 4
DEFAULT_SIZES = [8 * 4**k for k in range(12)] + [64 * 2**20]  # 8 B ... 32 MiB, then 64 MiB
WARMUP = 3
MIN_REPS = 3
# The ranks outside a smaller world size's group wait for all its timings at one barrier: up to this many
# times --timeout, which bounds each timed collective.
IDLE_TIMEOUTS = 100
# Compute steps: warm-up, then 4 rounds of a block alone on each of up to ALONE_RANKS ranks in turn and a
# block on all at once, the order flipped every round; blocks of up to 3 steps, fewer (at least 1)
# where those would take more than STEP_BUDGET_S in all.
STEP_WARMUP, STEP_BLOCK, STEP_ROUNDS, STEP_BUDGET_S = 2, 3, 4, 6.0
ALONE_RANKS = 4


def parse_bytes_list(text: str) -> list[int]:
    """'8,1024,4194304' -> sizes in bytes, each a positive multiple of 4 (float32 elements)."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    bad = [s for s in sizes if s < FLOAT32_BYTES or s % FLOAT32_BYTES]
    if bad:
        raise argparse.ArgumentTypeError(f"sizes {bad} are not positive multiples of 4 bytes (float32 elements)")
    return sizes


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What makes the clock honest: wait for the device's queued work (nccl runs asynchronously)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_allreduce(
    nbytes: int, device: torch.device, reps: int, budget_s: float, group: dist.ProcessGroup | None = None
) -> dict:
    """Median over repetitions of the slowest rank's time for one all-reduce of ``nbytes``.

    Repetitions stop at ``reps`` or once ``budget_s`` would be exceeded (at least MIN_REPS); the
    count is agreed across ranks from the slowest warm-up, so every rank makes the same calls."""
    tensor = torch.zeros(nbytes // FLOAT32_BYTES, dtype=torch.float32, device=device)  # zeros never overflow
    warmup = timed_calls(tensor, device, WARMUP, group)[-1]  # the first calls set up connections and buffers
    slowest_warmup = slowest_rank(torch.tensor([warmup], dtype=torch.float64, device=device), group)[0]
    count = max(MIN_REPS, min(reps, math.floor(budget_s / max(slowest_warmup, 1e-9))))
    times = torch.tensor(timed_calls(tensor, device, count, group), dtype=torch.float64, device=device)
    values = slowest_rank(times, group)  # each repetition takes as long as its slowest rank
    return {
        "bytes": nbytes,
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "reps": count,
    }


def timed_calls(
    tensor: torch.Tensor, device: torch.device, calls: int, group: dist.ProcessGroup | None = None
) -> list[float]:
    """Seconds of each of ``calls`` all-reduces of ``tensor`` on this rank, each after a barrier."""
    sync = synchronizer(device)
    seconds = []
    for _ in range(calls):
        dist.barrier(group=group)
        sync()
        start = time.perf_counter()
        dist.all_reduce(tensor, group=group)
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def slowest_rank(seconds: torch.Tensor, group: dist.ProcessGroup | None = None) -> list[float]:
    """Element-wise maximum over the ranks (of ``group``)."""
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=group)
    return seconds.tolist()


def ddp_bucket_bytes(model_name: str, device: torch.device, bucket_cap_mb: float = 25.0) -> list[int]:
    """The gradient bucket sizes DDP uses for ``model_name`` (as ddpbench.train wraps it), read from a
    communication hook during a second backward pass, after DDP has rebuilt its buckets."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = step_model(model_name, device, channels_last=False)  # the memory format does not change the buckets
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        bucket_cap_mb=bucket_cap_mb,
    )
    seen: list[int] = []

    # No annotations on the hook: DDP compares them with the classes themselves, and this module's
    # postponed (string) annotations would fail that check.
    def record(state, bucket):  # noqa: ANN001, ANN202
        seen.append(bucket.buffer().numel() * bucket.buffer().element_size())
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(state=None, hook=record)
    images = torch.randn(2, 3, 32, 32, device=device)
    for _ in range(2):
        seen.clear()
        ddp(images).sum().backward()
    return list(seen)


def alone_ranks(size: int) -> list[int]:
    """The ranks timed alone: up to ALONE_RANKS of them, spread evenly from the first to the last."""
    count = min(size, ALONE_RANKS)
    return sorted({round(i * (size - 1) / max(1, count - 1)) for i in range(count)})


def time_compute(model: torch.nn.Module, batch: int, device: torch.device, group: dist.ProcessGroup) -> dict:
    """The model's training step without communication, at ``batch`` per rank: each of alone_ranks
    alone in turn (the others idle at a barrier) and every rank of ``group`` at once, in rounds
    whose order flips (alone first, then together first) so that a drifting machine and warm
    caches affect both alike. A rank's slowdown is its own together median over its own alone
    median: ranks differ (one core serves interrupts, or the launcher), so comparing one rank alone
    with all ranks together would mix the cores' speeds into it. Returns the pooled medians, the
    geometric mean of the ranks' slowdowns, each rank's, and the mean over together-steps of the
    slowest rank's time less the ranks' mean (the wait for the slowest)."""
    sync, rank, size = synchronizer(device), dist.get_rank(group), dist.get_world_size(group)
    # The runs' step (ddpbench.step) in fp32 on one fixed batch: only the compute is timed, so no
    # data loading, no learning-rate schedule, no statistics. Unlike the runs' optimizer this one has
    # no weight decay and is not fused on CUDA: kept so that timings compare with earlier commbench files.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)

    def steps(count: int) -> list[float]:
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            sgd_step(model, optimizer, images, labels)
            sync()  # unlike the runs' steps, each is timed on its own: wait for the device first
            seconds.append(time.perf_counter() - start)
        return seconds

    warmup = steps(STEP_WARMUP)[-1]
    slowest = slowest_rank(torch.tensor([warmup], dtype=torch.float64, device=device), group)[0]
    timed_alone = alone_ranks(size)
    per_round = (len(timed_alone) + 1) * STEP_ROUNDS * max(slowest, 1e-9)
    block = max(1, min(STEP_BLOCK, math.floor(STEP_BUDGET_S / per_round)))
    alone, together = [], []
    for round_ in range(STEP_ROUNDS):
        for phase in ("alone", "together") if round_ % 2 == 0 else ("together", "alone"):
            for turn in timed_alone if phase == "alone" else [None]:
                dist.barrier(group=group)
                if phase == "together" or rank == turn:
                    (alone if phase == "alone" else together).extend(steps(block))
    return compute_record(batch, timed_alone, alone, together, device, group)


def compute_record(
    batch: int, timed_alone: list[int], alone: list[float], together: list[float], device, group
) -> dict:
    """time_compute's result from every rank's step times (gathered here: a collective)."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    per_rank = torch.zeros(size, len(together), dtype=torch.float64, device=device)
    per_rank[rank] = torch.tensor(together, dtype=torch.float64, device=device)
    dist.all_reduce(per_rank, group=group)  # every rank's step times, row by row
    wait = (per_rank.max(0).values - per_rank.mean(0)).mean().item()
    gathered = [None] * size
    dist.all_gather_object(gathered, (socket.gethostname(), alone), group=group)
    hosts = [host for host, _ in gathered]
    ratios = {r: statistics.median(per_rank[r].tolist()) / statistics.median(gathered[r][1]) for r in timed_alone}
    return {
        "batch": batch,
        # Ranks computing at once on rank 0's host (an emulated network's namespaces share it; a group
        # spanning hosts has fewer on each).
        "ranks_per_node": hosts.count(hosts[0]),
        "threads": torch.get_num_threads(),
        "alone_ranks": timed_alone,
        "order": "rounds alternating alone-first and together-first",
        "steps_alone": sum(len(gathered[r][1]) for r in timed_alone),
        "steps_together": len(together),
        "alone_median_s": statistics.median(t for r in timed_alone for t in gathered[r][1]),
        "together_median_s": statistics.median(per_rank.flatten().tolist()),
        "slowdown": math.exp(statistics.fmean(math.log(x) for x in ratios.values())),
        "slowdown_by_rank": [ratios[r] for r in timed_alone],
        "rank_wait_s": wait,
    }


def environment(backend: str, device: torch.device, world_size: int) -> dict:
    """Where the timings were taken: host, CPU, torch, backend, device and world size."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "backend": backend,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "world_size": world_size,
        "launched_ranks": dist.get_world_size(),
        "gloo_socket_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun ... -m ddpbench.commbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, nargs="+", required=True, help="JSON file rank 0 writes: one per --world-sizes")
    p.add_argument(
        "--world-sizes",
        type=parse_world_sizes,
        help="time at each of these world sizes, in groups of the first ranks (default: all ranks)",
    )
    p.add_argument(
        "--sizes", type=parse_bytes_list, default=DEFAULT_SIZES, help="message sizes in bytes, comma-separated"
    )
    p.add_argument("--buckets", type=parse_bytes_list, default=[], help="DDP bucket sizes in bytes, comma-separated")
    p.add_argument("--model", help="also time this model's own DDP buckets (e.g. simple_cnn)")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP's bucket_cap_mb for --model (as the runs)")
    p.add_argument(
        "--threads-per-rank", type=int, default=1, help="torch threads (and cores pinned) per rank, as the runs'"
    )
    p.add_argument(
        "--step-batch",
        type=int,
        default=0,
        help="with --model, also time its training step at this batch per rank, alone and all ranks at once",
    )
    p.add_argument("--reps", type=int, default=20, help="repetitions per size (fewer for slow sizes)")
    p.add_argument("--budget-s", type=float, default=2.0, help="seconds of repetitions per size, at least 3 reps")
    p.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu", help="cpu: gloo; cuda: nccl; auto: cuda if visible"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a collective may wait for a rank")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if args.threads_per_rank < 1:
        p.error("--threads-per-rank must be at least 1")
    if args.step_batch < 0 or (args.step_batch and not args.model):
        p.error("--step-batch needs --model and a batch of at least 1 (0: do not time the step)")
    launched = int(os.environ.get("WORLD_SIZE", 1))
    args.world_sizes = args.world_sizes or [launched]
    if len(args.out) != len(args.world_sizes):
        p.error(f"give one --out per world size: {len(args.out)} files for --world-sizes {args.world_sizes}")
    if max(args.world_sizes) > launched:
        p.error(f"--world-sizes {args.world_sizes}: launch at least {max(args.world_sizes)} ranks, not {launched}")
    return args


def parse_world_sizes(text: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8]: each at least 2 (one rank has no collective to time)."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give world sizes of 2 or more, comma-separated")
    return sizes


def time_world_size(
    args: argparse.Namespace, world_size: int, buckets: list[int], device: torch.device, model: torch.nn.Module | None
) -> dict | None:
    """The timings at ``world_size`` (the first ranks, in a group of their own when fewer than all); None on
    the ranks outside it. Every rank must call this, in the same order: creating a group takes all."""
    # Every timed collective runs in a group with the short timeout; only the default group's barrier
    # after each world size, where the ranks outside the group wait for it, has the long one.
    group = dist.new_group(list(range(world_size)), timeout=timedelta(seconds=args.timeout))
    if dist.get_rank() >= world_size:
        return None
    timings = {
        "sweep": [time_allreduce(n, device, args.reps, args.budget_s, group) for n in args.sizes],
        "buckets": [time_allreduce(n, device, args.reps, args.budget_s, group) for n in buckets],
    }
    if model is not None:
        timings["compute"] = time_compute(model, args.step_batch, device, group)
    return timings


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # As the runs: each rank on its own cores (where this launch owns them), with their threads.
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    pin_to_cores(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)), args.threads_per_rank)
    torch.set_num_threads(args.threads_per_rank)
    device, backend = select_device(args.device, local_rank)
    gloo_on_loopback_within_one_node()
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=args.timeout * IDLE_TIMEOUTS),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        buckets = list(args.buckets) + (ddp_bucket_bytes(args.model, device, args.bucket_cap_mb) if args.model else [])
        # The model as the runs train it (channels_last, the runs' default), for timing its step.
        model = step_model(args.model, device, channels_last=True).train() if args.step_batch else None
        for world_size, out in zip(args.world_sizes, args.out, strict=True):
            timings = time_world_size(args, world_size, buckets, device, model)
            if dist.get_rank() == 0:
                atomic_write_json(
                    out,
                    {
                        "schema": "ddpbench.commbench/1",
                        "created_utc": utc_now(),
                        "world_size": world_size,
                        "backend": backend,
                        "model": args.model,
                        "environment": environment(backend, device, world_size),
                        "statistic": "median over repetitions of the slowest rank's time per all-reduce",
                        **timings,
                    },
                )
            dist.barrier()  # the ranks outside the group wait here for it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    exit_finished(main())  # the timings are written: the interpreter's teardown would only delay the launch
