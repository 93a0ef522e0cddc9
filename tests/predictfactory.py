"""Synthetic inputs for the scaling model's tests: all-reduce timings that follow the ring formula,
commbench outputs and run dicts generated from the step model itself (the fields the model reads)."""

from __future__ import annotations

import numpy as np
from runfactory import COMM_SIZES

from ddpbench import allreduce

SWEEP = COMM_SIZES  # the message sizes commbench sweeps, 8 B to 64 MiB


def synthetic_times(
    alpha: float,
    bandwidth: float,
    world: int,
    noise: float = 0.0,
    seed: int = 0,
    algorithm: str = "ring",
    constant: float = 0.0,
) -> list[float]:
    rng = np.random.default_rng(seed)
    exact = np.array([allreduce.allreduce_seconds(n, world, alpha, bandwidth, algorithm, constant) for n in SWEEP])
    return list(exact * (1 + rng.uniform(-noise, noise, size=exact.size)))


def synthetic_run(world: int, alpha: float = 40e-6, bandwidth: float = 1e9, slower: float = 1.0) -> dict:
    """Two epochs of 10 steps, generated from the step model itself: compute 0.05 s and data 0.005 s
    per step at batch 32 per rank, 0.001 s of loop overhead, 40 % of the all-reduce hidden."""
    busy = sum(allreduce.allreduce_seconds(b, world, alpha, bandwidth) for b in BUCKETS)
    compute, data, other, exposed = 0.05 * slower, 0.005, 0.001, 0.6 * busy
    steps = 20
    train = steps * (compute + data + other + exposed)
    totals = {
        "train_time_s": train,
        "data_time_s": steps * data,
        "step_time_s": steps * (compute + exposed),
        "compute_time_s": steps * compute,
        "comm_time_s": steps * busy if world > 1 else 0.0,
        "comm_exposed_time_s": steps * exposed if world > 1 else 0.0,
        "images": steps * 32 * world,
    }
    return {
        "config": {
            "world_size": world,
            "per_rank_batch_size": 32,
            "threads_per_worker": 1,
            "batch_size_mode": "per_worker",
            "batch_size": 32,
        },
        "model": {"parameters": 1_000_000},
        "dataset": {"train_samples_used": 10 * 32 * world},
        "totals": totals,
        "epochs": [{"steps": 10}, {"steps": 10}],
    }


BUCKETS = [3e6, 1e6]
# A study's config with a prediction to 1,024 workers over two named networks (fewer bootstrap
# replicates than the default: the tests check the intervals, not their precision).
PREDICT_CONFIG = {
    "train": {"epochs": 3},
    "predict": {
        "max_world_size": 1024,
        "bootstrap": 50,
        "networks": {
            "10GbE": {"bandwidth_gbit": 10, "latency_us": 50},
            "1GbE": {"bandwidth_gbit": 1, "latency_us": 50},
        },
    },
}


def comm_doc(world: int, alpha: float = 40e-6, bandwidth: float = 1e9) -> dict:
    times = synthetic_times(alpha, bandwidth, world)
    return {
        "world_size": world,
        "sweep": [{"bytes": n, "median_s": t} for n, t in zip(SWEEP, times, strict=True)],
        "buckets": [{"bytes": b, "median_s": allreduce.allreduce_seconds(b, world, alpha, bandwidth)} for b in BUCKETS],
    }
