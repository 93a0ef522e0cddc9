"""Per-step cost of summing gradients, gloo against shared memory, in one launch; under torchrun.

    torchrun --standalone --nproc-per-node 2 bench/step_transports.py --data resources/cifar10 [--blocks 30]

Separate engine runs a minute apart differ by more than the transports do on a noisy machine,
so this trains four copies of the model side by side in one process group, interleaving
blocks of steps (after a barrier) so that every variant sees the same machine:
  independent: no DDP, each rank on its own (what the cores give: the bound with data);
  synchronised: no DDP, but the ranks meet at a barrier after every step (what meeting costs);
  backend:     DDP with gloo's all-reduce (train.allreduce: backend);
  shared_memory: DDP with the engine's shared-memory exchange (train.allreduce: shared_memory).
Each rank is pinned to its own core with one thread, and keeps freed heap memory, as the engine
does. Rank 0 prints one JSON line: per variant and rank, the median over blocks of wall,
main-thread CPU and process CPU milliseconds per step; and step_time_ratios, the slowest
rank's median wall time per step of one variant over another's.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ddpbench.batches import BatchPipeline, Shard
from ddpbench.cache import load_split, read_meta
from ddpbench.comm import CommTimer, SharedMemoryAllReduce
from ddpbench.cpus import core_block
from ddpbench.distributed import gloo_on_loopback_within_one_node, retain_freed_memory
from ddpbench.metrics import gather_objects
from ddpbench.models import build_model, count_parameters
from ddpbench.train import no_forward_buffer_sync

VARIANTS = ("independent", "synchronised", "backend", "shared_memory")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=128)
    # Short blocks: the benchmark machine's speed swings within seconds (README "Performance").
    p.add_argument("--blocks", type=int, default=30, help="timed blocks per variant")
    p.add_argument("--steps", type=int, default=10, help="steps per block")
    args = p.parse_args()
    retain_freed_memory()
    os.sched_setaffinity(0, core_block(int(os.environ["LOCAL_RANK"]), 1))
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    gloo_on_loopback_within_one_node()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    images, labels = load_split(args.data, "train", read_meta(args.data))
    pipeline = BatchPipeline(images, labels, torch.device("cpu"), channels_last=True)
    order = Shard(len(labels), dist.get_world_size(), rank, 0).indices(0)

    def build(variant):
        torch.manual_seed(0)
        model = build_model("simple_cnn").to(memory_format=torch.channels_last)
        if variant in ("backend", "shared_memory"):
            numel = count_parameters(model)
            model = DistributedDataParallel(model, gradient_as_bucket_view=True, **no_forward_buffer_sync())
            hook = CommTimer() if variant == "backend" else SharedMemoryAllReduce(numel)
            model.register_comm_hook(state=None, hook=hook.hook)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        return model, optimizer

    models = {v: build(v) for v in VARIANTS}
    cursor = 0

    def steps(variant, n):
        nonlocal cursor
        model, optimizer = models[variant]
        for _ in range(n):
            start = cursor % (len(order) - args.batch_size)
            x, y = pipeline(order[start : start + args.batch_size])
            cursor += args.batch_size
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if variant == "synchronised":
                dist.barrier()

    for variant in VARIANTS:  # warm-up: first steps allocate, DDP rebuilds its buckets
        steps(variant, 10)
    samples = {v: [] for v in VARIANTS}
    for _ in range(args.blocks):
        for variant in VARIANTS:
            dist.barrier()
            wall, thread, process = time.perf_counter(), time.thread_time(), os.times()
            steps(variant, args.steps)
            end = os.times()
            samples[variant].append(
                (
                    (time.perf_counter() - wall) / args.steps * 1e3,
                    (time.thread_time() - thread) / args.steps * 1e3,
                    (end.user + end.system - process.user - process.system) / args.steps * 1e3,
                )
            )
    per_rank = gather_objects(samples)
    if rank == 0:
        result = {
            v: [
                {
                    key: statistics.median(s[i] for s in ranks[v])
                    for i, key in enumerate(
                        ("wall_ms_per_step", "main_thread_cpu_ms_per_step", "process_cpu_ms_per_step")
                    )
                }
                for ranks in per_rank
            ]
            for v in VARIANTS
        }
        slowest = {v: max(r["wall_ms_per_step"] for r in result[v]) for v in VARIANTS}
        result["step_time_ratios"] = {  # slowest rank's median wall time per step, one variant over another
            "synchronised_vs_independent": slowest["synchronised"] / slowest["independent"],
            "shared_memory_vs_synchronised": slowest["shared_memory"] / slowest["synchronised"],
            "shared_memory_vs_backend": slowest["shared_memory"] / slowest["backend"],
        }
        result["settings"] = {**vars(args), "world_size": dist.get_world_size()}
        print(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
