"""Schema-valid run dicts with plausible numbers, for tests that need a grid of runs without
training one (aggregation, the report)."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ddpbench.records import steady_state, step_record


def _stamp(minutes: int) -> str:
    return (datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def jitter(*key) -> float:
    """A deterministic factor in [0.95, 1.05] per key: runs of one world size differ by seed, and
    differently at each world size, so speedups differ by seed and their spread is not zero."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return 0.95 + 0.1 * int.from_bytes(digest[:4], "big") / 2**32


def make_run(
    ws: int,
    bs: int,
    seed: int,
    epochs: int = 3,
    hostname: str = "node-a",
    model: str = "simple_cnn",
    train_time: float | None = None,
    lock_wait: float | None = None,
    variant: str | None = None,
    throughput_factor: float = 1.0,
    acc_offset: float = 0.0,
    config_overrides: dict | None = None,
    threads: int | None = None,
    slot: int = 0,
    warmup_factor: float = 1.0,
    compile_s: float | None = None,
) -> dict:
    """A plausible run: Amdahl-like times (serial fraction 0.15) with a per-run jitter, accuracy falling
    with the world size. ``train_time`` sets the run's total training time exactly; ``lock_wait``
    records a wait for the host-wide timing lock (environment.timing_lock).

    For a variant's run: ``throughput_factor`` divides the training time (of the jittered default too),
    ``acc_offset`` adds to every epoch's test accuracy, ``config_overrides`` are the options the variant
    changed as the run records them (e.g. {"comm_hook": "fp16"}), ``variant`` puts it in that folder and
    ``slot`` moves its timestamps so that runs of different variants do not overlap. ``threads`` fixes
    the threads per worker (default: 8 cores split among the ranks). Rank 0's steps share an epoch's
    data and step time equally, but the run's first step takes ``warmup_factor`` times the others;
    rank r's steps are 1 + r/100 times rank 0's. ``compile_s``: a compiled run's compile time (totals)."""
    if train_time is None:
        key = (ws, bs, seed, variant) if variant else (ws, bs, seed)  # the same jitter as before variants
        train_time = 20.0 * jitter(*key) * (0.15 + 0.85 / ws) * (128 / bs) ** 0.2
    train_time /= throughput_factor
    train_total = train_time
    images = 2048
    records, elapsed, time_to_target = [], 0.0, None
    for e in range(1, epochs + 1):
        train = train_total / epochs
        data, step = 0.02 * train, 0.96 * train
        exposed = step * (0.02 + (0.06 if ws > 1 else 0.0))
        acc = 30.0 + 10.0 * e - 2.0 * math.log2(ws) + seed + acc_offset
        elapsed += train + 0.5
        if time_to_target is None and acc >= 50.0:
            time_to_target = elapsed
        steps = images // (bs * ws) or 1
        weights = [warmup_factor if e == 1 and i == 0 else 1.0 for i in range(steps)]
        series = tuple((data + step) * w / sum(weights) for w in weights)
        median = (data + step) / sum(weights)
        ranks = [dict.fromkeys(("median_s", "p5_s", "p95_s", "max_s"), median * (1 + r / 100)) for r in range(ws)]
        records.append(
            {
                "epoch": e,
                "train_loss": 2.0 - 0.25 * e,
                "train_acc": acc + 3.0,
                "test_loss": 2.0 - 0.2 * e + 0.05 * ws,
                "test_acc": acc,
                "lr": 0.01,
                "steps": steps,
                "images": images,
                "train_time_s": train,
                "eval_time_s": 0.5,
                "data_time_s": data,
                "step_time_s": step,
                "compute_time_s": step - exposed,
                "comm_time_s": 2 * exposed,
                "comm_exposed_time_s": exposed,
                "throughput_img_s": images / train,
                "elapsed_s": elapsed,
                "train_time_max_s": train * 1.01,
                **step_record(ranks, series),
            }
        )

    def total(key):
        return sum(r[key] for r in records)

    threads = threads or max(1, 8 // ws)
    folder = f"results/runs/{variant}/" if variant else "results/runs/"
    return {
        "schema_version": 3,
        "status": "ok",
        "config": {
            "data": "resources/cifar10",
            "out": f"{folder}ws{ws}_bs{bs}_seed{seed}.json",
            "model": model,
            "epochs": epochs,
            "batch_size": bs,
            "batch_size_mode": "per_worker",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "lr_scaling": "none",
            "base_batch_size": 128,
            "warmup_epochs": 0.0,
            "lr_schedule": "constant",
            "augment": "none",
            "channels_last": True,
            "precision": "fp32",
            "device": "cpu",
            "backend": "gloo",
            "threads_per_worker": threads,
            "loader": "resident",
            "allreduce": "shared_memory" if ws > 1 else "none",
            "seed": seed,
            "world_size": ws,
            "nnodes": 1,
            "ranks_per_node": ws,
            "per_rank_batch_size": bs,
            "global_batch_size": bs * ws,
            "lr_effective": 0.01,
            "max_train_samples": None,
            "target_accuracy": 50.0,
            "timeout": 120.0,
            "eval_batch_size": 500,
            **(config_overrides or {}),
        },
        "model": {"name": model, "parameters": 1147914},
        "dataset": {
            "source": "synthetic",
            "counts": {"train": images, "test": 512},
            "train_samples_used": images,
            "test_samples": 512,
        },
        "epochs": records,
        "totals": {
            "train_loop_s": elapsed,
            "train_time_s": total("train_time_s"),
            "eval_time_s": total("eval_time_s"),
            "data_time_s": total("data_time_s"),
            "step_time_s": total("step_time_s"),
            "compute_time_s": total("compute_time_s"),
            "comm_time_s": total("comm_time_s"),
            "comm_exposed_time_s": total("comm_exposed_time_s"),
            "images": images * epochs,
            "throughput_img_s": images * epochs / total("train_time_s"),
            "final_test_acc": records[-1]["test_acc"],
            "final_test_loss": records[-1]["test_loss"],
            "best_test_acc": max(r["test_acc"] for r in records),
            "time_to_target_s": time_to_target,
            "process_start_to_first_step_s": 3.0 + 0.2 * ws,
            "launch_to_first_step_s": None,
            "process_start_to_end_s": elapsed + 3.5,
            "peak_rss_bytes_max": 900_000_000,
            "peak_rss_bytes_total": 900_000_000 * ws,
            **steady_state(records),
            "compile_s": compile_s,
        },
        "ddp": {
            "buckets": 2,
            "bucket_bytes": [4_194_304, 397_352],
            "allreduce_payload_bytes_per_step": 4_591_656 if ws > 1 else 0,
            "ring_bytes_sent_per_rank_per_step": 4_591_656 * 2 * (ws - 1) / ws if ws > 1 else None,
        },
        "ranks": [
            {
                "rank": r,
                "hostname": hostname,
                "pid": 1000 + r,
                "peak_rss_bytes": 900_000_000,
                "pss_bytes": 600_000_000,
                "peak_gpu_mem_bytes": None,
            }
            for r in range(ws)
        ],
        "environment": {
            "python": "3.11.7",
            "torch": "2.5.0",
            "torchvision": "0.20.0",
            "backend": "gloo",
            "device": "cpu",
            "device_name": "Test CPU",
            "cpu_model": "Test CPU",
            "logical_cores": 8,
            "cores_available": 8,
            "threads_per_rank": threads,
            "hostname": hostname,
            "platform": "Linux",
            "git_commit": None,
            "hostnames": [hostname],
            **(
                {"timing_lock": {"path": "/tmp/ddpbench-timing.lock", "wait_s": lock_wait}}
                if lock_wait is not None
                else {}
            ),
        },
        # One after the other, as the workflow runs them: two minutes apart, one minute long.
        "timestamps": {
            "started_utc": _stamp(2 * (100 * ws + bs + seed) + 4000 * slot),
            "finished_utc": _stamp(2 * (100 * ws + bs + seed) + 4000 * slot + 1),
        },
    }


def write_grid(
    folder: Path, world_sizes, batch_sizes, seeds, skip=(), variants: dict | None = None, **run_kwargs
) -> tuple[list[Path], list[str]]:
    """Run JSONs for the grid except the (ws, bs, seed) in skip; returns (paths, expected run names).

    With ``variants`` ({name: make_run keyword arguments}), every variant's runs go to folder/<name>/,
    are named <name>/ws<W>_bs<B>_seed<S> in the expected names, and skip holds (name, ws, bs, seed)."""
    paths, expected = [], []
    for slot, (variant, kwargs) in enumerate((variants or {None: {}}).items()):
        where = folder / variant if variant else folder
        where.mkdir(parents=True, exist_ok=True)
        for bs in batch_sizes:
            for ws in world_sizes:
                for seed in seeds:
                    name = f"ws{ws}_bs{bs}_seed{seed}"
                    expected.append(f"{variant}/{name}" if variant else name)
                    if ((variant, ws, bs, seed) if variant else (ws, bs, seed)) in skip:
                        continue
                    run = make_run(ws, bs, seed, variant=variant, slot=slot, **run_kwargs, **kwargs)
                    path = where / f"{name}.json"
                    path.write_text(json.dumps(run))
                    paths.append(path)
    return paths, expected


COMM_SIZES = [8 * 4**k for k in range(12)] + [64 * 2**20]


def make_comm(
    world_size: int, alpha_s: float = 50e-6, bandwidth_bytes_s: float = 1e9, buckets=(4_194_304, 397_352)
) -> dict:
    """A ddpbench.commbench output whose timings follow the ring all-reduce exactly:
    T(n, W) = 2 (W - 1) alpha + 2 (W - 1) / W * n / B, for the sweep and for the given DDP buckets."""

    def point(nbytes: int) -> dict:
        seconds = 2 * (world_size - 1) * alpha_s + 2 * (world_size - 1) / world_size * nbytes / bandwidth_bytes_s
        return {"bytes": nbytes, "median_s": seconds, "min_s": seconds, "max_s": seconds, "reps": 5}

    return {
        "schema": "ddpbench.commbench/1",
        "created_utc": _stamp(0),
        "world_size": world_size,
        "backend": "gloo",
        "model": "simple_cnn",
        "environment": {"hostname": "node-a", "backend": "gloo", "device": "cpu", "world_size": world_size},
        "statistic": "median over repetitions of the slowest rank's time per all-reduce",
        "sweep": [point(n) for n in COMM_SIZES],
        "buckets": [point(n) for n in buckets],
    }


def write_comm(folder: Path, world_sizes, **kwargs) -> list[Path]:
    """make_comm's output for each world size, as the workflow names them (folder/ws<W>.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ws in world_sizes:
        path = folder / f"ws{ws}.json"
        path.write_text(json.dumps(make_comm(ws, **kwargs)))
        paths.append(path)
    return paths
