"""A hung rank is named: its heartbeat goes stale, and the peer whose collective timed out says
which rank stopped responding instead of only that it timed out."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from conftest import bin_path, child_env

from ddpbench.heartbeat import Heartbeat, UnresponsivePeerError, peer_heartbeats

# Two gloo ranks with a 5 s collective timeout; rank 1 stops itself (as `kill -STOP` would) before
# the second all-reduce. @record puts rank 0's error into torchrun's summary, as in ddpbench.train.
HUNG_RANK = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import timedelta
    import torch, torch.distributed as dist
    from torch.distributed.elastic.multiprocessing.errors import record
    from ddpbench.heartbeat import peer_heartbeats

    @record
    def main():
        dist.init_process_group("gloo", timeout=timedelta(seconds=5))
        rank = dist.get_rank()
        open(os.path.join(sys.argv[1], f"rank{rank}.pid"), "w").write(str(os.getpid()))
        with peer_heartbeats(rank, dist.get_world_size()):
            t = torch.ones(1)
            dist.all_reduce(t)
            if rank == 1:
                os.kill(os.getpid(), signal.SIGSTOP)
            dist.all_reduce(t)

    main()
    """
)


@pytest.mark.slow  # torchrun, two ranks and a 5 s collective timeout
def test_a_stopped_rank_is_named_by_the_rank_that_timed_out(tmp_path):
    script = tmp_path / "hung_rank.py"
    script.write_text(HUNG_RANK)
    env = {**child_env(), "LOGLEVEL": "WARNING"}
    proc = subprocess.Popen(
        [bin_path("torchrun"), "--standalone", "--nproc-per-node=2", str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    pids: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 25
        while len(pids) < 2 or _alive(pids[0]):  # until rank 0 has failed
            assert time.monotonic() < deadline and proc.poll() is None, "rank 0 did not fail within 25 s"
            pids.update(
                {r: int(p.read_text()) for r in (0, 1) if (p := tmp_path / f"rank{r}.pid").exists() and p.read_text()}
            )
            time.sleep(0.1)
        # torchrun would wait 30 s before SIGKILL for the stopped rank to honour its SIGTERM.
        os.kill(pids[1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=20)
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    named = f"rank 1 (pid {pids[1]} on host "
    assert named in output and "stopped responding" in output and "rank 0 timed out waiting for it" in output, output[
        -4000:
    ]
    root_cause = output.split("Root Cause", 1)[1]
    assert "UnresponsivePeerError" in root_cause and named in root_cause, output[-4000:]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in "ZX"


def test_only_silent_peers_are_named():
    """Ranks that keep beating are not blamed; one whose heartbeat stops is, after a few intervals;
    an error raised while every peer beats is passed on unchanged."""
    store = dist.HashStore()
    ranks = [Heartbeat(r, 3, store, interval_s=0.2).start() for r in range(3)]
    try:
        time.sleep(0.5)
        assert ranks[0].describe_unresponsive() is None
        with pytest.raises(ValueError, match="bad input"), peer_heartbeats(0, 3, store, interval_s=0.2):
            raise ValueError("bad input")
        ranks[2].stop()
        time.sleep(2.5)  # past the two seconds a heartbeat may be late without blame
        message = ranks[0].describe_unresponsive()
        assert message is not None and message.startswith(f"rank 2 (pid {os.getpid()} on host ")
        assert "rank 1" not in message and message.endswith("rank 0 timed out waiting for it")
        with (
            pytest.raises(UnresponsivePeerError, match="rank 2 .* stopped responding") as caught,
            peer_heartbeats(0, 3, store, interval_s=0.2),
        ):
            raise RuntimeError("Timed out waiting 5000ms for recv operation to complete")
        assert isinstance(caught.value.__cause__, RuntimeError)
    finally:
        for beat in ranks:
            beat.stop()


def test_a_rank_that_never_beat_is_named():
    store = dist.HashStore()
    beat = Heartbeat(0, 2, store, interval_s=0.2).start()
    try:
        assert beat.describe_unresponsive() == "rank 1 never sent a heartbeat; rank 0 timed out waiting for it"
    finally:
        beat.stop()
