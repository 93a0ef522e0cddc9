"""``ddpbench.commbench``'s outputs as the scaling model's inputs: the all-reduce timings as fit points,
and DDP's gradient buckets (the runs' own, else commbench's)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# (bytes, median seconds, world size) of each timing, as three equal-length lists.
CommPoints = tuple[list[float], list[float], list[int]]


def comm_points(comm_docs: Iterable[Mapping]) -> CommPoints:
    """(bytes, median seconds, world size) of every timing in ``ddpbench.commbench`` outputs:
    the size sweep and the buckets alike."""
    sizes, seconds, worlds = [], [], []
    for doc in comm_docs:
        for point in [*doc.get("sweep", []), *doc.get("buckets", [])]:
            sizes.append(float(point["bytes"]))
            seconds.append(float(point["median_s"]))
            worlds.append(int(doc["world_size"]))
    return sizes, seconds, worlds


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
