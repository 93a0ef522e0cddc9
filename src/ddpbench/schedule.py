"""The learning rate at every step: a linear warm-up over ``warmup_epochs`` (fractions allowed) to
the peak (``lr`` scaled by ``lr_scaling``), then the schedule: constant (the study's protocol),
cosine or linear decay towards zero at the end of the last step. Pure, so each schedule is tested
at chosen steps without training; ddpbench.train calls it every step."""

from __future__ import annotations

import math
from collections.abc import Mapping

SCHEDULES = ("constant", "cosine", "linear")


def learning_rate(
    peak: float, schedule: str, warmup_epochs: float, step: int, steps_per_epoch: int, epochs: int
) -> float:
    """The learning rate of ``step`` (from 0) of a run of ``epochs`` x ``steps_per_epoch`` steps.

    Warm-up: step s < W = warmup_epochs x steps_per_epoch takes peak (s + 1) / W. After it, with
    p = (s - W) / (total - W) the share of the decay done: constant peak, cosine peak (1 + cos(pi p)) / 2,
    linear peak (1 - p); so the first step after the warm-up takes the peak, and the decay would
    reach 0 one step after the last."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(epochs * steps_per_epoch - warmup, 1)
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


def check_warmup(train: Mapping, where: str = "train") -> None:
    """A warm-up as long as the run or longer leaves no step at the peak: say which key to change."""
    warmup, epochs = train.get("warmup_epochs", 0.0), train.get("epochs")
    if epochs is not None and warmup >= epochs:
        raise ValueError(
            f"config {where}.warmup_epochs = {warmup} is not shorter than {where}.epochs = {epochs}: the "
            "learning rate would never reach its peak; use fewer warm-up epochs or more epochs"
        )
