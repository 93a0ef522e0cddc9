"""gloo (or nccl) all-reduce of a gradient-sized float32 buffer; run under torchrun.

    torchrun --standalone --nproc-per-node 2 bench/allreduce.py --numel 1147914 [--transport shared_memory]

--transport shared_memory times the engine's shared-memory exchange (ddpbench.comm) instead,
on CPU ranks of one node: what train.allreduce: shared_memory costs per step.

Rank 0 prints one JSON line: median, min and max seconds per call over the timed calls, and
the bus bandwidth 2 (W - 1) / W x bytes / time (the ring all-reduce's traffic per rank).
"""

import argparse
import json
import os
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ddpbench.distributed import gloo_on_loopback_within_one_node


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--numel", type=int, default=1_147_914)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--transport", choices=("backend", "shared_memory"), default="backend")
    args = p.parse_args()
    torch.set_num_threads(1)
    gloo_on_loopback_within_one_node()
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=60))
    buffer = torch.zeros(args.numel, device="cuda" if cuda else "cpu")  # sums of zeros never overflow
    world = dist.get_world_size()
    if args.transport == "shared_memory":
        from ddpbench.comm import SharedMemoryAllReduce

        exchange = SharedMemoryAllReduce(args.numel)

        def all_reduce(tensor):
            exchange.all_reduce([tensor])
    else:
        all_reduce = dist.all_reduce
    times = []
    for i in range(args.calls + 5):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        all_reduce(buffer)
        if cuda:
            torch.cuda.synchronize()
        if i >= 5:  # the first calls set up connections
            times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        median = statistics.median(times)
        nbytes = 4 * args.numel
        print(
            json.dumps(
                {
                    "world_size": world,
                    "transport": args.transport,
                    "bytes": nbytes,
                    "median_s": median,
                    "min_s": min(times),
                    "max_s": max(times),
                    "bus_bandwidth_gb_s": 2 * (world - 1) / world * nbytes / median / 1e9,
                }
            )
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
