"""The all-reduce's cost: a latency-bandwidth model of one all-reduce of n bytes over W ranks, fitted
to ``ddpbench.commbench``'s timings, with a bootstrap of the fit, a choice between algorithms by
how well each fits, and the same collective on a named network.

T(n, W) = c + a(W) alpha + b(W) n / B, for the algorithms of ALGORITHMS: c is a per-call constant
(launching the collective, the hook, a synchronisation), alpha the latency of one of the
algorithm's steps, B the bandwidth. c and alpha can be told apart only by timings at two or more
world sizes; with one, c is 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

ROBUST_SCALE = 0.05  # relative residuals beyond this count linearly, not squared
# "auto" keeps the ring unless another algorithm's robust cost is below this share of the ring's.
CLEARLY_BETTER = 0.8
BOOTSTRAP_CONFIDENCE = 0.95

# T = c + a(W) * alpha + b(W) * n / B for an all-reduce of n bytes over W ranks.
ALGORITHMS = {
    "ring": (
        lambda w: 2.0 * (w - 1),
        lambda w: 2.0 * (w - 1) / w,
        "T(n, W) = c + 2 (W - 1) alpha + 2 (W - 1) / W * n / B  (ring: reduce-scatter, then all-gather)",
    ),
    "halving_doubling": (
        lambda w: 2.0 * np.log2(w),
        lambda w: 2.0 * (w - 1) / w,
        "T(n, W) = c + 2 log2(W) alpha + 2 (W - 1) / W * n / B  (recursive halving reduce-scatter, "
        "recursive doubling all-gather)",
    ),
    "tree": (
        lambda w: 2.0 * np.log2(w),
        lambda w: 2.0 * np.log2(w),
        "T(n, W) = c + 2 log2(W) (alpha + n / B)  (binomial tree: reduce to a root, then broadcast)",
    ),
}


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
    constant_s: float = 0.0
    robust_cost: float = 0.0  # the soft-L1 loss per timing at the fit: what "auto" compares

    def seconds(self, nbytes: float, world_size: int) -> float:
        return allreduce_seconds(
            nbytes, world_size, self.alpha_s, self.bandwidth_bytes_s, self.algorithm, self.constant_s
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "world_sizes": list(self.world_sizes), "bandwidth_gbit": self.bandwidth_bytes_s * 8e-9}


def allreduce_seconds(
    nbytes: float,
    world_size: int,
    alpha_s: float,
    bandwidth_bytes_s: float,
    algorithm: str = "ring",
    constant_s: float = 0.0,
) -> float:
    """Time of one all-reduce of ``nbytes`` over ``world_size`` ranks; zero at W = 1 (no collective)."""
    if world_size <= 1:
        return 0.0
    latency_coef, bytes_coef, _ = _algorithm(algorithm)
    return (
        constant_s
        + float(latency_coef(world_size)) * alpha_s
        + float(bytes_coef(world_size)) * nbytes / bandwidth_bytes_s
    )


def _algorithm(name: str) -> tuple[Callable[[float], float], Callable[[float], float], str]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown all-reduce algorithm {name!r}; use one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def fit_collective(
    sizes_bytes: Sequence[float], seconds: Sequence[float], world_size: int | Sequence[int], algorithm: str = "ring"
) -> CollectiveFit:
    """Fit c, alpha and B of ``algorithm``'s formula (ring: T = c + 2 (W-1) alpha + 2 (W-1)/W n / B)
    to measured all-reduce times, minimising the relative error so the large messages do not swamp
    the small ones, with a robust (soft L1) loss; c, alpha and 1/B are kept non-negative, and c is 0
    unless the timings span two or more world sizes. ``world_size`` is one int or one per point;
    points at W = 1 (no collective) are dropped."""
    from scipy.optimize import least_squares, nnls  # seconds to import: only where a fit is made

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
    columns = [latency_coef(w), bytes_coef(w) * n]
    with_constant = len(set(w)) > 1  # at one world size c and alpha are one number
    design = np.column_stack(([np.ones_like(t)] if with_constant else []) + columns) / t[:, None]
    start, _ = nnls(design, np.ones_like(t))  # plain relative least squares: the starting point
    if start[-1] <= 0:
        raise ValueError(
            "the timings do not grow with the message size, so no bandwidth can be fitted; "
            "include messages of a MiB or more in the sweep"
        )
    # Soft-L1 loss: a few sizes off the line (a token bucket's burst, a busy neighbour) do not bias the fit.
    robust = least_squares(
        lambda x: design @ x - 1.0,
        start,
        bounds=(np.zeros_like(start), np.full_like(start, np.inf)),
        loss="soft_l1",
        f_scale=ROBUST_SCALE,
        x_scale="jac",
    )
    *constant, alpha, inv_bw = robust.x
    rel = np.abs(design @ robust.x - 1.0)
    return CollectiveFit(
        algorithm,
        float(alpha),
        float(1.0 / inv_bw),
        formula,
        float(np.median(rel)),
        float(rel.max()),
        int(n.size),
        tuple(sorted({int(x) for x in w})),
        float(constant[0]) if constant else 0.0,
        float(robust.cost / n.size),
    )


def choose_fit(
    sizes_bytes: Sequence[float], seconds: Sequence[float], world_size: Sequence[int], requested: str = "auto"
) -> tuple[CollectiveFit, list[dict]]:
    """The fit of the ``requested`` algorithm, or with "auto" the ring unless another fits the
    timings clearly better (its robust cost below CLEARLY_BETTER of the ring's); and every
    algorithm's fit quality, for the report."""
    if requested != "auto":
        _algorithm(requested)
    fits = {name: fit_collective(sizes_bytes, seconds, world_size, name) for name in ALGORITHMS}
    chosen = requested
    if requested == "auto":
        best = min(fits, key=lambda name: fits[name].robust_cost)
        clearly = fits[best].robust_cost < CLEARLY_BETTER * fits["ring"].robust_cost
        chosen = best if clearly else "ring"
    quality = [
        {
            "algorithm": name,
            "robust_cost": f.robust_cost,
            "median_rel_error": f.median_rel_error,
            "max_rel_error": f.max_rel_error,
            "chosen": name == chosen,
        }
        for name, f in fits.items()
    ]
    return fits[chosen], quality


def resample_points(
    sizes_bytes: Sequence[float], seconds: Sequence[float], world_size: Sequence[int], rng: np.random.Generator
) -> tuple[list[float], list[float], list[int]]:
    """A bootstrap sample of the timings: as many drawn with replacement within each world size."""
    worlds = np.asarray(world_size)
    chosen = np.concatenate([rng.choice(np.flatnonzero(worlds == w), (worlds == w).sum()) for w in np.unique(worlds)])
    return [sizes_bytes[i] for i in chosen], [seconds[i] for i in chosen], [int(worlds[i]) for i in chosen]


def network_fit(measured: CollectiveFit, bandwidth_gbit: float, latency_us: float) -> CollectiveFit:
    """The collective on a named network: latency measured here plus the network's; the lower bandwidth."""
    if bandwidth_gbit <= 0 or latency_us < 0:
        raise ValueError(f"a network needs bandwidth_gbit > 0 and latency_us >= 0, got {bandwidth_gbit}, {latency_us}")
    return replace(
        measured,
        alpha_s=measured.alpha_s + latency_us * 1e-6,
        bandwidth_bytes_s=min(measured.bandwidth_bytes_s, bandwidth_gbit * 1e9 / 8),
    )
