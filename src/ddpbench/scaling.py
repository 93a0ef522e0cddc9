"""The step model: a DDP training step at any world size, built from measured runs and the fitted
all-reduce (``ddpbench.allreduce``).

A training step at world size W is modelled as

    step(W) = data(W) + compute(W) + other + wait(W) + exposed(W)
    compute(W) = compute(W_ref) * s(ranks on a node at W) / s(ranks on a node at W_ref)
    exposed(W) = busy(W) - min(hidden_fraction * busy(W), compute(W))
    busy(W) = sum over DDP's gradient buckets of T_allreduce(bucket bytes, W)
    wait(W) = wait(W_w) * e(W) / e(W_w),  e(W) = E[max of W standard normals]

with compute and data per step measured per rank at its batch, ``other`` the rest of the loop
per step, the hidden fraction (1 - exposed / busy) measured in the runs, s(n) how much slower a
rank computes with n ranks computing at once on its node (commbench's step timing, 1 alone), and
wait the time a rank waits at the all-reduce for the slowest one, growing with W as the slowest
of W ranks whose step times vary independently. Its scale, at W_w: the reference run's exposed
communication beyond what the fitted all-reduce explains or, where the runs cannot tell it (one
rank, which waits for nobody, or across nodes), the wait commbench measured among ranks
computing at once. Pure functions (numpy, scipy): no torch import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ddpbench.allreduce import CollectiveFit
from ddpbench.stats import expected_max_normal

BATCH_MODES = ("per_worker", "global")
CURVE_KEYS = ("step_time_s", "throughput_samples_s", "speedup", "efficiency")
BAND_KEYS = ("step_time_s", "speedup", "efficiency")  # the predicted values that carry a bootstrap interval
EXTRAPOLATION_FACTOR = 8  # beyond this many times the largest measured world size: extrapolated
FLAG_KEYS = ("extrapolated", "global_batch_exceeds_train_set")  # where a predicted point was never checked
DEFAULT_MAX_WORLD_SIZE = 1024


@dataclass(frozen=True)
class Colocation:
    """A rank's compute with its node's other ranks computing at once (ddpbench.commbench's step
    timing), per number n of ranks computing on one node: (n, slowdown against one rank alone, mean
    wait for the slowest rank as a fraction of the step)."""

    measured: tuple[tuple[int, float, float], ...] = ()
    # Timings where the ranks computed faster together than one alone: (n, slowdown). Implausible
    # where they share a node's cores, memory and clocks, so never used: 1 is assumed instead.
    implausible: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_comm(cls, comm_docs: Iterable[Mapping], world_sizes: set[int] | None = None) -> Colocation:
        """From commbench outputs (only those at ``world_sizes``, where given)."""
        found = {
            int(doc["world_size"]): doc["compute"]
            for doc in comm_docs
            if (doc.get("compute") or {}).get("slowdown") and doc["compute"]["together_median_s"] > 0
        }
        chosen = {w: c for w, c in found.items() if world_sizes is None or w in world_sizes}
        by_ranks = {int(c.get("ranks_per_node", w)): c for w, c in chosen.items()}
        timed = [
            (n, float(c["slowdown"]), float(c["rank_wait_s"]) / float(c["together_median_s"]))
            for n, c in sorted(by_ranks.items())
            if n >= 2
        ]
        return cls(
            tuple((n, max(1.0, slowdown), wait) for n, slowdown, wait in timed),
            tuple((n, slowdown) for n, slowdown, _ in timed if slowdown < 1.0),
        )

    def node_ranks(self, world_size: int) -> int:
        """Ranks computing on one node at ``world_size``: at most the largest number timed on one."""
        return min(world_size, max((n for n, _, _ in self.measured), default=1))

    def slowdown(self, world_size: int) -> float:
        """s(n) for the node's ranks at ``world_size``: 1 alone, linear between the numbers timed."""
        sizes = [1, *(n for n, _, _ in self.measured)]
        factors = [1.0, *(s for _, s, _ in self.measured)]
        return float(np.interp(self.node_ranks(world_size), sizes, factors))

    def wait(self) -> tuple[int, float] | None:
        """(n, wait fraction) at the most ranks timed, or None without a timing."""
        return (self.measured[-1][0], self.measured[-1][2]) if self.measured else None


@dataclass(frozen=True)
class StepProfile:
    """Seconds per step of one rank at ``per_rank_batch``: the reference worker, measured at ``world_size``
    with ``threads_per_worker``; ``wait_s`` per step for the slowest rank at ``wait_world_size`` (the
    reference's own unless taken from commbench), and how its compute changes with ``colocation``."""

    world_size: int
    per_rank_batch: int
    compute_s: float
    data_s: float
    other_s: float
    hidden_fraction: float
    wait_s: float = 0.0
    threads_per_worker: int | None = None
    wait_world_size: int | None = None
    colocation: Colocation = Colocation()

    def wait_at(self, world_size: int, scale: float = 1.0) -> float:
        """The wait for the slowest of ``world_size`` ranks, at ``scale`` times the reference's batch: in
        proportion to the compute there."""
        at = self.wait_world_size or self.world_size
        if at <= 1 or world_size <= 1:
            return 0.0
        compute = scale * self.compute_factor(world_size) / self.compute_factor(at)
        return self.wait_s * compute * expected_max_normal(world_size) / expected_max_normal(at)

    def compute_factor(self, world_size: int) -> float:
        """A rank's compute at ``world_size`` against the reference's: its node's ranks changed."""
        return self.colocation.slowdown(world_size) / self.colocation.slowdown(self.world_size)

    def compute_at(self, world_size: int, scale: float = 1.0) -> float:
        """A rank's compute at ``world_size``, ``scale`` times the reference's batch."""
        return self.compute_s * scale * self.compute_factor(world_size)


def predict_step(
    profile: StepProfile,
    world_size: int,
    bucket_bytes: Sequence[float],
    collective: CollectiveFit,
    batch_mode: str,
    batch_size: int,
    baseline_throughput: float | None = None,
) -> dict:
    """Predicted step at ``world_size``: per_worker keeps ``batch_size`` per rank, global splits it
    over the ranks (compute and data scaling with the per-rank batch). Throughput in samples/s;
    speedup and efficiency against ``baseline_throughput`` (the measured W = 1) when given."""
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode {batch_mode!r}: use one of {BATCH_MODES}")
    per_rank = batch_size if batch_mode == "per_worker" else batch_size / world_size
    scale = per_rank / profile.per_rank_batch
    compute, data = profile.compute_at(world_size, scale), profile.data_s * scale
    busy, exposed = communication(collective, bucket_bytes, world_size, profile.hidden_fraction, compute)
    wait = profile.wait_at(world_size, scale)
    step = data + compute + profile.other_s + wait + exposed
    throughput = world_size * per_rank / step
    speedup = throughput / baseline_throughput if baseline_throughput else None
    return {
        "world_size": world_size,
        "batch_mode": batch_mode,
        "batch_size": batch_size,
        "per_rank_batch": per_rank,
        "step_time_s": step,
        "compute_s": compute,
        "data_s": data,
        "other_s": profile.other_s,
        "comm_busy_s": busy,
        "comm_exposed_s": exposed,
        "rank_wait_s": wait,
        "throughput_samples_s": throughput,
        "speedup": speedup,
        "efficiency": speedup / world_size if speedup is not None else None,
    }


def communication(
    collective: CollectiveFit, bucket_bytes: Sequence[float], world_size: int, hidden: float, compute_s: float
) -> tuple[float, float]:
    """(busy, exposed) seconds a step: the all-reduce of every bucket, less the ``hidden`` share, never
    more than the step's compute."""
    busy = sum(collective.seconds(b, world_size) for b in bucket_bytes)
    return busy, busy - min(hidden * busy, compute_s)


def world_sizes_up_to(max_world_size: int) -> list[int]:
    """1, 2, 4, ... up to ``max_world_size``."""
    if max_world_size < 1:
        raise ValueError(f"max_world_size must be at least 1, got {max_world_size}")
    return [2**k for k in range(int(math.log2(max_world_size)) + 1)]


def predict_curves(
    profile: StepProfile,
    bucket_bytes: Sequence[float],
    networks: Mapping[str, CollectiveFit],
    batch_size: int,
    baseline_throughput: float | None,
    max_world_size: int = DEFAULT_MAX_WORLD_SIZE,
) -> list[dict]:
    """One row per (network, batch mode, world size); the global mode stops where a rank would get
    less than one sample (W > batch_size)."""
    rows = []
    for name, collective in networks.items():
        for mode in BATCH_MODES:
            for w in world_sizes_up_to(max_world_size):
                if mode == "global" and w > batch_size:
                    break
                row = predict_step(profile, w, bucket_bytes, collective, mode, batch_size, baseline_throughput)
                rows.append({"network": name, **row})
    return rows


def curves(rows: Iterable[Mapping]) -> list[dict]:
    """The predicted rows as one curve per (batch configuration, network, batch mode): its world sizes
    and, in the same order, the predicted step time, throughput, speedup and efficiency."""
    grouped: dict[tuple, dict] = {}
    for row in rows:
        key = (row["runs_batch_mode"], row["batch_size"], row["network"], row["batch_mode"])
        curve = grouped.setdefault(
            key,
            {
                "runs_batch_mode": key[0],
                "batch_size": key[1],
                "network": key[2],
                "batch_mode": key[3],
                "world_sizes": [],
                **{name: [] for name in (*CURVE_KEYS, *FLAG_KEYS)},
                **{f"{name}_ci95_{end}": [] for name in BAND_KEYS for end in ("low", "high")},
            },
        )
        curve["world_sizes"].append(row["world_size"])
        for name in FLAG_KEYS:
            curve[name].append(bool(row.get(name, False)))
        for name in CURVE_KEYS:
            curve[name].append(row[name])
        for name in BAND_KEYS:
            for end in ("low", "high"):
                curve[f"{name}_ci95_{end}"].append(row.get(f"{name}_ci95_{end}"))
    return list(grouped.values())


# --------------------------------------------------------------------------- measured runs


@dataclass(frozen=True)
class Measured:
    """Per-step seconds of the runs at one world size (seeds pooled), for one batch configuration."""

    world_size: int
    per_rank_batch: int
    threads_per_worker: int
    period_s: float  # the whole iteration: train_time_s / steps
    compute_s: float
    data_s: float
    other_s: float
    comm_busy_s: float | None
    comm_exposed_s: float | None
    throughput_samples_s: float


def measure(runs: Iterable[Mapping]) -> dict[int, Measured]:
    """Pool runs (dicts of ``run.schema.json``) of one batch configuration by world size: totals
    over seeds divided by their steps. ``compute_time_s`` null (CUDA) counts all step time as compute."""
    pooled: dict[int, list[Mapping]] = {}
    for run in runs:
        pooled.setdefault(run["config"]["world_size"], []).append(run)
    return {w: _pool(group) for w, group in sorted(pooled.items())}


def _pool(runs: list[Mapping]) -> Measured:
    def total(key: str) -> float | None:
        values = [r["totals"][key] for r in runs]
        return None if any(v is None for v in values) else float(sum(values))

    steps = sum(e["steps"] for r in runs for e in r["epochs"])
    train, data, step = total("train_time_s"), total("data_time_s"), total("step_time_s")
    busy, exposed = total("comm_time_s"), total("comm_exposed_time_s")
    compute = total("compute_time_s")
    if compute is None:
        compute = step - (exposed or 0.0)
    config = runs[0]["config"]
    return Measured(
        config["world_size"],
        config["per_rank_batch_size"],
        config["threads_per_worker"],
        train / steps,
        compute / steps,
        data / steps,
        max(0.0, train - data - step) / steps,
        None if busy is None else busy / steps,
        None if exposed is None else exposed / steps,
        total("images") / train,
    )


def hidden_fraction(measured: Iterable[Measured]) -> float:
    """1 - exposed / busy over the runs with timed communication (busy-weighted); 0 without any."""
    timed = [m for m in measured if m.world_size > 1 and m.comm_busy_s and m.comm_exposed_s is not None]
    busy = sum(m.comm_busy_s for m in timed)
    if busy <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - sum(m.comm_exposed_s for m in timed) / busy))


def profile_from(
    measured: Mapping[int, Measured],
    bucket_bytes: Sequence[float] = (),
    collective: CollectiveFit | None = None,
    colocation: Colocation = Colocation(),
) -> StepProfile:
    """The reference worker: the largest world size's per-rank compute, data and loop overhead, with
    the hidden fraction of all timed runs; with the fitted ``collective``, also the wait for the
    slowest rank: the reference's exposed communication beyond what the all-reduce of
    ``bucket_bytes`` costs by the fit. Where that cannot be told (a one-rank reference waits for
    nobody; across nodes the remainder is the interconnect's, which the named networks add anyway),
    the wait is the ``colocation`` timing's, as a fraction of the compute there; without one, 0.
    Where the runs did not time their communication (CUDA), their compute holds the exposed
    all-reduce: the fitted cost of the buckets (less the hidden share) is taken out of it."""
    if not measured:
        raise ValueError("no measured runs to build a step profile from")
    ref = measured[max(measured)]
    hidden = hidden_fraction(measured.values())
    profile = StepProfile(
        ref.world_size,
        ref.per_rank_batch,
        ref.compute_s,
        ref.data_s,
        ref.other_s,
        hidden,
        threads_per_worker=ref.threads_per_worker,
        colocation=colocation,
    )
    if ref.comm_exposed_s is None and ref.world_size > 1 and collective is not None:
        # Communication untimed (CUDA): the step's compute holds the exposed all-reduce, which the model adds.
        busy = sum(collective.seconds(b, ref.world_size) for b in bucket_bytes)
        profile = replace(profile, compute_s=max(0.0, ref.compute_s - busy * (1.0 - hidden)))
    # The residual only where the all-reduce was timed at the reference's size.
    if collective is not None and ref.world_size in collective.world_sizes and ref.comm_exposed_s is not None:
        _, exposed = communication(collective, bucket_bytes, ref.world_size, hidden, ref.compute_s)
        return replace(profile, wait_s=max(0.0, ref.comm_exposed_s - exposed))
    timed = colocation.wait()
    if timed is not None:
        ranks, fraction = timed
        return replace(profile, wait_s=fraction * profile.compute_at(ranks), wait_world_size=ranks)
    return profile
