"""The run JSON's records (workflow/schemas/run.schema.json): each epoch's, the run's totals,
what each rank and the start-up report, DDP's buckets and the environment.

ddpbench.train measures; these functions only turn its measurements into the records, most of
them pure, so that what a record means is tested without torchrun.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ddpbench import machine
from ddpbench.metrics import environment, mapped_file_memory, peak_rss_bytes, pss_bytes

if TYPE_CHECKING:
    from ddpbench.distributed import Dist

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class EpochMeasure:
    """One epoch's training phase on this rank: sums over all ranks' samples, seconds on its clock."""

    loss_sum: float
    correct: float
    count: float
    steps: int
    lr: float
    train_s: float
    data_s: float
    step_s: float
    comm_busy_s: float | None
    comm_exposed_s: float | None
    step_times_s: tuple[float, ...] = ()  # each step's data wait + step, on this rank's clock
    compile_steps: tuple[int, ...] = ()  # the steps (of this epoch) in which torch.compile compiled


# The steps at the start of a run that the steady-state figures leave out: the one-off costs
# (allocator growth, oneDNN primitives created, DDP rebuilding its buckets after the first
# iteration) fall in the first few steps; 20 of them, at most a tenth of the run, covers those
# and keeps nine tenths of the run in the figures.
WARMUP_STEPS = 20


def step_distribution(times: list[float] | tuple[float, ...]) -> dict:
    """One rank's step times in one epoch: median, 5th and 95th percentile, maximum (seconds)."""
    if not times:
        return {"median_s": None, "p5_s": None, "p95_s": None, "max_s": None}
    p5, median, p95 = np.percentile(times, [5, 50, 95])
    return {"median_s": float(median), "p5_s": float(p5), "p95_s": float(p95), "max_s": float(max(times))}


def step_record(per_rank: list[dict], rank0_times: tuple[float, ...]) -> dict:
    """An epoch's step times: every rank's distribution, the skew (slowest rank's median over the
    fastest's) and rank 0's full series."""
    medians = [r["median_s"] for r in per_rank if r["median_s"]]
    return {
        "step_time_ranks": [{"rank": i, **r} for i, r in enumerate(per_rank)],
        "step_skew": max(medians) / min(medians) if medians else None,
        "step_times_s": list(rank0_times),
    }


def step_series(epochs: list[dict]) -> tuple[list[float], set[int]]:
    """Rank 0's step times over the run, and the indices into them of the steps that compiled."""
    series, compiles = [], set()
    for e in epochs:
        compiles |= {len(series) + i for i in e.get("compile_steps", [])}
        series += e.get("step_times_s", [])
    return series, compiles


def steady_state(epochs: list[dict]) -> dict:
    """The run after its warm-up (pure): the first min(WARMUP_STEPS, a tenth of the steps) steps of
    rank 0's series left out (none of a one-step run: it has no steady state to tell apart), and
    any later step that compiled (torch.compile's recompiles); what the warm-up cost beyond as
    many steady-state median steps; the steady throughput is the images of the remaining steps
    over their summed step times; the coefficient of variation of those steps is the run's own
    (within-run) variability."""
    series, compiles = step_series(epochs)
    if not series:
        return {}
    warmup = max(1, min(WARMUP_STEPS, len(series) // 10)) if len(series) > 1 else 0
    kept = [t for i, t in enumerate(series) if i >= warmup and i not in compiles]
    steady = np.asarray(kept or series[warmup:])
    images_per_step = sum(e["images"] for e in epochs) / len(series)
    median = float(np.median(steady))
    return {
        "warmup_steps": warmup,
        "warmup_time_s": sum(series[:warmup]),
        "warmup_cost_s": sum(series[:warmup]) - warmup * median,
        "steady_steps": len(steady),
        "steady_images": images_per_step * len(steady),
        "steady_time_s": float(steady.sum()),
        "steady_step_time_median_s": median,
        "steady_step_time_cv": float(steady.std(ddof=1) / steady.mean()) if len(steady) > 1 else None,
        "steady_throughput_img_s": images_per_step * len(steady) / float(steady.sum()),
        "step_skew_max": max((e["step_skew"] for e in epochs if e.get("step_skew")), default=None),
    }


def compile_seconds(epochs: list[dict]) -> float:
    """A compiled run's compile time (pure): its steps that compiled (the first, where dynamo
    traces and inductor builds or loads the step's code, and any recompile), each beyond rank 0's
    steady median step."""
    series, compiles = step_series(epochs)
    if len(series) == 1:
        return series[0]
    median = steady_state(epochs)["steady_step_time_median_s"]
    return sum(max(series[i] - median, 0.0) for i in sorted(compiles or {0}))


def epoch_record(
    epoch: int,
    m: EpochMeasure,
    test: tuple[float, float],
    eval_s: float,
    elapsed_s: float,
    train_time_max_s: float,
    step_ranks: list[dict] | None = None,
) -> dict:
    """The run JSON's record of one epoch (pure)."""
    test_loss, test_acc = test
    return {
        "epoch": epoch,
        "train_loss": m.loss_sum / m.count,
        "train_acc": 100.0 * m.correct / m.count,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "lr": m.lr,
        "steps": m.steps,
        "images": int(m.count),
        "train_time_s": m.train_s,
        "eval_time_s": eval_s,
        "data_time_s": m.data_s,
        "step_time_s": m.step_s,
        "compute_time_s": m.step_s - m.comm_exposed_s if m.comm_exposed_s is not None else None,
        "comm_time_s": m.comm_busy_s,
        "comm_exposed_time_s": m.comm_exposed_s,
        "throughput_img_s": m.count / m.train_s,
        "elapsed_s": elapsed_s,
        # Rank 0's clock speaks for the run; the slowest rank's train time is recorded too.
        "train_time_max_s": train_time_max_s,
        **(step_record(step_ranks, m.step_times_s) if step_ranks else {}),
        **({"compile_steps": list(m.compile_steps)} if m.compile_steps else {}),
    }


def run_totals(epochs: list[dict], loop_s: float, time_to_target: float | None) -> dict:
    """The run's totals from its epoch records (pure): a sum is None where any epoch's value is."""

    def total(key):
        values = [e[key] for e in epochs]
        return None if any(v is None for v in values) else sum(values)

    train_time = total("train_time_s")
    images = sum(e["images"] for e in epochs)
    return {
        "train_loop_s": loop_s,
        **{
            key: total(key)
            for key in (
                "train_time_s",
                "eval_time_s",
                "data_time_s",
                "step_time_s",
                "compute_time_s",
                "comm_time_s",
                "comm_exposed_time_s",
            )
        },
        "images": images,
        "throughput_img_s": images / train_time if train_time else None,
        "final_test_acc": epochs[-1]["test_acc"],
        "final_test_loss": epochs[-1]["test_loss"],
        "best_test_acc": max(e["test_acc"] for e in epochs),
        "time_to_target_s": time_to_target,
        **steady_state(epochs),
    }


def rank_facts(d: Dist, t_process: float, first_step_time: float) -> dict:
    """What each rank reports about itself at the end (gathered to rank 0)."""
    return {
        "rank": d.rank,
        "hostname": os.uname().nodename,
        "pid": os.getpid(),
        "cpu_affinity": d.cpu_affinity,
        "peak_rss_bytes": peak_rss_bytes(),
        "pss_bytes": pss_bytes(),
        "dataset_memory": mapped_file_memory("_images.npy"),
        "peak_gpu_mem_bytes": torch.cuda.max_memory_allocated(d.device) if d.device.type == "cuda" else None,
        "process_start_to_first_step_s": first_step_time - t_process,
    }


def start_up_totals(per_rank: list[dict], t_process: float, first_step_time: float) -> dict:
    launch = os.environ.get("DDPBENCH_LAUNCH_TIME")
    return {
        "process_start_to_first_step_s": per_rank[0]["process_start_to_first_step_s"],
        "launch_to_first_step_s": first_step_time - float(launch) if launch else None,
        "process_start_to_end_s": time.time() - t_process,
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in per_rank),
        "peak_rss_bytes_total": sum(r["peak_rss_bytes"] for r in per_rank),
    }


def ddp_record(layout: dict, world_size: int, allreduce: str) -> dict:
    """The buckets DDP built and the bytes each rank hands to the all-reduce per step (rank 0's
    ``layout``); a ring all-reduce sends 2 (W - 1) / W of them, where the backend sums them."""
    payload, w = layout["allreduce_payload_bytes_per_step"], world_size
    ring = payload * 2 * (w - 1) / w if payload is not None and allreduce == "backend" else None
    return {**layout, "ring_bytes_sent_per_rank_per_step": ring}


def timing_lock() -> dict | None:
    """The host-wide lock this launch queued on (ddpbench.launch), and how long it waited."""
    path = os.environ.get("DDPBENCH_TIMING_LOCK")
    return {"path": path, "wait_s": float(os.environ.get("DDPBENCH_TIMING_LOCK_WAIT_S", 0))} if path else None


def environment_record(
    d: Dist, per_rank: list[dict], heap_retained: bool, cpu_span: tuple[machine.CpuTimes | None, ...]
) -> dict:
    """Where the run ran: the machine and software (ddpbench.metrics), the state of rank 0's host
    that moves timings (ddpbench.machine; steal time over ``cpu_span``, the training loop), every
    rank's host, and what the launch arranged (the heap, the timing lock, an emulated link)."""
    env = environment(d.device, d.backend, d.threads, d.cores_available)
    env.update(machine.state(*cpu_span, torch.__config__.show()))
    env.update(
        hostnames=sorted({r["hostname"] for r in per_rank}),
        heap_retained=heap_retained,
        timing_lock=timing_lock(),
        emulated_link=json.loads(os.environ.get("DDPBENCH_EMULATED_LINK", "null")),  # set by ddpbench.netem launch
    )
    return env
