"""ddpbench.commtimes: commbench's outputs as fit points, and which gradient buckets the model uses."""

from __future__ import annotations

from predictfactory import BUCKETS, SWEEP, comm_doc, synthetic_run

from ddpbench import commtimes


def test_buckets_the_runs_recorded_come_first():
    runs = [synthetic_run(1), {**synthetic_run(2), "ddp": {"bucket_bytes": [1_000_000, 3_000_000]}}]
    assert commtimes.gradient_buckets([comm_doc(2)], runs) == [1e6, 3e6]
    assert commtimes.gradient_buckets([comm_doc(2)], runs[:1]) == BUCKETS  # then commbench's


def test_every_timing_is_a_fit_point_at_its_world_size():
    sweep_only = {"world_size": 4, "sweep": [{"bytes": 8, "median_s": 1e-4}]}  # no buckets timed
    sizes, seconds, worlds = commtimes.comm_points([comm_doc(2), sweep_only])
    assert sizes == [float(n) for n in SWEEP] + BUCKETS + [8.0]  # the sweep, then the buckets, per document
    assert worlds == [2] * (len(SWEEP) + len(BUCKETS)) + [4]
    assert seconds[len(SWEEP)] == comm_doc(2)["buckets"][0]["median_s"] and seconds[-1] == 1e-4
