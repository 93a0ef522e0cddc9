"""Out-of-sample validation of the scaling model: each measured world size predicted from the others,
as the model predicts an unmeasured one. The held-out world size enters no fit: not the step
profile, not the all-reduce fit, not the co-location timing, not the wait; where nothing is left
to fit the all-reduce on, the case says so instead of an error computed from the held-out data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ddpbench.allreduce import CollectiveFit, fit_collective
from ddpbench.commtimes import CommPoints
from ddpbench.scaling import Colocation, Measured, predict_step, profile_from

PREDICTION_CHECK = (
    "examples/prediction-check.yaml (one thread per rank, world sizes 1, 2, 4: each size predicted from "
    "timings at the others; 4 cores or more)"
)


def comm_sizes_kept(points: CommPoints, held_out: int) -> set[int]:
    """The commbench world sizes a validation case may use: every one timed but the held-out size."""
    return set(points[2]) - {held_out}


def not_validated(held: int, kept: Iterable[int]) -> dict:
    """A case the study cannot validate: no all-reduce timing besides the held-out size's."""
    return {
        "held_out": held,
        "fit_world_sizes": sorted(kept),
        "validated": False,
        "reason": f"no all-reduce timing at a world size other than {held}, so predicting W = {held} would "
        f"fit the timings of W = {held} itself; run {PREDICTION_CHECK}",
    }


def _fit_on(points: CommPoints, world_sizes: set[int], algorithm: str) -> CollectiveFit:
    """Fit on the comm timings at ``world_sizes``."""
    sizes, seconds, worlds = points
    chosen = [i for i, w in enumerate(worlds) if w in world_sizes]
    return fit_collective(
        [sizes[i] for i in chosen], [seconds[i] for i in chosen], [worlds[i] for i in chosen], algorithm
    )


def validate(
    measured: Mapping[int, Measured],
    points: CommPoints,
    bucket_bytes: Sequence[float],
    batch_mode: str,
    batch_size: int,
    algorithm: str = "ring",
    comm_docs: Sequence[Mapping] = (),
) -> list[dict]:
    """Predict a measured world size from the others, as the model would predict an unmeasured one.

    With two measured sizes the largest is predicted from the smaller; with more, each is left out
    in turn. The communication model and the ranks' co-location are taken from the commbench
    timings of every world size but the held-out one (none left: the case is not validated).
    Speedup needs the measured W = 1 among the kept sizes.
    Each case names the threads per rank of the reference run and of the held-out one: where they
    differ (the cores shared among the ranks), the error includes the change of threads."""
    sizes = sorted(measured)
    if len(sizes) < 2:
        return []
    held_out = sizes if len(sizes) > 2 else [sizes[-1]]
    cases = []
    for held in held_out:
        kept = {w: m for w, m in measured.items() if w != held}
        comm_sizes = comm_sizes_kept(points, held)
        if not comm_sizes:
            cases.append(not_validated(held, kept))
            continue
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
                "validated": True,
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
