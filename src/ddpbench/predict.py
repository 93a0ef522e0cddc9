"""Predict DDP scaling beyond this machine: a latency-bandwidth model of the gradient all-reduce,
fitted to ``ddpbench.commbench``'s measurements, and a step model built from measured runs.

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
computing at once. Pure functions
(numpy, scipy, pandas): no torch import, so the workflow's report step stays light.

    python -m ddpbench.predict --runs results/runs/*.json --comm comm_ws2.json \
        --out prediction.json [--csv prediction.csv] [--networks JSON] [--max-world-size 1024]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from scipy.integrate import quad
from scipy.optimize import least_squares, nnls
from scipy.stats import norm

from ddpbench.io import atomic_write_json, atomic_write_text

BATCH_MODES = ("per_worker", "global")
MEASURED_NETWORK = "measured"
DEFAULT_NETWORKS: dict[str, dict[str, float]] = {
    "10GbE": {"bandwidth_gbit": 10.0, "latency_us": 50.0},
    "100G_InfiniBand": {"bandwidth_gbit": 100.0, "latency_us": 2.0},
}  # as the config schema's predict.networks default
# prediction.csv's columns: the keys of a predicted row, in order.
PREDICTION_COLUMNS = [
    "runs_batch_mode",
    "batch_size",
    "network",
    "world_size",
    "batch_mode",
    "per_rank_batch",
    "step_time_s",
    "compute_s",
    "data_s",
    "other_s",
    "comm_busy_s",
    "comm_exposed_s",
    "rank_wait_s",
    "throughput_samples_s",
    "speedup",
    "efficiency",
]
CURVE_KEYS = ("step_time_s", "throughput_samples_s", "speedup", "efficiency")
DEFAULT_MAX_WORLD_SIZE = 1024
ROBUST_SCALE = 0.05  # relative residuals beyond this count linearly, not squared

# T = a(W) * alpha + b(W) * n / B for an all-reduce of n bytes over W ranks.
ALGORITHMS = {
    "ring": (
        lambda w: 2.0 * (w - 1),
        lambda w: 2.0 * (w - 1) / w,
        "T(n, W) = 2 (W - 1) alpha + 2 (W - 1) / W * n / B  (ring: reduce-scatter, then all-gather)",
    ),
}

ASSUMPTIONS = (
    "Each added worker brings its own cores or GPU: a worker computes as one rank did in the measured "
    "run used as reference (the largest world size fitted), at its threads per rank.",
    "Compute and data time per sample do not depend on the world size, apart from the ranks sharing a node "
    "(below); in the global batch mode they scale linearly with the per-rank batch (global batch / W), fixed "
    "per-step costs included.",
    "The all-reduce is a ring, one collective per DDP gradient bucket, one after another.",
    "A flat network: every pair of workers is joined at the same bandwidth and latency, with no contention.",
    "On a named network the per-step latency is the latency measured here plus the network's, and the "
    "bandwidth the lower of the one measured here (the host's all-reduce throughput) and the network's.",
    "The fraction of communication hidden behind the backward pass is the one measured in the runs, and never "
    "more than the compute time of a step.",
    "Each step waits at the all-reduce for the slowest rank. The ranks' step times vary independently and "
    "normally, so the wait grows as the expected maximum of W standard normals (0.56 at W = 2, 3.2 at 1024), "
    "in proportion to the compute per step; its scale is the reference run's exposed communication beyond "
    "what the fitted all-reduce explains or, where that cannot be told (one rank, or across nodes), the wait "
    "commbench measured among ranks computing at once.",
    "A node holds as many ranks as the most commbench timed on one node. A rank computes as much slower, with "
    "its node's other ranks computing too, as commbench measured for that many ranks (shared memory "
    "bandwidth, caches, clocks; linear between the numbers timed); the reference run's compute already "
    "includes its own share. commbench times one batch (the launch size's per-rank batch of the grid's first "
    "batch size); its slowdown and its wait, as a fraction of the step, apply to every batch.",
)


@dataclass(frozen=True)
class CollectiveFit:
    """A fitted all-reduce cost model: per-step latency ``alpha_s``, bandwidth ``bandwidth_bytes_s``."""

    algorithm: str
    alpha_s: float
    bandwidth_bytes_s: float
    formula: str
    median_rel_error: float
    max_rel_error: float
    points: int
    world_sizes: tuple[int, ...]

    def seconds(self, nbytes: float, world_size: int) -> float:
        return allreduce_seconds(nbytes, world_size, self.alpha_s, self.bandwidth_bytes_s, self.algorithm)

    def to_dict(self) -> dict:
        return {**asdict(self), "world_sizes": list(self.world_sizes), "bandwidth_gbit": self.bandwidth_bytes_s * 8e-9}


def allreduce_seconds(
    nbytes: float, world_size: int, alpha_s: float, bandwidth_bytes_s: float, algorithm: str = "ring"
) -> float:
    """Time of one all-reduce of ``nbytes`` over ``world_size`` ranks; zero at W = 1 (no collective)."""
    if world_size <= 1:
        return 0.0
    latency_coef, bytes_coef, _ = _algorithm(algorithm)
    return latency_coef(world_size) * alpha_s + bytes_coef(world_size) * nbytes / bandwidth_bytes_s


def _algorithm(name: str) -> tuple[Callable[[float], float], Callable[[float], float], str]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown all-reduce algorithm {name!r}; use one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def fit_collective(
    sizes_bytes: Sequence[float], seconds: Sequence[float], world_size: int | Sequence[int], algorithm: str = "ring"
) -> CollectiveFit:
    """Fit alpha and B of ``algorithm``'s formula (ring: T = 2 (W-1) alpha + 2 (W-1)/W n / B) to
    measured all-reduce times, minimising the relative error so the large messages do not swamp
    the small ones, with a robust (soft L1) loss; alpha and 1/B are kept non-negative.
    ``world_size`` is one int or one per point; points at W = 1 (no collective) are dropped."""
    latency_coef, bytes_coef, formula = _algorithm(algorithm)
    n = np.asarray(sizes_bytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    w = np.broadcast_to(np.asarray(world_size, dtype=float), n.shape)
    if not (n.shape == t.shape and n.ndim == 1):
        raise ValueError(f"sizes ({n.shape}) and seconds ({t.shape}) must be equal-length lists")
    keep = w > 1
    if keep.sum() < 2:
        raise ValueError(
            "need at least two all-reduce timings at world size 2 or more to fit a latency and a "
            "bandwidth (at W = 1 there is no collective); run ddpbench.commbench with 2+ ranks"
        )
    if np.any(t[keep] <= 0):
        raise ValueError("all-reduce times must be positive seconds")
    n, t, w = n[keep], t[keep], w[keep]
    design = np.column_stack([latency_coef(w), bytes_coef(w) * n]) / t[:, None]
    start, _ = nnls(design, np.ones_like(t))  # plain relative least squares: the starting point
    if start[1] <= 0:
        raise ValueError(
            "the timings do not grow with the message size, so no bandwidth can be fitted; "
            "include messages of a MiB or more in the sweep"
        )
    # Soft-L1 loss: a few sizes off the line (a token bucket's burst, a busy neighbour) do not bias the fit.
    robust = least_squares(
        lambda x: design @ x - 1.0,
        start,
        bounds=([0.0, 0.0], [np.inf, np.inf]),
        loss="soft_l1",
        f_scale=ROBUST_SCALE,
        x_scale="jac",
    )
    alpha, inv_bw = robust.x
    rel = np.abs(design @ np.array([alpha, inv_bw]) - 1.0)
    return CollectiveFit(
        algorithm,
        float(alpha),
        float(1.0 / inv_bw),
        formula,
        float(np.median(rel)),
        float(rel.max()),
        int(n.size),
        tuple(sorted({int(x) for x in w})),
    )


def network_fit(measured: CollectiveFit, bandwidth_gbit: float, latency_us: float) -> CollectiveFit:
    """The collective on a named network: latency measured here plus the network's; the lower bandwidth."""
    if bandwidth_gbit <= 0 or latency_us < 0:
        raise ValueError(f"a network needs bandwidth_gbit > 0 and latency_us >= 0, got {bandwidth_gbit}, {latency_us}")
    return replace(
        measured,
        alpha_s=measured.alpha_s + latency_us * 1e-6,
        bandwidth_bytes_s=min(measured.bandwidth_bytes_s, bandwidth_gbit * 1e9 / 8),
    )


@dataclass(frozen=True)
class Colocation:
    """A rank's compute with its node's other ranks computing at once (ddpbench.commbench's step
    timing), per number n of ranks computing on one node: (n, slowdown against one rank alone, mean
    wait for the slowest rank as a fraction of the step)."""

    measured: tuple[tuple[int, float, float], ...] = ()

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
        return cls(
            tuple(
                (n, float(c["slowdown"]), float(c["rank_wait_s"]) / float(c["together_median_s"]))
                for n, c in sorted(by_ranks.items())
                if n >= 2
            )
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


@cache
def expected_max_normal(n: int) -> float:
    """E[max of n independent standard normals]: 0 for one, 1 / sqrt(pi) for two, about 3.2 for 1024."""
    if n <= 1:
        return 0.0
    density = lambda x: x * n * norm.pdf(x) * norm.cdf(x) ** (n - 1)  # noqa: E731
    return float(quad(density, -np.inf, np.inf)[0])


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
    the wait is the ``colocation`` timing's, as a fraction of the compute there; without one, 0."""
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
    # The residual only where the all-reduce was timed at the reference's size.
    if collective is not None and ref.world_size in collective.world_sizes and ref.comm_exposed_s is not None:
        _, exposed = communication(collective, bucket_bytes, ref.world_size, hidden, ref.compute_s)
        return replace(profile, wait_s=max(0.0, ref.comm_exposed_s - exposed))
    timed = colocation.wait()
    if timed is not None:
        ranks, fraction = timed
        return replace(profile, wait_s=fraction * profile.compute_at(ranks), wait_world_size=ranks)
    return profile


# --------------------------------------------------------------------------- validation


def comm_points(comm_docs: Iterable[Mapping]) -> tuple[list[float], list[float], list[int]]:
    """(bytes, median seconds, world size) of every timing in ``ddpbench.commbench`` outputs:
    the size sweep and the buckets alike."""
    sizes, seconds, worlds = [], [], []
    for doc in comm_docs:
        for point in [*doc.get("sweep", []), *doc.get("buckets", [])]:
            sizes.append(float(point["bytes"]))
            seconds.append(float(point["median_s"]))
            worlds.append(int(doc["world_size"]))
    return sizes, seconds, worlds


def comm_sizes_kept(points: tuple[list[float], list[float], list[int]], kept: Iterable[int]) -> set[int]:
    """The commbench world sizes a validation case may use: those of the kept runs above 1, else all
    (with only W = 1 kept, the timings at the held-out size are the only ones there are)."""
    timed = set(points[2])
    return timed & {w for w in kept if w > 1} or timed


def _fit_on(points: tuple[list[float], list[float], list[int]], world_sizes: set[int], algorithm: str) -> CollectiveFit:
    """Fit on the comm timings at ``world_sizes``."""
    sizes, seconds, worlds = points
    chosen = [i for i, w in enumerate(worlds) if w in world_sizes]
    return fit_collective(
        [sizes[i] for i in chosen], [seconds[i] for i in chosen], [worlds[i] for i in chosen], algorithm
    )


def validate(
    measured: Mapping[int, Measured],
    points: tuple[list[float], list[float], list[int]],
    bucket_bytes: Sequence[float],
    batch_mode: str,
    batch_size: int,
    algorithm: str = "ring",
    comm_docs: Sequence[Mapping] = (),
) -> list[dict]:
    """Predict a measured world size from the others, as the model would predict an unmeasured one.

    With two measured sizes the largest is predicted from the smaller; with more, each is left out
    in turn. The communication model and the ranks' co-location are taken from the commbench
    timings of the world sizes kept (all of them when none of those is above 1). Speedup needs the
    measured W = 1 among the kept sizes.
    Each case names the threads per rank of the reference run and of the held-out one: where they
    differ (the cores shared among the ranks), the error includes the change of threads."""
    sizes = sorted(measured)
    if len(sizes) < 2:
        return []
    held_out = sizes if len(sizes) > 2 else [sizes[-1]]
    cases = []
    for held in held_out:
        kept = {w: m for w, m in measured.items() if w != held}
        comm_sizes = comm_sizes_kept(points, kept)
        collective = _fit_on(points, comm_sizes, algorithm)
        baseline = kept[1].throughput_samples_s if 1 in kept else None
        profile = profile_from(kept, bucket_bytes, collective, Colocation.from_comm(comm_docs, comm_sizes))
        pred = predict_step(profile, held, bucket_bytes, collective, batch_mode, batch_size, baseline)
        actual = measured[held]
        speedup = actual.throughput_samples_s / baseline if baseline else None
        cases.append(
            {
                "held_out": held,
                "fit_world_sizes": sorted(kept),
                "comm_world_sizes": list(collective.world_sizes),
                # The model carries a rank's compute over at its threads (changed only by the ranks sharing a
                # node): only fair when the threads per rank are the same.
                "fit_threads_per_worker": profile.threads_per_worker,
                # How much slower (or faster) a rank computes with the held-out size's ranks on its node.
                "compute_slowdown": profile.compute_factor(held),
                "held_out_threads_per_worker": actual.threads_per_worker,
                "measured_step_time_s": actual.period_s,
                "predicted_step_time_s": pred["step_time_s"],
                "step_time_rel_error": pred["step_time_s"] / actual.period_s - 1.0,
                "measured_speedup": speedup,
                "predicted_speedup": pred["speedup"],
                "speedup_rel_error": pred["speedup"] / speedup - 1.0 if speedup and pred["speedup"] else None,
            }
        )
    return cases


# --------------------------------------------------------------------------- the whole prediction


def parse_networks(networks: Mapping[str, Mapping[str, float]] | None) -> dict[str, tuple[float, float]]:
    """``{name: {bandwidth_gbit, latency_us}}`` -> {name: (Gbit/s, microseconds)}; None gives the defaults."""
    networks = DEFAULT_NETWORKS if networks is None else networks
    parsed = {}
    for name, spec in networks.items():
        if name == MEASURED_NETWORK:
            raise ValueError(f"network name {name!r} is reserved for the network measured here; rename it")
        keys_ok = (
            isinstance(spec, Mapping) and "bandwidth_gbit" in spec and set(spec) <= {"bandwidth_gbit", "latency_us"}
        )
        if not keys_ok:
            raise ValueError(f"network {name!r}: {spec!r}; write it as {{bandwidth_gbit: 10, latency_us: 50}}")
        parsed[name] = (float(spec["bandwidth_gbit"]), float(spec.get("latency_us", 0.0)))
    return parsed


def gradient_buckets(comm_docs: Sequence[Mapping], runs: Sequence[Mapping]) -> list[float]:
    """DDP's bucket sizes in bytes: as the runs recorded them (``ddp.bucket_bytes``), else as
    commbench found them, else all gradients (float32) as one message."""
    for run in runs:
        if run.get("ddp", {}).get("bucket_bytes"):
            return [float(b) for b in run["ddp"]["bucket_bytes"]]
    for doc in comm_docs:
        if doc.get("buckets"):
            return [float(b["bytes"]) for b in doc["buckets"]]
    return [4.0 * runs[0]["model"]["parameters"]]


def predict_from_runs(
    runs: Sequence[Mapping],
    comm_docs: Sequence[Mapping],
    networks: Mapping[str, Mapping[str, float]] | None = None,
    max_world_size: int = DEFAULT_MAX_WORLD_SIZE,
    algorithm: str = "ring",
) -> dict:
    """The prediction for ``summary.json``: per batch configuration of the runs, network and batch
    mode, the predicted rows; the fitted collective; the validation; the assumptions."""
    if not runs or not comm_docs:
        raise ValueError("a prediction needs measured runs and at least one ddpbench.commbench output")
    points = comm_points(comm_docs)
    measured_fit = fit_collective(*points, algorithm=algorithm)
    fits = {MEASURED_NETWORK: measured_fit}
    specs = {
        MEASURED_NETWORK: {
            "bandwidth_gbit": measured_fit.bandwidth_bytes_s * 8e-9,
            "latency_us": measured_fit.alpha_s * 1e6,
        }
    }
    for name, (gbit, latency) in parse_networks(networks).items():
        fits[name] = network_fit(measured_fit, gbit, latency)
        specs[name] = {"bandwidth_gbit": gbit, "latency_us": latency}
    for name, fit in fits.items():
        specs[name].update(alpha_s=fit.alpha_s, bandwidth_bytes_s=fit.bandwidth_bytes_s)
    buckets = gradient_buckets(comm_docs, runs)
    groups: dict[tuple[str, int], list[Mapping]] = {}
    for run in runs:
        groups.setdefault((run["config"]["batch_size_mode"], run["config"]["batch_size"]), []).append(run)
    rows, validation, profiles = [], [], []
    for (mode, batch), group in sorted(groups.items()):
        measured = measure(group)
        profile = profile_from(measured, buckets, measured_fit, Colocation.from_comm(comm_docs))
        baseline = measured[1].throughput_samples_s if 1 in measured else None
        tag = {"runs_batch_mode": mode, "batch_size": batch}
        profiles.append({**tag, **asdict(profile)})
        for row in predict_curves(profile, buckets, fits, batch, baseline, max_world_size):
            rows.append({**tag, **row})
        cases = validate(measured, points, buckets, mode, batch, algorithm, comm_docs)
        validation += [{**tag, **case} for case in cases]
    return {
        "algorithm": algorithm,
        "formula": measured_fit.formula,
        "assumptions": list(ASSUMPTIONS),
        "collective": measured_fit.to_dict(),
        "networks": specs,
        "bucket_bytes": buckets,
        "max_world_size": max_world_size,
        "profiles": profiles,
        "rows": rows,
        "curves": curves(rows),
        "validation": validation,
    }


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
                **{name: [] for name in CURVE_KEYS},
            },
        )
        curve["world_sizes"].append(row["world_size"])
        for name in CURVE_KEYS:
            curve[name].append(row[name])
    return list(grouped.values())


def prediction_csv(prediction: Mapping | None) -> str:
    """``prediction["rows"]`` as CSV, one row per (batch configuration, network, batch mode, world size);
    only the header without a prediction (None)."""
    import pandas as pd

    rows = (prediction or {}).get("rows") or []
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS).to_csv(index=False, float_format="%.6g")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ddpbench.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="run JSON files (results/runs/*.json)")
    p.add_argument("--comm", nargs="+", type=Path, required=True, help="ddpbench.commbench outputs")
    p.add_argument("--out", type=Path, required=True, help="prediction JSON to write")
    p.add_argument("--csv", type=Path, help="also write the predicted rows as CSV here")
    p.add_argument(
        "--networks",
        type=json.loads,
        default=None,
        help='JSON, e.g. \'{"10GbE": {"bandwidth_gbit": 10, "latency_us": 50}}\' (default: 10GbE, 100G_InfiniBand)',
    )
    p.add_argument("--max-world-size", type=int, default=DEFAULT_MAX_WORLD_SIZE)
    args = p.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    comm = [json.loads(path.read_text()) for path in args.comm]
    try:
        prediction = predict_from_runs(runs, comm, args.networks, args.max_world_size)
    except ValueError as exc:
        p.exit(2, f"ddpbench.predict: {exc}\n")
    atomic_write_json(args.out, prediction)
    if args.csv:
        atomic_write_text(args.csv, prediction_csv(prediction))


if __name__ == "__main__":
    main()
