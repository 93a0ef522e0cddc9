"""The all-reduce's cost: a latency-bandwidth model of one all-reduce of n bytes over W ranks (a ring),
fitted to ``ddpbench.commbench``'s timings, and the same collective on a named network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.optimize import least_squares, nnls

ROBUST_SCALE = 0.05  # relative residuals beyond this count linearly, not squared

# T = a(W) * alpha + b(W) * n / B for an all-reduce of n bytes over W ranks.
ALGORITHMS = {
    "ring": (
        lambda w: 2.0 * (w - 1),
        lambda w: 2.0 * (w - 1) / w,
        "T(n, W) = 2 (W - 1) alpha + 2 (W - 1) / W * n / B  (ring: reduce-scatter, then all-gather)",
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
