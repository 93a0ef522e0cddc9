"""One DDP training run, one process per rank; launched by torchrun:

    torchrun --standalone --nproc-per-node 2 -m ddpbench.train --data resources/cifar10 --out run.json

Rank 0 writes one JSON (see workflow/schemas/run.schema.json) atomically, and only when
every rank has finished. Any rank's failure ends the launch with a non-zero exit; a hung
peer is detected by the collectives' timeout (``--timeout``). The options are
``ddpbench.options.RunOptions``; ``--help`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from ddpbench import batches as batches_mod
from ddpbench import cache, compiled, heartbeat, machine, phase
from ddpbench.comm import CommTimer, SharedMemoryAllReduce, SharedMemoryError, SkipAllReduce, ddp_hook
from ddpbench.distributed import Dist, die_with_launcher, init_distributed, retain_freed_memory
from ddpbench.io import atomic_write_json, utc_now
from ddpbench.metrics import StepClock, gather_objects, process_start_time
from ddpbench.models import count_parameters
from ddpbench.options import RunOptions, add_arguments, from_namespace
from ddpbench.records import (
    SCHEMA_VERSION,
    EpochMeasure,
    compile_seconds,
    ddp_record,
    environment_record,
    epoch_record,
    rank_facts,
    run_totals,
    start_up_totals,
    step_distribution,
)
from ddpbench.schedule import learning_rate
from ddpbench.step import autocast, sgd_step, step_model, tally
from ddpbench.supervise import exit_finished

log = logging.getLogger("ddpbench.train")


def parse_args(argv: list[str] | None = None) -> tuple[RunOptions, int]:
    parser = argparse.ArgumentParser(prog="python -m ddpbench.train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", action="store_true", help="timestamped lines from every rank")
    verbosity.add_argument("--quiet", action="store_true", help="errors only")
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    return from_namespace(args), level


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


# --------------------------------------------------------------------------- what the run decides (pure)


@dataclass(frozen=True)
class Plan:
    """What a run decides from its options and its place in the launch."""

    per_rank_batch_size: int
    global_batch_size: int
    lr_effective: float
    channels_last: bool
    allreduce: str  # none (one rank) | backend | shared_memory
    compile: str = "none"  # none | default | max-autotune: train.compile with auto resolved (ddpbench.compiled)


def plan_run(options: RunOptions, world_size: int, device_type: str, one_node: bool) -> Plan:
    if options.batch_size_mode == "global":
        if options.batch_size % world_size:
            raise ValueError(
                f"global batch size {options.batch_size} is not divisible by world size {world_size}; "
                "choose a multiple or use batch_size_mode: per_worker"
            )
        per_rank = options.batch_size // world_size
    else:
        per_rank = options.batch_size
    global_batch = per_rank * world_size
    ratio = global_batch / options.base_batch_size
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[options.lr_scaling]
    return Plan(
        per_rank_batch_size=per_rank,
        global_batch_size=global_batch,
        lr_effective=options.lr * factor,
        # auto: on. Both models are convolutional, and channels_last is faster on CPU (oneDNN) and
        # CUDA (cuDNN); bench/run.py measures both formats on the machine at hand.
        channels_last=options.channels_last != "off",
        allreduce=gradient_allreduce(options.allreduce, device_type, world_size, one_node, options.comm_hook),
    )


def gradient_allreduce(
    requested: str, device_type: str, world_size: int, one_node: bool, comm_hook: str = "none"
) -> str:
    """How this run sums gradients: none (one rank), backend (DDP's all-reduce through gloo or
    nccl, with its comm_hook) or shared_memory (CPU ranks on one node)."""
    if world_size == 1:
        return "none"
    if comm_hook != "none":
        if requested == "shared_memory":
            raise ValueError(
                f"comm_hook: {comm_hook} is one of DDP's hooks around its own all-reduce; "
                "use allreduce: backend (or auto), or comm_hook: none"
            )
        return "backend"
    if requested == "shared_memory":
        if device_type != "cpu":
            raise ValueError("allreduce: shared_memory sums CPU gradients; on cuda use allreduce: backend")
        if not one_node:
            raise ValueError(
                "allreduce: shared_memory needs every rank on one node, but this run spans several; "
                "use allreduce: backend"
            )
    if requested == "backend" or device_type != "cpu" or not one_node:
        return "backend"
    return "shared_memory"


def resolved_config(options: RunOptions, d: Dist, plan: Plan) -> dict:
    """The run JSON's ``config``: every option, with what the job resolved in place of ``auto``."""
    return {
        **asdict(options),
        **asdict(plan),
        "world_size": d.world_size,
        "nnodes": d.nnodes,
        "ranks_per_node": d.local_world_size,
        "threads_per_worker": d.threads,
        "device": d.device.type,
        "backend": d.backend,
    }


# --------------------------------------------------------------------------- set-up


@dataclass
class Session:
    """Everything a run's epochs use, built once."""

    options: RunOptions
    d: Dist
    plan: Plan
    meta: dict
    model: torch.nn.Module
    ddp: DistributedDataParallel
    stepped: torch.nn.Module  # what each training step calls: the DDP module, or it compiled
    optimizer: torch.optim.Optimizer
    batches: batches_mod.TrainBatches
    test_pipeline: batches_mod.BatchPipeline
    test_samples: int
    comm: SkipAllReduce | CommTimer | SharedMemoryAllReduce  # the gradient exchange: its times and bucket layout
    clock: StepClock


def set_up(options: RunOptions, d: Dist) -> Session:
    phase.enter("setting up (the compile checked, the cache verified and loaded, DDP built)")
    plan = plan_run(options, d.world_size, d.device.type, d.one_node)
    # Before anything is loaded: a compile that cannot work fails here, not in the first timed step.
    plan = Plan(**{**asdict(plan), "compile": compiled.resolve_compile(options.compile, d.device)})
    # One rank per node checks the cache's checksums; the others wait for it in the first collective.
    meta = cache.verify_cache(options.data) if d.local_rank == 0 else cache.read_meta(options.data)
    train_images, train_labels = cache.load_split(options.data, "train", meta)
    test_images, test_labels = cache.load_split(options.data, "test", meta)
    batches = batches_mod.TrainBatches(
        options, d, train_images, train_labels, batch_size=plan.per_rank_batch_size, channels_last=plan.channels_last
    )
    if d.device.type == "cuda":
        test_images, test_labels = test_images.to(d.device), test_labels.to(d.device)
    test_pipeline = batches_mod.BatchPipeline(test_images, test_labels, d.device, channels_last=plan.channels_last)
    model, ddp = build_ddp(options, d, plan)
    comm, allreduce = install_allreduce(ddp, options, plan.allreduce, d)
    if allreduce != plan.allreduce:
        plan = Plan(**{**asdict(plan), "allreduce": allreduce})
    optimizer = torch.optim.SGD(
        ddp.parameters(),
        lr=plan.lr_effective,
        momentum=options.momentum,
        weight_decay=options.weight_decay,
        fused=d.device.type == "cuda",  # one kernel for all parameters: the GPU step is launch-bound
    )
    return Session(
        options,
        d,
        plan,
        meta,
        model,
        ddp,
        compiled.compile_module(ddp, plan.compile),
        optimizer,
        batches,
        test_pipeline,
        len(test_labels),
        comm,
        StepClock(d.device),
    )


def build_ddp(options: RunOptions, d: Dist, plan: Plan) -> tuple[torch.nn.Module, DistributedDataParallel]:
    torch.manual_seed(options.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = step_model(options.model, d.device, plan.channels_last)
    torch.manual_seed(options.seed * 1000 + 1 + d.rank)  # per-rank dropout masks
    # No buffer broadcast before every forward: BatchNorm's running statistics do not affect
    # training-mode passes, and rank 0's are broadcast before every evaluation instead; this
    # saves one collective per step without changing a single result.
    ddp = DistributedDataParallel(
        model,
        device_ids=[d.device.index] if d.device.type == "cuda" else None,
        bucket_cap_mb=options.bucket_cap_mb,
        static_graph=options.static_graph,
        gradient_as_bucket_view=options.gradient_as_bucket_view,
        **no_forward_buffer_sync(),
    )
    return model, ddp


def no_forward_buffer_sync() -> dict:
    """DDP's keyword for 'do not broadcast buffers before every forward' (renamed in torch 2.14)."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def install_allreduce(ddp: DistributedDataParallel, options: RunOptions, planned: str, d: Dist):
    """Register the communication hook for ``planned``; return (the exchange, what was installed).
    Where ``auto`` chose shared_memory and the node has no room for it, fall back to the backend
    and say so. On CUDA communication is not timed (see CommTimer)."""
    if planned == "none":
        exchange = SkipAllReduce()
        ddp.register_comm_hook(state=None, hook=exchange.hook)
        return exchange, "none"
    if planned == "shared_memory":
        try:
            exchange = SharedMemoryAllReduce(count_parameters(ddp.module))
        except SharedMemoryError as exc:
            if options.allreduce != "auto":
                raise
            log.warning("%s; summing gradients through %s instead", exc, d.backend)
        else:
            ddp.register_comm_hook(state=None, hook=exchange.hook)
            return exchange, "shared_memory"
    inner, state = ddp_hook(options.comm_hook, options.powersgd_rank, options.powersgd_start_iter)
    exchange = CommTimer(inner, state, timed=d.device.type == "cpu")
    ddp.register_comm_hook(state=None, hook=exchange.hook)
    return exchange, "backend"


# --------------------------------------------------------------------------- one epoch


def train_epoch(s: Session, epoch: int) -> EpochMeasure:
    """The timed loop: record, step, record; the device is synchronised before the clock is read."""
    s.ddp.train()
    stats = torch.zeros(3, dtype=torch.float64, device=s.d.device)
    marks, first_step, o = [], epoch * s.batches.steps, s.options
    compiling = s.plan.compile != "none"
    frames, compile_steps = compiled.frames_compiled() if compiling else 0, []
    t_train = time.perf_counter()
    iterator = s.batches.epoch(epoch)
    t0 = s.clock.mark()  # each step starts where the previous one ended
    for i in range(s.batches.steps):
        x, y = next(iterator)
        t1 = s.clock.mark()
        lr = learning_rate(
            s.plan.lr_effective, o.lr_schedule, o.warmup_epochs, first_step + i, s.batches.steps, o.epochs
        )
        if i == 0 and epoch == 0 and s.plan.compile != "none":
            log.info("compiling (train.compile: %s): the first step traces and builds the model", s.plan.compile)
        loss, out = sgd_step(s.stepped, s.optimizer, x, y, lr=lr, precision=s.options.precision)
        tally(stats, loss.detach() * len(y), out, y)  # on the device: no sync inside the timed loop
        t2 = s.clock.mark()
        if compiling and compiled.frames_compiled() != frames:  # this step compiled (or recompiled)
            frames = compiled.frames_compiled()
            compile_steps.append(i)
        marks.append((t0, t1, t2))
        t0 = t2
    s.clock.sync()
    train_s = time.perf_counter() - t_train
    busy, exposed = s.comm.take()
    dist.all_reduce(stats)  # train loss/accuracy over all ranks' samples
    loss_sum, correct, count = stats.tolist()
    return EpochMeasure(
        loss_sum,
        correct,
        count,
        s.batches.steps,
        lr,
        train_s,
        data_s=sum(s.clock.seconds(a, b) for a, b, _ in marks),
        step_s=sum(s.clock.seconds(b, c) for _, b, c in marks),
        comm_busy_s=busy,
        comm_exposed_s=exposed,
        step_times_s=tuple(s.clock.seconds(a, c) for a, _, c in marks),
        compile_steps=tuple(compile_steps),
    )


@torch.no_grad()
def evaluate(s: Session) -> tuple[float, float]:
    """Loss and accuracy (%) of rank 0's model on the whole test set, each sample counted exactly once."""
    for buffer in s.ddp.module.buffers():  # rank 0's BatchNorm statistics on every rank
        dist.broadcast(buffer, 0)
    s.ddp.module.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=s.d.device)
    index = batches_mod.eval_indices(s.test_samples, s.d.world_size, s.d.rank).to(s.d.device)
    batch = s.options.eval_batch_size
    for start in range(0, len(index), batch):
        x, y = s.test_pipeline(index[start : start + batch], train=False)
        with autocast(s.options.precision, s.d.device.type):
            out = s.ddp.module(x)
        tally(totals, torch.nn.functional.cross_entropy(out.float(), y, reduction="sum"), out, y)
    dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    if int(count) != s.test_samples:
        raise RuntimeError(f"evaluated {int(count)} test samples, expected {s.test_samples}")
    return loss_sum / count, 100.0 * correct / count


# --------------------------------------------------------------------------- the run


def run_epochs(s: Session) -> tuple[list[dict], float, float | None]:
    """Train and evaluate every epoch: (epoch records, loop seconds, time to the target accuracy)."""
    epochs: list[dict] = []
    time_to_target = None
    dist.barrier()  # start the clocks together
    loop_start = time.perf_counter()
    for epoch in range(s.options.epochs):
        phase.enter(f"training epoch {epoch + 1}/{s.options.epochs}")
        m = train_epoch(s, epoch)
        phase.enter(f"evaluating after epoch {epoch + 1}/{s.options.epochs}")
        t_eval = time.perf_counter()
        test_loss, test_acc = evaluate(s)
        s.clock.sync()
        eval_s = time.perf_counter() - t_eval
        elapsed = time.perf_counter() - loop_start
        target = s.options.target_accuracy
        if time_to_target is None and target is not None and test_acc >= target:
            time_to_target = elapsed
        ranks = gather_objects((m.train_s, step_distribution(m.step_times_s)))  # outside the timed loop
        train_max = max(train_s for train_s, _ in ranks)
        record_ = epoch_record(epoch + 1, m, (test_loss, test_acc), eval_s, elapsed, train_max, [r for _, r in ranks])
        epochs.append(record_)
        log.info(
            "Epoch [%d/%d] | Loss: %.4f | Train Acc: %.2f%% | Test Acc: %.2f%% | Time: %.1fs",
            epoch + 1,
            s.options.epochs,
            record_["train_loss"],
            record_["train_acc"],
            test_acc,
            m.train_s + eval_s,
        )
    return epochs, time.perf_counter() - loop_start, time_to_target


def train(options: RunOptions, d: Dist, t_process: float, heap_retained: bool) -> dict:
    started_utc = utc_now()
    s = set_up(options, d)
    first_step_time = time.time()
    cpu_start = machine.cpu_times()
    epochs, loop_s, time_to_target = run_epochs(s)
    cpu_span = (cpu_start, machine.cpu_times())
    per_rank = gather_objects(rank_facts(d, t_process, first_step_time))
    env = environment_record(d, per_rank, heap_retained, cpu_span)
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "ok",
        "config": resolved_config(options, d, s.plan),
        "model": {"name": options.model, "parameters": count_parameters(s.model)},
        "dataset": {**s.meta, "train_samples_used": s.batches.samples_per_epoch, "test_samples": s.test_samples},
        "epochs": epochs,
        "totals": {
            **run_totals(epochs, loop_s, time_to_target),
            **start_up_totals(per_rank, t_process, first_step_time),
            "compile_s": compile_seconds(epochs) if s.plan.compile != "none" else None,
        },
        "ddp": ddp_record(s.comm.layout.record(), d.world_size, s.plan.allreduce),
        "ranks": per_rank,
        "environment": env,
        "timestamps": {"started_utc": started_utc, "finished_utc": utc_now()},
    }


@record
def main(argv: list[str] | None = None) -> int:
    t_process = process_start_time()
    die_with_launcher()
    heap_retained = retain_freed_memory()
    options, level = parse_args(argv)
    d = init_distributed(options.device, options.threads_per_worker, options.timeout)
    setup_logging(level, d.rank)
    phase.name_phase_on_sigterm(d.rank)  # a time limit or a kill says where it stopped the rank
    try:
        log.debug("rank %d/%d on %s, %d threads, backend %s", d.rank, d.world_size, d.device, d.threads, d.backend)
        # A peer that stops responding is named by the ranks that time out waiting for it.
        with heartbeat.peer_heartbeats(d.rank, d.world_size):
            result = train(options, d, t_process, heap_retained)
            dist.barrier()  # every rank finished: only now is the run a result
        if d.rank == 0 and options.out:
            atomic_write_json(Path(options.out), result)
            log.info("wrote %s", options.out)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_finished(main())  # the result is written: the interpreter's teardown would only delay the launch
