"""A rank says where it was when a run ends early (ddpbench.phase): stopped by SIGTERM (a job's time
limit, a kill), it logs its phase, with what to change when that was a compile; a peer whose
collective timed out while this rank compiled names the compile (ddpbench.heartbeat)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch.distributed as dist
from conftest import REPO

from ddpbench import phase
from ddpbench.heartbeat import Heartbeat, UnresponsivePeerError, peer_heartbeats

COMPILING = "compiling (train.compile: default) in training epoch 1/3"


@pytest.fixture
def restored_phase():
    before = phase.current()
    yield
    phase.enter(before[0])


def stopped_rank(doing: str) -> subprocess.CompletedProcess:
    """A process that names its phase on SIGTERM, stopped while it waits in ``doing``."""
    child = (
        "import sys, time; from ddpbench import phase; phase.name_phase_on_sigterm(3); "
        f"phase.enter({doing!r}); print('ready', flush=True); time.sleep(60)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline() == b"ready\n"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - start < 5  # at once, as the signal's default action would
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


def test_sigterm_in_a_compile_names_it_and_the_fix():
    result = stopped_rank(COMPILING)
    assert result.returncode == 128 + signal.SIGTERM
    assert re.fullmatch(
        r"ddpbench\.train: rank 3 stopped by SIGTERM while compiling \(train\.compile: default\) in training "
        r"epoch 1/3, for \d+ s: a time limit shorter than the compile ends the run here; give the job more "
        r"time \(resources: runtime on a cluster\) or set train\.compile: none\n",
        result.stderr,
    ), result.stderr


def test_sigterm_elsewhere_names_the_phase_only():
    result = stopped_rank("evaluating after epoch 2/5")
    assert result.returncode == 128 + signal.SIGTERM
    expected = r"ddpbench\.train: rank 3 stopped by SIGTERM while evaluating after epoch 2/5, for \d+ s\n"
    assert re.fullmatch(expected, result.stderr), result.stderr


FILL_STDERR = """
os.set_blocking(2, False)
try:
    while True:
        os.write(2, b"x" * 4096)
except BlockingIOError:
    os.set_blocking(2, True)
"""


@pytest.mark.parametrize("stderr", ["reader gone", "pipe full"])
def test_sigterm_ends_the_rank_even_when_stderr_cannot_take_the_line(stderr):
    """A launcher killed with -9 leaves its ranks a stderr without a reader (EPIPE); a stalled one, a
    full pipe that blocks the write. Either way the rank exits, and never trains on alone."""
    read_end, write_end = os.pipe()
    child = (
        "import os, sys, time\nfrom ddpbench import phase\nphase.name_phase_on_sigterm(0)\n"
        + (FILL_STDERR if stderr == "pipe full" else "")
        + "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=write_end, env=env)
    os.close(write_end)
    try:
        assert proc.stdout.readline() == b"ready\n"
        if stderr == "reader gone":
            os.close(read_end)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - start < phase.SIGTERM_WRITE_S + 2
    finally:
        proc.kill()
        if stderr == "pipe full":
            os.close(read_end)


def test_a_timeout_while_a_peer_compiles_names_the_compile(restored_phase):
    """In-process ranks share the phase: rank 1's heartbeat says it is compiling. A timeout is
    blamed on that compile; any other error, or a timeout while nobody compiles, passes unchanged."""
    store = dist.HashStore()
    phase.enter("training epoch 1/3")
    peer = Heartbeat(1, 2, store, interval_s=0.2).start()
    try:
        timeout = RuntimeError("Timed out waiting 60000ms for recv operation to complete")
        with pytest.raises(RuntimeError, match="^Timed out"), peer_heartbeats(0, 2, store, interval_s=0.2):
            raise timeout
        phase.enter(COMPILING)
        time.sleep(0.5)  # the peer's next beat carries the compile
        with pytest.raises(ValueError, match="bad input"), peer_heartbeats(0, 2, store, interval_s=0.2):
            raise ValueError("bad input")
        with pytest.raises(UnresponsivePeerError) as caught, peer_heartbeats(0, 2, store, interval_s=0.2):
            raise timeout
        assert re.fullmatch(
            rf"rank 1 \(pid {os.getpid()} on host \S+\) is still compiling \(train\.compile: default\) in "
            r"training epoch 1/3, for \d+ s; rank 0 timed out waiting for it: the compile took longer than "
            r"train\.timeout; raise train\.timeout",
            str(caught.value),
        ), str(caught.value)
        assert caught.value.__cause__ is timeout
    finally:
        peer.stop()


@pytest.mark.slow  # dynamo's import (seconds)
def test_every_compile_is_a_phase_and_the_epoch_resumes(restored_phase):
    """Dynamo's own compile spans, whatever the backend (eager here: no C++ build needed to see them)."""
    import torch
    from torch._dynamo.callback import callback_handler

    seen = []
    assert phase.watch_compiles("default")
    callback_handler.register_start_callback(lambda *_: seen.append(phase.current()))  # runs after ours
    try:
        phase.enter("training epoch 2/5")
        fn = torch.compile(lambda x: torch.cos(x) + 1, backend="eager")
        fn(torch.ones(4))
        fn(torch.ones(4))  # compiled already: no new phase
        fn(torch.ones(5, 3))  # a new shape at once: a recompile, in the same span (a step's frames)
        time.sleep(phase.CONTIGUOUS_S + 0.2)
        fn(torch.ones(2, 2, 2))  # later: a span of its own
    finally:
        callback_handler.clear()
    assert [name for name, _ in seen] == ["compiling (train.compile: default) in training epoch 2/5"] * 3
    assert seen[0][1] == seen[1][1] < seen[2][1]
    assert phase.current()[0] == "training epoch 2/5"
