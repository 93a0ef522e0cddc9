"""One DDP training run, one process per rank; launched by torchrun:

    torchrun --standalone --nproc-per-node 2 -m ddpbench.train --data resources/cifar10 --out run.json

Rank 0 writes one JSON (see workflow/schemas/run.schema.json) atomically, and only when
every rank has finished. Any rank's failure ends the launch with a non-zero exit; a hung
peer is detected by the collectives' timeout (``--timeout``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from ddpbench import data as data_mod
from ddpbench.comm import CommTimer, SharedMemoryAllReduce, SharedMemoryError, skip_allreduce
from ddpbench.io import atomic_write_json, utc_now
from ddpbench.metrics import (
    cores_available,
    StepClock,
    environment,
    gather_objects,
    mapped_file_memory,
    peak_rss_bytes,
    process_start_time,
    pss_bytes,
)
from ddpbench.models import build_model, count_parameters

log = logging.getLogger("ddpbench.train")
SCHEMA_VERSION = 1


@dataclass
class TrainConfig:
    data: str
    out: str | None = None
    model: str = "simple_cnn"
    epochs: int = 5
    batch_size: int = 128
    batch_size_mode: str = "per_worker"  # per_worker: each rank takes batch_size; global: split it
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_scaling: str = "none"  # none | linear | sqrt, relative to base_batch_size
    base_batch_size: int = 128
    warmup_epochs: float = 0.0
    augment: str = "none"  # none | flip_crop
    channels_last: str = "auto"  # auto | on | off
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    device: str = "cpu"  # cpu | cuda | auto
    threads_per_worker: int = 0  # 0: floor(cores available / ranks on this node)
    loader: str = "resident"  # resident | dataloader (the study's per-sample pipeline)
    allreduce: str = "auto"  # auto | backend | shared_memory: how ranks sum gradients
    max_train_samples: int | None = None
    target_accuracy: float | None = 65.0
    seed: int = 0
    eval_batch_size: int = 500
    timeout: float = 60.0  # seconds a collective waits for a silent peer (torchrun then allows 30 s to exit)


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, int]:
    defaults = TrainConfig(data="")
    p = argparse.ArgumentParser(prog="python -m ddpbench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset cache directory (python -m ddpbench.data)")
    p.add_argument("--out", help="run JSON to write (rank 0); omitted: nothing is written")
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--batch-size-mode", choices=("per_worker", "global"), default=defaults.batch_size_mode)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--momentum", type=float, default=defaults.momentum)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"), default=defaults.lr_scaling)
    p.add_argument("--base-batch-size", type=int, default=defaults.base_batch_size)
    p.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs)
    p.add_argument("--augment", choices=("none", "flip_crop"), default=defaults.augment)
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default=defaults.channels_last)
    p.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=defaults.device)
    p.add_argument("--threads-per-worker", type=int, default=defaults.threads_per_worker, help="0: auto")
    p.add_argument("--loader", choices=("resident", "dataloader"), default=defaults.loader)
    p.add_argument("--allreduce", choices=("auto", "backend", "shared_memory"), default=defaults.allreduce,
                   help="how ranks sum gradients: the process group's all-reduce (backend), a shared-memory "
                        "segment (CPU ranks on one node), or auto (shared_memory where it applies)")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--target-accuracy", type=_optional_float, default=defaults.target_accuracy,
                   help="test accuracy (%%) for time-to-accuracy; 'none' to skip")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    p.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds before a silent peer is an error")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", action="store_true", help="timestamped lines from every rank")
    verbosity.add_argument("--quiet", action="store_true", help="errors only")
    args = vars(p.parse_args(argv))
    verbose, quiet = args.pop("verbose"), args.pop("quiet")
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    return TrainConfig(**args), level


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


# --------------------------------------------------------------------------- distributed set-up


@dataclass
class Dist:
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


def init_distributed(cfg: TrainConfig) -> Dist:
    """Threads first (inter-op threads can only be set before any parallel work), then the group."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cores = cores_available()  # before pinning narrows this process's view
    threads = cfg.threads_per_worker or max(1, cores // local_world_size)
    pinned = pin_to_cores(local_rank, local_world_size, threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)

    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but no CUDA device is visible; use train.device: cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    gloo_on_loopback_within_one_node()
    if "RANK" not in os.environ:  # plain `python -m ddpbench.train`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=cfg.timeout),
        device_id=device if device.type == "cuda" else None,
    )
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, local_world_size, device, backend, threads, pinned,
                cores)


def gloo_on_loopback_within_one_node() -> None:
    """When every rank of the launch is on this node (torchrun's WORLD_SIZE = LOCAL_WORLD_SIZE,
    or no launcher), keep gloo's pair connections on loopback unless the user chose an interface."""
    if os.environ.get("WORLD_SIZE", "1") == os.environ.get("LOCAL_WORLD_SIZE", "1"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def pin_to_cores(local_rank: int, local_world_size: int, threads: int) -> list[int] | None:
    """Give each rank on this node its own block of ``threads`` cores, when this launch owns them.

    Unpinned ranks migrate between cores and evict each other's caches: measured on a 2-core
    machine, two one-thread ranks trained 10-20 % faster pinned. But blocks are counted from the
    first allowed core, so two launches sharing a machine would pin onto the same cores: pin
    only when told the machine is ours (DDPBENCH_PIN=1, which the workflow sets while timed runs
    go one at a time) or, unless DDPBENCH_PIN=0, when a scheduler confined us to exactly the
    cores we use."""
    cpus = sorted(os.sched_getaffinity(0))
    wanted = local_world_size * threads
    setting = os.environ.get("DDPBENCH_PIN", "")
    if wanted > len(cpus) or setting == "0" or (setting != "1" and wanted != len(cpus)):
        return None
    block = core_block(local_rank, threads)
    os.sched_setaffinity(0, block)
    return block


def core_block(index: int, threads: int) -> list[int]:
    """The ``index``-th block of ``threads`` cores among those this process may use."""
    return sorted(os.sched_getaffinity(0))[index * threads : (index + 1) * threads]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_logging(level: int, rank: int) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if level <= logging.DEBUG:
        handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} pid {os.getpid()} %(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    # Non-verbose runs: only rank 0 reports progress; every rank reports errors.
    log.setLevel(level if (rank == 0 or level <= logging.DEBUG) else max(level, logging.ERROR))


# --------------------------------------------------------------------------- the run


def resolve(cfg: TrainConfig, d: Dist) -> dict:
    if cfg.batch_size_mode == "global":
        if cfg.batch_size % d.world_size:
            raise ValueError(
                f"global batch size {cfg.batch_size} is not divisible by world size {d.world_size}; "
                "choose a multiple or use batch_size_mode: per_worker"
            )
        per_rank = cfg.batch_size // d.world_size
    else:
        per_rank = cfg.batch_size
    global_batch = per_rank * d.world_size
    factor = {"none": 1.0, "linear": global_batch / cfg.base_batch_size, "sqrt": math.sqrt(global_batch / cfg.base_batch_size)}
    # auto: on. Both models are convolutional, and channels_last measured faster on CPU (oneDNN)
    # and CUDA (cuDNN); bench/run.py measures both formats on the machine at hand.
    channels_last = cfg.channels_last != "off"
    return {
        **asdict(cfg),
        "world_size": d.world_size,
        "nnodes": d.nnodes,
        "ranks_per_node": d.local_world_size,
        "per_rank_batch_size": per_rank,
        "global_batch_size": global_batch,
        "lr_effective": cfg.lr * factor[cfg.lr_scaling],
        "channels_last": channels_last,
        "threads_per_worker": d.threads,
        "device": d.device.type,
        "backend": d.backend,
        "allreduce": gradient_allreduce(cfg, d),
    }


class TrainBatches:
    """Per-epoch iterator of (x, y) device batches for this rank, from either loader."""

    def __init__(self, cfg: TrainConfig, resolved: dict, d: Dist, images, labels):
        if cfg.max_train_samples:
            images, labels = images[: cfg.max_train_samples], labels[: cfg.max_train_samples]
        self.batch = resolved["per_rank_batch_size"]
        self.loader, self.device, self.channels_last = cfg.loader, d.device, resolved["channels_last"]
        self.shard = data_mod.Shard(len(labels), d.world_size, d.rank, cfg.seed)
        if self.shard.num_samples == 0:
            raise data_mod.DataError(
                f"{len(labels)} training samples cannot be split across {d.world_size} ranks; "
                "raise max_train_samples or use a smaller world size"
            )
        self.steps = self.shard.steps(self.batch)
        self.samples_per_epoch = self.shard.num_samples * d.world_size
        if cfg.loader == "resident":
            if d.device.type == "cuda":
                images, labels = images.to(d.device), labels.to(d.device)
            self.pipeline = data_mod.BatchPipeline(
                images, labels, d.device, augment=cfg.augment, channels_last=self.channels_last,
                seed=cfg.seed * 1000 + d.rank,
            )
        else:
            if cfg.augment != "none":
                raise ValueError("augment is implemented for loader: resident only; set augment: none")
            dataset = data_mod.PerSampleDataset(images, labels)
            self.sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
            )
            self.dataloader = torch.utils.data.DataLoader(dataset, batch_size=self.batch, sampler=self.sampler)

    def epoch(self, epoch: int):
        if self.loader == "resident":
            # One copy of the epoch's order to the device; per-batch copies would sync with it.
            index = self.shard.indices(epoch).to(self.device)
            for start in range(0, len(index), self.batch):
                yield self.pipeline(index[start : start + self.batch])
        else:
            self.sampler.set_epoch(epoch)
            memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
            for x, y in self.dataloader:
                yield x.to(self.device, memory_format=memory_format, non_blocking=True), y.to(self.device)


def gradient_allreduce(cfg: TrainConfig, d: Dist) -> str:
    """How this run sums gradients: none (one rank), backend (DDP's all-reduce through gloo or
    nccl) or shared_memory (CPU ranks on one node)."""
    if d.world_size == 1:
        return "none"
    one_node = d.world_size == d.local_world_size
    if cfg.allreduce == "shared_memory":
        if d.device.type != "cpu":
            raise ValueError("allreduce: shared_memory sums CPU gradients; on cuda use allreduce: auto or backend")
        if not one_node:
            raise ValueError(
                f"allreduce: shared_memory needs every rank on one node, but this run spans {d.nnodes} nodes; "
                "use allreduce: auto or backend"
            )
    if cfg.allreduce == "backend" or d.device.type != "cpu" or not one_node:
        return "backend"
    return "shared_memory"


def install_allreduce(ddp: DistributedDataParallel, cfg: TrainConfig, resolved: dict, d: Dist):
    """Register the gradient communication hook ``resolved["allreduce"]`` names; return the
    timer of communication, or None where it is not timed (CUDA). Where ``auto`` chose
    shared_memory and the node has no room for it, fall back to the backend and say so."""
    if resolved["allreduce"] == "none":
        ddp.register_comm_hook(state=None, hook=skip_allreduce)
        return None
    if resolved["allreduce"] == "shared_memory":
        try:
            comm = SharedMemoryAllReduce(count_parameters(ddp.module))
        except SharedMemoryError as exc:
            if cfg.allreduce != "auto":
                raise
            log.warning("%s; summing gradients through %s instead", exc, d.backend)
            resolved["allreduce"] = "backend"
        else:
            ddp.register_comm_hook(state=None, hook=comm.hook)
            return comm
    if d.device.type == "cpu":
        comm = CommTimer()
        ddp.register_comm_hook(state=None, hook=comm.hook)
        return comm
    return None


def no_forward_buffer_sync() -> dict:
    """DDP's keyword for 'do not broadcast buffers before every forward' (renamed in torch 2.14)."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def learning_rate(resolved: dict, step: int, steps_per_epoch: int) -> float:
    warmup_steps = resolved["warmup_epochs"] * steps_per_epoch
    if step < warmup_steps:
        return resolved["lr_effective"] * (step + 1) / warmup_steps
    return resolved["lr_effective"]


@torch.no_grad()
def evaluate(module, pipeline: data_mod.BatchPipeline, n_test: int, d: Dist, batch: int, autocast) -> tuple[float, float]:
    """Loss and accuracy (%) on the whole test set, each sample counted exactly once."""
    module.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=d.device)
    index = data_mod.eval_indices(n_test, d.world_size, d.rank).to(d.device)
    for start in range(0, len(index), batch):
        x, y = pipeline(index[start : start + batch], train=False)
        with autocast():
            out = module(x)
        totals[0] += torch.nn.functional.cross_entropy(out.float(), y, reduction="sum")
        totals[1] += (out.argmax(1) == y).sum()
        totals[2] += len(y)
    dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    if int(count) != n_test:
        raise RuntimeError(f"evaluated {int(count)} test samples, expected {n_test}")
    return loss_sum / count, 100.0 * correct / count


def train(cfg: TrainConfig, d: Dist, t_process: float, heap_retained: bool) -> dict:
    resolved = resolve(cfg, d)
    started_utc = utc_now()
    meta = data_mod.read_meta(cfg.data)
    train_images, train_labels = data_mod.load_split(cfg.data, "train", meta)
    test_images, test_labels = data_mod.load_split(cfg.data, "test", meta)
    batches = TrainBatches(cfg, resolved, d, train_images, train_labels)
    if d.device.type == "cuda":
        test_images, test_labels = test_images.to(d.device), test_labels.to(d.device)
    test_pipeline = data_mod.BatchPipeline(test_images, test_labels, d.device, channels_last=resolved["channels_last"])

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(cfg.model, num_classes=len(data_mod.CIFAR10_CLASSES)).to(d.device)
    if resolved["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed * 1000 + 1 + d.rank)  # per-rank dropout masks
    # broadcast_buffers=False: BatchNorm's running statistics do not affect training-mode forward
    # passes, and rank 0's (which DDP's per-step broadcast would copy to the others, leaving
    # rank 0's own untouched) are broadcast before every evaluation; this saves one
    # collective per step without changing a single result.
    ddp = DistributedDataParallel(
        model,
        device_ids=[d.device.index] if d.device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **no_forward_buffer_sync(),
    )
    comm = install_allreduce(ddp, cfg, resolved, d)
    optimizer = torch.optim.SGD(
        ddp.parameters(),
        lr=resolved["lr_effective"],
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        fused=d.device.type == "cuda",  # one kernel for all parameters: the GPU step is launch-bound
    )
    criterion = torch.nn.CrossEntropyLoss()
    use_bf16 = cfg.precision == "bf16"

    def autocast():
        return torch.autocast(d.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    clock = StepClock(d.device)
    epochs: list[dict] = []
    time_to_target = None
    first_step_time = None
    global_step = 0
    dist.barrier()  # start the clocks together
    loop_start = time.perf_counter()
    for epoch in range(cfg.epochs):
        ddp.train()
        stats = torch.zeros(3, dtype=torch.float64, device=d.device)
        marks = []
        t_train = time.perf_counter()
        iterator = batches.epoch(epoch)
        t0 = clock.mark()  # each step starts where the previous one ended
        for _ in range(batches.steps):
            if first_step_time is None:
                first_step_time = time.time()
            x, y = next(iterator)
            t1 = clock.mark()
            lr = learning_rate(resolved, global_step, batches.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                out = ddp(x)
                loss = criterion(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats[0] += loss.detach() * len(y)
            stats[1] += (out.argmax(1) == y).sum()
            stats[2] += len(y)
            t2 = clock.mark()
            marks.append((t0, t1, t2))
            t0 = t2
            global_step += 1
        clock.sync()
        train_s = time.perf_counter() - t_train
        data_s = sum(clock.seconds(a, b) for a, b, _ in marks)
        step_s = sum(clock.seconds(b, c) for _, b, c in marks)
        if comm is not None:
            comm_busy, comm_exposed = comm.take()
        else:  # one rank: nothing to communicate; CUDA: not timed (see CommTimer)
            comm_busy = comm_exposed = 0.0 if d.world_size == 1 else None
        dist.all_reduce(stats)  # train loss/accuracy over all ranks' samples
        train_loss, train_correct, train_count = stats.tolist()

        t_eval = time.perf_counter()
        for buffer in ddp.module.buffers():  # evaluate rank 0's model (BatchNorm statistics) on every rank
            dist.broadcast(buffer, 0)
        test_loss, test_acc = evaluate(ddp.module, test_pipeline, len(test_labels), d, cfg.eval_batch_size, autocast)
        clock.sync()
        eval_s = time.perf_counter() - t_eval
        elapsed = time.perf_counter() - loop_start
        if time_to_target is None and cfg.target_accuracy is not None and test_acc >= cfg.target_accuracy:
            time_to_target = elapsed
        record_ = {
            "epoch": epoch + 1,
            "train_loss": train_loss / train_count,
            "train_acc": 100.0 * train_correct / train_count,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "steps": batches.steps,
            "images": int(train_count),
            "train_time_s": train_s,
            "eval_time_s": eval_s,
            "data_time_s": data_s,
            "step_time_s": step_s,
            "compute_time_s": step_s - comm_exposed if comm_exposed is not None else None,
            "comm_time_s": comm_busy,
            "comm_exposed_time_s": comm_exposed,
            "throughput_img_s": train_count / train_s,
            "elapsed_s": elapsed,
        }
        # Rank 0's clock speaks for the run; the slowest rank's train time is recorded too.
        record_["train_time_max_s"] = max(gather_objects(train_s))
        epochs.append(record_)
        log.info(
            "Epoch [%d/%d] | Loss: %.4f | Train Acc: %.2f%% | Test Acc: %.2f%% | Time: %.1fs",
            epoch + 1, cfg.epochs, record_["train_loss"], record_["train_acc"], test_acc, train_s + eval_s,
        )
        log.debug("epoch %d: train %.2fs (data %.2fs, step %.2fs, comm exposed %s), eval %.2fs",
                  epoch + 1, train_s, data_s, step_s, comm_exposed, eval_s)
    loop_s = time.perf_counter() - loop_start

    per_rank = gather_objects(
        {
            "rank": d.rank,
            "hostname": os.uname().nodename,
            "pid": os.getpid(),
            "cpu_affinity": d.cpu_affinity,
            "peak_rss_bytes": peak_rss_bytes(),
            "pss_bytes": pss_bytes(),
            "dataset_memory": mapped_file_memory("_images.npy"),
            "peak_gpu_mem_bytes": torch.cuda.max_memory_allocated(d.device) if d.device.type == "cuda" else None,
            "process_start_to_first_step_s": first_step_time - t_process if first_step_time else None,
        }
    )
    def total(key):
        values = [e[key] for e in epochs]
        return None if any(v is None for v in values) else sum(values)

    train_time = total("train_time_s")
    images = sum(e["images"] for e in epochs)
    launch = os.environ.get("DDPBENCH_LAUNCH_TIME")
    totals = {
        "train_loop_s": loop_s,
        "train_time_s": train_time,
        "eval_time_s": total("eval_time_s"),
        "data_time_s": total("data_time_s"),
        "step_time_s": total("step_time_s"),
        "compute_time_s": total("compute_time_s"),
        "comm_time_s": total("comm_time_s"),
        "comm_exposed_time_s": total("comm_exposed_time_s"),
        "images": images,
        "throughput_img_s": images / train_time if train_time else None,
        "final_test_acc": epochs[-1]["test_acc"] if epochs else None,
        "final_test_loss": epochs[-1]["test_loss"] if epochs else None,
        "best_test_acc": max((e["test_acc"] for e in epochs), default=None),
        "time_to_target_s": time_to_target,
        "process_start_to_first_step_s": per_rank[0]["process_start_to_first_step_s"],
        "launch_to_first_step_s": (first_step_time - float(launch)) if launch and first_step_time else None,
        "process_start_to_end_s": time.time() - t_process,
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in per_rank),
        "peak_rss_bytes_total": sum(r["peak_rss_bytes"] for r in per_rank),
    }
    model_info = {"name": cfg.model, "parameters": count_parameters(model)}
    env = environment(d.device, d.backend, d.threads, d.cores_available)
    env["hostnames"] = sorted({r["hostname"] for r in per_rank})
    env["heap_retained"] = heap_retained
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "ok",
        "config": resolved,
        "model": model_info,
        "dataset": {**meta, "train_samples_used": batches.samples_per_epoch, "test_samples": len(test_labels)},
        "epochs": epochs,
        "totals": totals,
        "ranks": per_rank,
        "environment": env,
        "timestamps": {"started_utc": started_utc, "finished_utc": utc_now()},
    }


def die_with_launcher() -> None:
    """Under torchrun, end this rank when the launcher dies (say, a killed Snakemake job), so an
    orphaned rank never finishes on its own and writes a result nobody asked for any more."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher was already gone before prctl took effect
        sys.exit("torchrun exited before this rank started")


def retain_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc maps every allocation over 128 KiB afresh and unmaps it when freed, so each
    step's multi-MiB activations and gradients were new pages for the kernel to fault in and
    zero: on the 2-core benchmark machine that was 10-20 % of a batch-128 step and 25 % of a
    batch-512 one, in system time (bench/README.md). Fixed thresholds keep such blocks in the
    heap for the next step, as PyTorch's CUDA caching allocator does on a GPU."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc's; musl has none
    if mallopt is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


@record
def main(argv: list[str] | None = None) -> int:
    t_process = process_start_time()
    die_with_launcher()
    heap_retained = retain_freed_memory()
    cfg, level = parse_args(argv)
    d = init_distributed(cfg)
    setup_logging(level, d.rank)
    try:
        log.debug("rank %d/%d on %s, %d threads, backend %s", d.rank, d.world_size, d.device, d.threads, d.backend)
        result = train(cfg, d, t_process, heap_retained)
        dist.barrier()  # every rank finished: only now is the run a result
        if d.rank == 0 and cfg.out:
            atomic_write_json(Path(cfg.out), result)
            log.info("wrote %s", cfg.out)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
