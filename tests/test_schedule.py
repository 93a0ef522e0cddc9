"""The learning-rate schedules (ddpbench.schedule) at chosen steps, worked out by hand, and the
config errors they raise."""

from __future__ import annotations

import math

import pytest

from ddpbench.schedule import check_warmup, learning_rate

# 5 epochs of 10 steps, peak 0.1, one warm-up epoch: steps 0-9 ramp, 10-49 decay over 40 steps.
RUN = {"steps_per_epoch": 10, "epochs": 5}


def lr(schedule: str, step: int, warmup: float = 1.0) -> float:
    return learning_rate(0.1, schedule, warmup, step, **RUN)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_every_schedule_ramps_up_over_the_warmup_to_the_peak(schedule):
    # (s + 1) / 10 of the peak: 0.01 at the first step, the peak at the end of the warm-up and the step after it.
    assert [lr(schedule, s) for s in (0, 4, 9, 10)] == pytest.approx([0.01, 0.05, 0.1, 0.1])


def test_constant_holds_the_peak_to_the_last_step():
    assert [lr("constant", s) for s in (10, 30, 49)] == pytest.approx([0.1, 0.1, 0.1])


def test_cosine_by_hand():
    # Middle of the decay, step 30: p = 20 / 40 = 0.5, (1 + cos(pi / 2)) / 2 = 0.5. Last step 49: p = 39 / 40.
    assert lr("cosine", 30) == pytest.approx(0.05)
    assert lr("cosine", 20) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr("cosine", 49) == pytest.approx(0.1 * (1 + math.cos(math.pi * 39 / 40)) / 2)


def test_linear_by_hand():
    assert [lr("linear", s) for s in (30, 49)] == pytest.approx([0.05, 0.1 / 40])


def test_a_fractional_warmup_and_none():
    # Half an epoch: 5 warm-up steps; then 45 steps of decay.
    assert learning_rate(0.1, "linear", 0.5, 4, **RUN) == pytest.approx(0.1)
    assert learning_rate(0.1, "linear", 0.5, 5, **RUN) == pytest.approx(0.1)
    assert learning_rate(0.1, "linear", 0.5, 27, **RUN) == pytest.approx(0.1 * (1 - 22 / 45))
    assert learning_rate(0.1, "cosine", 0.0, 0, **RUN) == pytest.approx(0.1)  # no warm-up: the peak first


def test_a_bad_schedule_or_a_warmup_as_long_as_the_run_names_the_key():
    with pytest.raises(ValueError, match="lr_schedule 'step'"):
        lr("step", 0)
    with pytest.raises(ValueError, match=r"train.warmup_epochs = 5 is not shorter than train.epochs = 5"):
        check_warmup({"warmup_epochs": 5, "epochs": 5})
    check_warmup({"warmup_epochs": 4.5, "epochs": 5})  # shorter: fine
