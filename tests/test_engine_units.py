"""The engine's decisions and records as pure functions, without torchrun."""

from __future__ import annotations

import math

import pytest

from ddpbench.options import RunOptions
from ddpbench.records import EpochMeasure, epoch_record, run_totals
from ddpbench.train import plan_run


def options(**overrides) -> RunOptions:
    return RunOptions(data="cache", **overrides)


@pytest.mark.parametrize(
    "mode, scaling, world_size, per_rank, global_batch, lr",
    [
        ("per_worker", "none", 4, 128, 512, 0.01),
        ("per_worker", "linear", 4, 128, 512, 0.04),  # 512 / base 128 = 4
        ("per_worker", "sqrt", 4, 128, 512, 0.02),  # sqrt(4) = 2
        ("global", "linear", 4, 32, 128, 0.01),  # the global batch is the base: no change
    ],
)
def test_plan_splits_the_batch_and_scales_the_learning_rate(mode, scaling, world_size, per_rank, global_batch, lr):
    plan = plan_run(options(batch_size=128, batch_size_mode=mode, lr_scaling=scaling), world_size, "cpu", True)
    assert (plan.per_rank_batch_size, plan.global_batch_size) == (per_rank, global_batch)
    assert plan.lr_effective == pytest.approx(lr)
    assert plan.allreduce == "backend" and plan.channels_last is True


def test_a_global_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="global batch size 100 is not divisible by world size 3"):
        plan_run(options(batch_size=100, batch_size_mode="global"), 3, "cpu", True)


def measure(train_s: float, exposed: float | None) -> EpochMeasure:
    return EpochMeasure(
        loss_sum=300.0,
        correct=150.0,
        count=200.0,
        steps=4,
        lr=0.01,
        train_s=train_s,
        data_s=0.5,
        step_s=train_s - 1.0,
        comm_busy_s=None if exposed is None else 2 * exposed,
        comm_exposed_s=exposed,
    )


def test_epoch_record_derives_means_and_compute_time():
    record = epoch_record(3, measure(10.0, 1.5), (0.9, 61.0), eval_s=2.0, elapsed_s=40.0, train_time_max_s=10.5)
    assert record["epoch"] == 3 and record["train_loss"] == 1.5 and record["train_acc"] == 75.0
    assert record["throughput_img_s"] == 20.0 and record["images"] == 200
    assert record["compute_time_s"] == 9.0 - 1.5 and record["comm_time_s"] == 3.0
    assert record["test_acc"] == 61.0 and record["train_time_max_s"] == 10.5
    untimed = epoch_record(1, measure(10.0, None), (0.9, 61.0), 2.0, 12.0, 10.0)  # CUDA: communication untimed
    assert untimed["compute_time_s"] is None and untimed["comm_exposed_time_s"] is None


def test_run_totals_sum_epochs_and_keep_unknowns_unknown():
    epochs = [
        epoch_record(1, measure(10.0, 1.0), (1.0, 50.0), 2.0, 12.0, 10.0),
        epoch_record(2, measure(6.0, 0.5), (0.8, 66.0), 2.0, 20.0, 6.0),
    ]
    totals = run_totals(epochs, loop_s=20.0, time_to_target=20.0)
    assert totals["train_time_s"] == 16.0 and totals["images"] == 400
    assert totals["throughput_img_s"] == 25.0 and totals["comm_exposed_time_s"] == 1.5
    assert (totals["final_test_acc"], totals["best_test_acc"], totals["final_test_loss"]) == (66.0, 66.0, 0.8)
    epochs[1] = epoch_record(2, measure(6.0, None), (0.8, 66.0), 2.0, 20.0, 6.0)
    assert run_totals(epochs, 20.0, None)["comm_exposed_time_s"] is None
    assert math.isclose(run_totals(epochs, 20.0, None)["step_time_s"], 14.0)
