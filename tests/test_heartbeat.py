"""A hung rank is named: its heartbeat goes stale, and the peer whose collective timed out says
which rank stopped responding instead of only that it timed out.

Here with in-process heartbeats on one store; through torchrun, with a rank stopped by SIGSTOP
and the name in torchrun's root cause, in test_train.py::test_failed_or_hung_rank_ends_the_launch
(the hung cases: the engine's own launch, so that no second one is needed for this)."""

from __future__ import annotations

import os
import time

import pytest
import torch.distributed as dist

from ddpbench.heartbeat import Heartbeat, UnresponsivePeerError, peer_heartbeats


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
