"""One training step, the engine's and commbench's: forward, loss, backward, SGD step.

ddpbench.train runs it through DDP (whose hooks sum the gradients during backward) with each
step's learning rate, and adds the step's loss and accuracy to the epoch's; ddpbench.commbench
runs it on the bare model, without communication, and synchronises the device after each step
to read its clock. What each measures around the step stays in that module; what the step does
is only here, so the compute commbench times is the compute the runs do.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ddpbench.cifar10 import CIFAR10_CLASSES
from ddpbench.models import build_model


def step_model(name: str, device: torch.device, channels_last: bool) -> nn.Module:
    """The model as the runs train it: on the device, in the runs' memory format."""
    model = build_model(name, num_classes=len(CIFAR10_CLASSES)).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """bf16: autocast to bfloat16 on the device; fp32: nothing."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sgd_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on (x, y): returns (the mean loss, the logits). ``lr`` sets the optimizer's rate
    first (None: keep it). The loss is taken in fp32 whatever the precision (a no-op in fp32)."""
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    with autocast(precision, x.device.type):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, out


def tally(totals: torch.Tensor, loss_sum: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
    """Add a batch to running (loss sum, correct, count) totals, on the device (no sync per batch)."""
    totals[0] += loss_sum
    totals[1] += (out.argmax(1) == y).sum()
    totals[2] += len(y)
