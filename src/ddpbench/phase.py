"""What this rank is doing now, for the messages that end a run early.

A run ended by SIGTERM (a job's time limit: SLURM sends SIGTERM, then SIGKILL; a user's kill;
torchrun stopping its ranks) or by a peer's collective timing out should say where it was, above
all when it was compiling: torch.compile's first step, and any recompile, can outlast a job's time
limit or the ``train.timeout`` a peer waits, and neither failure says so by itself. The training
loop names each epoch's phase; dynamo's compile callbacks (``torch._dynamo.callback``) mark the
span of every compile; the heartbeat carries the phase to the peers (ddpbench.heartbeat), and
``name_phase_on_sigterm`` logs it when the rank is stopped.

The SIGTERM line is written by a thread woken through ``signal.set_wakeup_fd``: Python runs a
signal handler only when the main thread returns to the interpreter, which a rank blocked in a
collective or a compiler call may not do for minutes, while the wake-up byte arrives at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from ddpbench.supervise import handle_signals

COMPILING = "compiling"
CONTIGUOUS_S = 1.0  # compiles this close together, in one phase, are one span (a step's frames)
SIGTERM_WRITE_S = 2.0  # how long a stopped rank may spend writing its line before it exits regardless

_current: tuple[str, float] = ("starting", time.time())  # (phase, wall time it began): one assignment


def enter(phase: str) -> None:
    global _current
    _current = (phase, time.time())


def current() -> tuple[str, float]:
    return _current


def describe(phase: str, since: float, now: float | None = None) -> str:
    """'compiling (train.compile: default) in training epoch 1/5, for 41 s'."""
    return f"{phase}, for {(now if now is not None else time.time()) - since:.0f} s"


def watch_compiles(mode: str) -> bool:
    """Mark every compile of this process as a phase of its own, the one it interrupted resumed
    after. False where this torch has no compile callbacks (the phase then stays the epoch's)."""
    try:
        from torch._dynamo.callback import on_compile_end, on_compile_start
    except ImportError:
        return False
    # Dynamo calls these for the outermost compile only: one phase to resume, and the latest span.
    last = {"resume": None, "in": "", "since": 0.0, "ended": 0.0}

    def started(*_args) -> None:
        global _current
        since = time.time()
        if last["in"] == _current[0] and since - last["ended"] < CONTIGUOUS_S:
            since = last["since"]  # one step's compiles, split by a graph break: one span
        last.update({"resume": _current, "in": _current[0], "since": since})
        _current = (f"{COMPILING} (train.compile: {mode}) in {_current[0]}", since)

    def ended(*_args) -> None:
        global _current
        if last["resume"] is not None:
            _current, last["resume"], last["ended"] = last["resume"], None, time.time()

    on_compile_start(started)
    on_compile_end(ended)
    return True


def sigterm_line(rank: int, phase: str, since: float, now: float | None = None) -> str:
    """The line a stopped rank leaves: where it was, and, in a compile, what to change."""
    line = f"ddpbench.train: rank {rank} stopped by SIGTERM while {describe(phase, since, now)}"
    if phase.startswith(COMPILING):
        line += (
            ": a time limit shorter than the compile ends the run here; give the job more time "
            "(resources: runtime on a cluster) or set train.compile: none"
        )
    return line + "\n"


def name_phase_on_sigterm(rank: int) -> None:
    """On SIGTERM, write the phase to stderr and exit with 128 + SIGTERM at once, as the signal's
    default action would have (no cleanup runs that it would not have run). Main thread only."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the C-level handler must never block
    handle_signals([signal.SIGTERM], lambda *_: None)  # the thread below acts; this only wakes it
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def wait_for_sigterm() -> None:
        while signal.SIGTERM not in os.read(read_end, 64):
            pass
        # Exit whatever stderr does: its reader may be gone (a launcher killed with -9: EPIPE) or
        # stalled (a full pipe blocks the write), and a rank that outlives its SIGTERM runs on alone.
        threading.Timer(SIGTERM_WRITE_S, os._exit, (128 + signal.SIGTERM,)).start()
        try:
            phase, since = current()
            os.write(2, sigterm_line(rank, phase, since).encode())
        except OSError:
            pass
        finally:
            os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait_for_sigterm, name="ddpbench-sigterm", daemon=True).start()
