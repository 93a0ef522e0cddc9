"""How sure the prediction is: a bootstrap of the whole prediction. Each replicate draws the runs
again with replacement within each (batch configuration, world size) and commbench's timings
within each world size (ddpbench.allreduce.resample_points), and fits and predicts again with the
same algorithm; the 2.5th and 97.5th percentiles of the replicates bound every predicted value,
every validation error and every fitted parameter. Pure functions (numpy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ddpbench.allreduce import BOOTSTRAP_CONFIDENCE, resample_points
from ddpbench.commtimes import CommPoints

METHOD = (
    "percentile bootstrap ({n} replicates): the runs drawn again with replacement within each world size and "
    "batch, the all-reduce timings within each world size, everything fitted again"
)
ROW_KEY = ("runs_batch_mode", "batch_size", "network", "batch_mode", "world_size")
CASE_KEY = ("runs_batch_mode", "batch_size", "held_out")
CASE_VALUES = ("predicted_step_time_s", "step_time_rel_error", "speedup_rel_error")
FIT_VALUES = ("alpha_s", "bandwidth_bytes_s", "constant_s")
MIN_SHARE = 0.5  # fewer replicates than this share fitted: no interval


def resample_runs(runs: Sequence[Mapping], rng: np.random.Generator) -> list[Mapping]:
    """As many runs, drawn with replacement within each (batch mode, batch size, world size)."""
    groups: dict[tuple, list[Mapping]] = {}
    for run in runs:
        cfg = run["config"]
        groups.setdefault((cfg["batch_size_mode"], cfg["batch_size"], cfg["world_size"]), []).append(run)
    return [g[i] for g in groups.values() for i in rng.integers(0, len(g), len(g))]


def replicates(
    predict_once: Callable[[Sequence[Mapping], CommPoints], dict],
    runs: Sequence[Mapping],
    points: CommPoints,
    n: int,
    seed: int = 0,
) -> list[dict]:
    """``n`` bootstrap replicates of ``predict_once`` (runs, points) -> {"fit", "rows", "validation"};
    a replicate whose refit fails (the draw left too few distinct sizes) is left out."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        try:
            out.append(predict_once(resample_runs(runs, rng), resample_points(*points, rng)))
        except ValueError:
            continue
    return out


def interval(values: Iterable[float | None], n: int) -> tuple[float | None, float | None]:
    """The central BOOTSTRAP_CONFIDENCE percentile interval of ``values`` (None ignored), or
    (None, None) where fewer than MIN_SHARE of ``n`` replicates gave one."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite or len(finite) < MIN_SHARE * n:
        return None, None
    tail = 50 * (1 - BOOTSTRAP_CONFIDENCE)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def add_intervals(
    items: list[dict], samples: list[list[dict]], key: Sequence[str], values: Sequence[str], n: int
) -> list[dict]:
    """``items`` with <value>_ci95_low/_high for each of ``values``, from the replicates' ``samples``
    (lists of the same kind of dicts) matched on ``key``."""
    drawn: dict[tuple, list[dict]] = {}
    for sample in samples:
        for item in sample:
            drawn.setdefault(tuple(item.get(k) for k in key), []).append(item)
    out = []
    for item in items:
        matches = drawn.get(tuple(item.get(k) for k in key), [])
        extra = {}
        for name in values:
            low, high = interval((m.get(name) for m in matches), n)
            extra.update({f"{name}_ci95_low": low, f"{name}_ci95_high": high})
        out.append({**item, **extra})
    return out


def fit_intervals(fits: Iterable[Mapping], n: int) -> dict:
    """{parameter: [low, high]} of the fitted all-reduce over the replicates."""
    fits = list(fits)
    return {name: list(interval((f[name] for f in fits), n)) for name in FIT_VALUES}


def with_uncertainty(prediction: dict, samples: list[dict], n: int) -> dict:
    """The prediction with the bootstrap's intervals on its rows, validation and fit."""
    rows = add_intervals(
        prediction["rows"], [s["rows"] for s in samples], ROW_KEY, ("step_time_s", "speedup", "efficiency"), n
    )
    validation = add_intervals(prediction["validation"], [s["validation"] for s in samples], CASE_KEY, CASE_VALUES, n)
    return {
        **prediction,
        "rows": rows,
        "validation": validation,
        "collective_ci95": fit_intervals((s["fit"] for s in samples), n),
        "uncertainty": {"method": METHOD.format(n=n), "replicates": n, "fitted": len(samples)},
    }
