"""The compute bound: forward + backward + optimizer step of the model on tensors already in
memory (same batch, threads and memory format as a training run; no data loading, no DDP).

    python bench/compute_bound.py --threads 2 --batch-size 128 [--device cuda] [--steps 150]
    torchrun --standalone --nproc-per-node 2 bench/compute_bound.py --threads 1 --synchronise

Prints one JSON line: images/s over the timed steps, after untimed warm-up steps. With
--synchronise, under torchrun (CPU), every process is a bound on its own block of cores and
all of them meet at a barrier after each step, as DDP ranks meet at their gradient exchange,
but exchange nothing: what synchronous data-parallel training could reach on these cores.
The first process prints the sum of their images/s.
"""

import argparse
import itertools
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

from ddpbench.cpus import core_block
from ddpbench.distributed import gloo_on_loopback_within_one_node, retain_freed_memory
from ddpbench.metrics import gather_objects
from ddpbench.models import build_model
from ddpbench.supervise import exit_finished


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", choices=("on", "off"), default="on")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument(
        "--compile",
        choices=("none", "default", "max-autotune"),
        default="none",
        help="torch.compile the model (inductor), as train.compile does; compiled in the warm-up steps",
    )
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument(
        "--pin",
        choices=("on", "off"),
        default="on",
        help="pin to one block of --threads available cores, as the engine pins a rank",
    )
    p.add_argument("--block", type=int, default=0, help="which block (a rank's local rank)")
    p.add_argument("--gemm", action="store_true", help="also time ddpbench.peak's matrix product at these threads")
    p.add_argument(
        "--heap",
        choices=("retain", "system"),
        default="retain",
        help="retain: glibc keeps freed memory, as the engine has it; system: glibc's default",
    )
    p.add_argument(
        "--synchronise", action="store_true", help="under torchrun: a barrier after every step; block = local rank"
    )
    args = p.parse_args()
    if args.synchronise:
        if "LOCAL_RANK" not in os.environ or args.device != "cpu":
            raise SystemExit("--synchronise runs under torchrun on the CPU")
        args.block = int(os.environ["LOCAL_RANK"])
    if args.heap == "retain" and not retain_freed_memory():
        raise SystemExit("cannot set glibc's malloc thresholds here; use --heap system")
    if args.pin == "on":
        cores = core_block(args.block, args.threads)
        if len(cores) < args.threads:
            raise SystemExit(
                f"block {args.block} of {args.threads} cores is past the {len(os.sched_getaffinity(0))} available"
            )
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    if args.synchronise:  # after pinning, so gloo's threads share the pinned cores as a rank's do
        gloo_on_loopback_within_one_node()
        dist.init_process_group("gloo")
    meet = dist.barrier if args.synchronise else lambda: None
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if args.channels_last == "on" else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(args.model).to(device, memory_format=memory_format)
    stepped = model if args.compile == "none" else torch.compile(model, backend="inductor", mode=args.compile)
    # The engine's optimizer: fused on CUDA.
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, fused=device.type == "cuda"
    )
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(stepped(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meet()

    warmup_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - warmup_start  # with --compile: the build, in the first step
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ends = []  # on the CPU each step's end is a time stamp; on CUDA that would need a sync per step
    for _ in range(args.steps):
        step()
        if device.type == "cpu":
            ends.append(time.perf_counter())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "images_per_s": args.batch_size * args.steps / seconds,
        "seconds": seconds,
        "warmup_s": warmup_s,
        **vars(args),
    }
    if len(ends) >= 20:  # how steady the machine was: step times' 5th, 50th and 95th percentiles
        cuts = statistics.quantiles([1e3 * (b - a) for a, b in itertools.pairwise([start, *ends])], n=20)
        result["step_ms_p5_p50_p95"] = [cuts[0], cuts[9], cuts[18]]
    if args.gemm and not args.synchronise:  # after the bound: the attainable peak of the same cores
        from ddpbench.peak import bf16_native, gemm_flops

        # As ddpbench.peak: a precision the hardware lacks is held against the fp32 peak (an
        # emulated bf16 product is no peak, and takes minutes at 2048 x 2048).
        native = args.precision == "fp32" or bf16_native(args.device)
        result["gemm_precision"] = args.precision if native else "fp32"
        result["gemm_flops_s"] = gemm_flops(args.threads, result["gemm_precision"], args.device)["flops_s"]
    if args.synchronise:
        per_rank = gather_objects(result["images_per_s"])
        dist.destroy_process_group()
        if int(os.environ["RANK"]) != 0:
            return
        result.update(images_per_s=sum(per_rank), images_per_s_per_rank=per_rank, world_size=len(per_rank))
    print(json.dumps(result))


if __name__ == "__main__":
    exit_finished(main())  # printed: the interpreter's teardown is no part of the measurement
