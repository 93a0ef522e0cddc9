"""Step times in the run record (ddpbench.records): each rank's distribution per epoch, the skew
between ranks, and the steady state after the warm-up, with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ddpbench.records import WARMUP_STEPS, compile_seconds, steady_state, step_distribution, step_record


def test_step_distribution_is_numpys_percentiles():
    times = [0.5, 0.1, 0.2, 0.3, 0.4, 0.9]
    got = step_distribution(times)
    p5, median, p95 = np.percentile(times, [5, 50, 95])
    assert got == pytest.approx({"median_s": median, "p5_s": p5, "p95_s": p95, "max_s": 0.9})
    assert step_distribution(()) == {"median_s": None, "p5_s": None, "p95_s": None, "max_s": None}


def test_skew_is_the_slowest_ranks_median_over_the_fastests():
    ranks = [step_distribution([0.1, 0.1, 0.1]), step_distribution([0.1, 0.15, 0.15])]
    record = step_record(ranks, (0.1, 0.1, 0.1))
    assert record["step_skew"] == pytest.approx(1.5)
    assert [r["rank"] for r in record["step_time_ranks"]] == [0, 1]
    assert record["step_times_s"] == [0.1, 0.1, 0.1]


def epochs_of(series: list[list[float]], batch: int = 128) -> list[dict]:
    return [{"images": batch * len(s), "step_times_s": s} for s in series]


def test_steady_state_leaves_out_the_warmup_and_counts_what_it_cost():
    # 400 steps: the first WARMUP_STEPS (20) are slow, the rest take 0.1 s.
    series = [1.0] * WARMUP_STEPS + [0.1] * 380
    got = steady_state(epochs_of([series[:200], series[200:]]))
    assert got["warmup_steps"] == WARMUP_STEPS
    assert got["warmup_time_s"] == pytest.approx(20.0)
    assert got["warmup_cost_s"] == pytest.approx(20.0 - 20 * 0.1)
    assert got["steady_step_time_median_s"] == pytest.approx(0.1)
    assert got["steady_throughput_img_s"] == pytest.approx(128 / 0.1)
    assert got["steady_images"] == 380 * 128 and got["steady_time_s"] == pytest.approx(38.0)
    assert got["steady_step_time_cv"] == pytest.approx(0.0, abs=1e-12)


def test_within_run_variability_is_the_steady_steps_coefficient_of_variation():
    steady = [0.1, 0.2] * 100
    got = steady_state(epochs_of([[5.0] * WARMUP_STEPS + steady]))
    assert got["steady_step_time_cv"] == pytest.approx(np.std(steady, ddof=1) / np.mean(steady))


def test_a_short_run_keeps_nine_tenths_of_its_steps():
    got = steady_state(epochs_of([[0.5] + [0.2] * 49]))  # 50 steps: 5 of warm-up, not 20
    assert got["warmup_steps"] == 5
    assert got["steady_throughput_img_s"] == pytest.approx(128 / 0.2)
    one_step = steady_state(epochs_of([[0.3]]))  # nothing to leave out: the step is the steady state
    assert one_step["warmup_steps"] == 0 and one_step["steady_time_s"] == pytest.approx(0.3)
    assert one_step["steady_step_time_cv"] is None
    assert steady_state([{"images": 10}]) == {}  # a record from before the step series


def test_compile_time_is_the_compiling_steps_beyond_a_steady_one_and_no_part_of_the_steady_state():
    # A compiled run of two epochs: its first step traces and builds (30 s); the short last batch
    # of the first epoch recompiles (20 s); the second epoch compiles nothing.
    first = {"images": 128 * 100, "step_times_s": [30.2] + [0.2] * 98 + [20.2], "compile_steps": [0, 99]}
    second = {"images": 128 * 100, "step_times_s": [0.2] * 100}
    assert compile_seconds([first, second]) == pytest.approx(50.0)
    got = steady_state([first, second])
    assert got["warmup_steps"] == WARMUP_STEPS and got["steady_steps"] == 200 - WARMUP_STEPS - 1
    assert got["steady_throughput_img_s"] == pytest.approx(128 / 0.2)  # the recompile left out
    assert compile_seconds(epochs_of([[0.1, 0.2, 0.2]])) == 0.0  # never below nothing (no marks: the first)
    assert compile_seconds(epochs_of([[4.0]])) == 4.0  # one step: all of it
