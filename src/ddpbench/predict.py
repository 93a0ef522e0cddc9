"""Predict DDP scaling beyond this machine: a latency-bandwidth model of the gradient all-reduce,
fitted to ``ddpbench.commbench``'s measurements, and a step model built from measured runs.

The all-reduce model is ``ddpbench.allreduce``'s and the step model ``ddpbench.scaling``'s (its
docstring gives the model), fitted to the runs and to commbench's timings as ``ddpbench.commtimes``
reads them, and checked out of sample by ``ddpbench.holdout``. This module puts them together for
summary.json: per batch configuration, network and batch mode, the predicted rows and curves. Pure
functions (numpy, scipy, pandas): no torch import, so the workflow's report step stays light.

    python -m ddpbench.predict --runs results/runs/*.json --comm comm_ws2.json \
        --out prediction.json [--csv prediction.csv] [--networks JSON] [--max-world-size 1024]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from ddpbench.allreduce import CollectiveFit, choose_fit, fit_collective, network_fit
from ddpbench.bands import replicates, with_uncertainty
from ddpbench.commtimes import CommPoints, comm_points, gradient_buckets
from ddpbench.holdout import validate
from ddpbench.io import atomic_write_json, atomic_write_text
from ddpbench.scaling import (
    DEFAULT_MAX_WORLD_SIZE,
    EXTRAPOLATION_FACTOR,
    Colocation,
    curves,
    measure,
    predict_curves,
    predict_step,
    profile_from,
)

MEASURED_NETWORK = "measured"
DEFAULT_BOOTSTRAP = 200  # replicates, as the config schema's predict.bootstrap default
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
ASSUMPTIONS = (
    "Each added worker brings its own cores or GPU: a worker computes as one rank did in the measured "
    "run used as reference (the largest world size fitted), at its threads per rank.",
    "Compute and data time per sample do not depend on the world size, apart from the ranks sharing a node "
    "(below); in the global batch mode they scale linearly with the per-rank batch (global batch / W), fixed "
    "per-step costs included.",
    "The all-reduce follows the chosen algorithm's formula (the ring unless the timings clearly favour another), "
    "one collective per DDP gradient bucket, one after another.",
    "Predicted speedup and efficiency are against the model's own one worker (one rank of the reference's "
    "threads, alone), so the speedup is 1 at W = 1; where the measured W = 1 had other threads per rank (cores "
    "fixed), the measured speedups above answer another question.",
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


def network_fits(measured: CollectiveFit, networks: Mapping | None) -> tuple[dict, dict]:
    """The fitted collective on the network measured here and on each named one; their parameters."""
    fits = {MEASURED_NETWORK: measured}
    specs = {
        MEASURED_NETWORK: {"bandwidth_gbit": measured.bandwidth_bytes_s * 8e-9, "latency_us": measured.alpha_s * 1e6}
    }
    for name, (gbit, latency) in parse_networks(networks).items():
        fits[name] = network_fit(measured, gbit, latency)
        specs[name] = {"bandwidth_gbit": gbit, "latency_us": latency}
    for name, fit in fits.items():
        specs[name].update(alpha_s=fit.alpha_s, bandwidth_bytes_s=fit.bandwidth_bytes_s)
    return fits, specs


def batch_groups(runs: Sequence[Mapping]) -> list[tuple[tuple[str, int], list[Mapping]]]:
    """The runs per batch configuration (batch mode, batch size), sorted."""
    groups: dict[tuple[str, int], list[Mapping]] = {}
    for run in runs:
        groups.setdefault((run["config"]["batch_size_mode"], run["config"]["batch_size"]), []).append(run)
    return sorted(groups.items())


def limits(row: Mapping, largest: int, train_samples: int) -> dict:
    """Where a predicted row is beyond what anything checked: more than EXTRAPOLATION_FACTOR times the
    largest measured world size; with a batch per worker, a global batch larger than the training set."""
    return {
        "extrapolated": row["world_size"] > EXTRAPOLATION_FACTOR * largest,
        "global_batch_exceeds_train_set": row["batch_mode"] == "per_worker"
        and row["world_size"] * row["per_rank_batch"] > train_samples,
    }


def predict_once(
    runs: Sequence[Mapping],
    points: CommPoints,
    comm_docs: Sequence[Mapping],
    networks: Mapping | None,
    max_world_size: int,
    algorithm: str,
) -> dict:
    """One fit of ``algorithm`` and the prediction from it: per batch configuration, network and batch
    mode the predicted rows, with speedup against the model's own one worker (1 at W = 1); the
    validation; the step profiles."""
    fit = fit_collective(*points, algorithm=algorithm)
    fits, specs = network_fits(fit, networks)
    buckets = gradient_buckets(comm_docs, runs)
    colocation = Colocation.from_comm(comm_docs)
    rows, validation, profiles = [], [], []
    for (mode, batch), group in batch_groups(runs):
        measured = measure(group)
        profile = profile_from(measured, buckets, fit, colocation)
        one = predict_step(profile, 1, buckets, fit, "per_worker", batch)["throughput_samples_s"]
        tag = {"runs_batch_mode": mode, "batch_size": batch}
        profiles.append({**tag, **asdict(profile)})
        train_samples = max(run["dataset"]["train_samples_used"] for run in group)
        for row in predict_curves(profile, buckets, fits, batch, one, max_world_size):
            rows.append({**tag, **row, **limits(row, max(measured), train_samples)})
        cases = validate(measured, points, buckets, mode, batch, algorithm, comm_docs)
        validation += [{**tag, **case} for case in cases]
    return {
        "fit": fit.to_dict(),
        "specs": specs,
        "buckets": buckets,
        "rows": rows,
        "validation": validation,
        "profiles": profiles,
    }


def predict_from_runs(
    runs: Sequence[Mapping],
    comm_docs: Sequence[Mapping],
    networks: Mapping[str, Mapping[str, float]] | None = None,
    max_world_size: int = DEFAULT_MAX_WORLD_SIZE,
    algorithm: str = "auto",
    bootstrap: int = DEFAULT_BOOTSTRAP,
) -> dict:
    """The prediction for ``summary.json``: per batch configuration of the runs, network and batch
    mode, the predicted rows; the fitted collective (``algorithm``, or with "auto" the one the
    timings favour, ddpbench.allreduce.choose_fit); the validation; the assumptions; with
    ``bootstrap`` replicates, the intervals of ddpbench.bands on all of them."""
    if not runs or not comm_docs:
        raise ValueError("a prediction needs measured runs and at least one ddpbench.commbench output")
    points = comm_points(comm_docs)
    chosen, quality = choose_fit(*points, requested=algorithm)
    once = predict_once(runs, points, comm_docs, networks, max_world_size, chosen.algorithm)
    prediction = {
        "algorithm": chosen.algorithm,
        "algorithm_requested": algorithm,
        "algorithm_fits": quality,
        "formula": chosen.formula,
        "assumptions": list(ASSUMPTIONS),
        "collective": once["fit"],
        "networks": once["specs"],
        "bucket_bytes": once["buckets"],
        "max_world_size": max_world_size,
        "extrapolation_factor": EXTRAPOLATION_FACTOR,
        "profiles": once["profiles"],
        "rows": once["rows"],
        "validation": once["validation"],
        "validated": any(case["validated"] for case in once["validation"]),
    }
    if bootstrap:

        def again(sample_runs, sample_points):
            return predict_once(sample_runs, sample_points, comm_docs, networks, max_world_size, chosen.algorithm)

        prediction = with_uncertainty(prediction, replicates(again, runs, points, bootstrap), bootstrap)
    return {**prediction, "curves": curves(prediction["rows"])}


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
    p.add_argument("--algorithm", default="auto", help="ring, halving_doubling, tree, or auto (the best fit)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="replicates for the intervals (0: none)")
    args = p.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    comm = [json.loads(path.read_text()) for path in args.comm]
    try:
        prediction = predict_from_runs(runs, comm, args.networks, args.max_world_size, args.algorithm, args.bootstrap)
    except ValueError as exc:
        p.exit(2, f"ddpbench.predict: {exc}\n")
    atomic_write_json(args.out, prediction)
    if args.csv:
        atomic_write_text(args.csv, prediction_csv(prediction))


if __name__ == "__main__":
    main()
