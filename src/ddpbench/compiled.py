"""torch.compile for the runs (``train.compile``): the toolchain checked before any timed step,
``auto`` resolved, the DDP module wrapped.

The DDP-wrapped module is compiled, not the bare model inside it: dynamo then runs its
DDPOptimizer, which splits the graph at DDP's gradient-bucket boundaries (``bucket_cap_mb``), so
each bucket's all-reduce (and the run's communication hook) still starts while backward goes on;
a graph break ends a subgraph and runs eager glue between them. Evaluation runs the model eager
(``ddp.module``): compile changes how training steps run, not what the model computes. The first
step pays for tracing and code generation, and so does any step that recompiles (a short last
batch: a new shape); the run marks those steps (``compile_steps``), records what they cost beyond
a steady step as ``totals.compile_s``, and the steady-state figures leave them out
(ddpbench.records.steady_state), while time to accuracy counts them.
"""

from __future__ import annotations

import logging

import torch

from ddpbench import phase

log = logging.getLogger("ddpbench.train")

MODES = ("default", "max-autotune")


class CompileUnavailable(RuntimeError):
    """torch.compile cannot run here; the message names the missing piece and the fix."""


def toolchain_problem(device: torch.device) -> str | None:
    """None where inductor compiles and runs a trial function on ``device``; else the root cause
    in one line (a missing C++ compiler on CPU, say, or Triton on CUDA)."""
    trial = torch.compile(lambda x: torch.sin(x) * 2 + 1, backend="inductor", fullgraph=True)
    try:
        trial(torch.ones(16, device=device))
    except Exception as err:  # any link of the chain (dynamo, inductor, the compiler, loading): name it
        while err.__cause__ is not None:
            err = err.__cause__
        lines = str(err).strip().splitlines() or [""]
        return f"{type(err).__name__}: {lines[0]}".rstrip(": ")
    return None


def missing_piece(device: torch.device) -> str:
    """What inductor needs on ``device``, and how to get it."""
    if device.type == "cuda":
        return "inductor on cuda needs Triton (pip install triton, matching torch)"
    cxx = torch._inductor.config.cpp.cxx[-1]
    return f"inductor on cpu needs a working C++ compiler (it tried {cxx}, or $CXX; Debian: apt-get install g++)"


def resolve_compile(requested: str, device: torch.device) -> str:
    """The mode the run compiles with: ``none``, or ``default`` / ``max-autotune`` where the
    trial compile works. ``auto`` is ``default`` where it works and ``none`` (said in the log)
    where it does not; a named mode that cannot work raises CompileUnavailable."""
    if requested == "none":
        return "none"
    phase.watch_compiles(requested)  # from the trial on: every compile is a phase the peers see
    problem = toolchain_problem(device)
    if problem is None:
        return "default" if requested == "auto" else requested
    if requested == "auto":
        log.warning("train.compile: auto runs eager: %s (%s)", missing_piece(device), problem)
        return "none"
    raise CompileUnavailable(
        f"train.compile: {requested} cannot run here: {missing_piece(device)}; the trial compile failed with "
        f"{problem}. Install it, or set train.compile: none (auto falls back to eager)"
    )


def frames_compiled() -> int:
    """How many frames dynamo has set out to compile in this process: a step that raises it
    compiled (the first, or a recompile: a short last batch, a guard that failed)."""
    from torch._dynamo.utils import counters

    return counters["frames"]["total"]


def compile_module(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``module`` compiled with inductor in ``mode`` (the module itself for ``none``)."""
    if mode == "none":
        return module
    if mode not in MODES:
        raise ValueError(f"train.compile: {mode!r} is not one of none, {', '.join(MODES)}, auto")
    return torch.compile(module, backend="inductor", mode=mode)
