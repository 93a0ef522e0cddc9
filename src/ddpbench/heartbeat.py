"""Name the rank that stopped responding when a collective times out.

A hung rank (stopped by SIGSTOP, a debugger, a stalled file system, swapped out) makes its
peers' next collective time out, and every peer then fails with the same "timed out" error:
torchrun's summary names one of the ranks that waited as the root cause, never the one that
hung. Here every rank's daemon thread writes a heartbeat (wall time, pid, host) to the process
group's store every ``interval_s``; a stopped process's threads stop too, so its heartbeat goes
stale. When a rank's collective fails, it reads its peers' heartbeats and names the stale ones:

    with heartbeat.peer_heartbeats(rank, world_size):
        ...training...   # a failure caused by a silent peer is raised as UnresponsivePeerError

Under torchrun the store is served by torchrun's agent, not by a rank, so it still answers when
any rank hangs (rank 0 included). The heartbeats use their own connection to it, so a rank
blocked in a store call never delays its own heartbeat. Ages compare wall clocks, which across
nodes need to agree to within a second or so (NTP does); a heartbeat is stale after seconds.

A peer can also be alive and busy past the timeout: compiling (torch.compile's first step or a
recompile, ddpbench.phase). Each heartbeat carries the rank's phase, so a collective that timed out
while a peer was still compiling names that peer and its compile, and says to raise train.timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import torch.distributed as dist

from ddpbench import phase
from ddpbench.supervise import proc_stat

PREFIX = "ddpbench/heartbeat"
STORE_TIMEOUT_S = 5.0  # a store that does not answer within this is itself gone: no diagnosis then


class UnresponsivePeerError(RuntimeError):
    """A collective failed because one or more peers stopped responding (named in the message)."""


class Heartbeat:
    """This rank's heartbeat thread, and the view of its peers' heartbeats."""

    def __init__(self, rank: int, world_size: int, store: dist.Store | None = None, interval_s: float = 1.0):
        self.rank, self.world_size, self.interval_s = rank, world_size, interval_s
        store = store if store is not None else dist.distributed_c10d._get_default_store()
        store = own_connection(store)
        self.store = dist.PrefixStore(PREFIX, store)
        self.identity = {"pid": os.getpid(), "host": socket.gethostname()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ddpbench-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._write()  # before the first collective: a peer that times out finds every live rank
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STORE_TIMEOUT_S + self.interval_s)

    def _write(self) -> None:
        doing, since = phase.current()
        beat = {**self.identity, "time": time.time(), "phase": doing, "phase_since": since}
        self.store.set(str(self.rank), json.dumps(beat))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._write()
            except Exception:  # the store is gone (the launch is ending): nothing left to tell
                return

    def peers(self) -> dict[int, dict | None]:
        """Each other rank's last heartbeat (None: it never wrote one)."""
        others = [r for r in range(self.world_size) if r != self.rank]
        found = {}
        for rank in others:
            key = str(rank)
            found[rank] = json.loads(self.store.get(key)) if self.store.check([key]) else None
        return found

    def describe_unresponsive(self, stale_after_s: float | None = None) -> str | None:
        """Which peers stopped responding and for how long, or None if every peer is beating.

        A peer is unresponsive when its last heartbeat is older than ``stale_after_s`` (default:
        three intervals, at least two seconds). Never raises: the diagnosis must not hide the error."""
        stale_after_s = stale_after_s if stale_after_s is not None else max(3 * self.interval_s, 2.0)
        if (peers := self._peers_or_none()) is None:
            return None
        now = time.time()
        silent = [
            describe_peer(rank, beat, now)
            for rank, beat in sorted(peers.items())
            if beat is None or now - beat["time"] > stale_after_s
        ]
        return self._waited_for(silent)

    def describe_compiling(self) -> str | None:
        """The peers still compiling (their heartbeats say so), or None: a collective that timed
        out while a peer compiled waited longer than ``train.timeout`` for that compile."""
        if (peers := self._peers_or_none()) is None:
            return None
        now = time.time()
        busy = [
            f"{peer_identity(rank, beat)} is still {phase.describe(beat['phase'], beat['phase_since'], now)}"
            for rank, beat in sorted(peers.items())
            if beat is not None and beat.get("phase", "").startswith(phase.COMPILING)
        ]
        found = self._waited_for(busy)
        return found and f"{found}: the compile took longer than train.timeout; raise train.timeout"

    def _peers_or_none(self) -> dict[int, dict | None] | None:
        """The peers' heartbeats, or None where the store cannot be read: a diagnosis must not hide the error."""
        try:
            return self.peers()
        except Exception:
            return None

    def _waited_for(self, peers: list[str]) -> str | None:
        if not peers:
            return None
        waited_for = "it" if len(peers) == 1 else "them"
        return f"{'; '.join(peers)}; rank {self.rank} timed out waiting for {waited_for}"


def own_connection(store: dist.Store) -> dist.Store:
    """A connection of the heartbeats' own to ``store`` (see the module docstring), with a short
    timeout; the store itself where it cannot be cloned (torch < 2.5, or a store without clone)."""
    try:
        clone = store.clone()
    except (AttributeError, RuntimeError, NotImplementedError):
        return store
    clone.set_timeout(timedelta(seconds=STORE_TIMEOUT_S))
    return clone


def describe_peer(rank: int, beat: dict | None, now: float) -> str:
    if beat is None:
        return f"rank {rank} never sent a heartbeat"
    return f"{peer_identity(rank, beat)} stopped responding {now - beat['time']:.0f} s ago{process_state(beat)}"


def peer_identity(rank: int, beat: dict) -> str:
    return f"rank {rank} (pid {beat['pid']} on host {beat['host']})"


def process_state(beat: dict) -> str:
    """What this host knows of the peer's process, when it runs here: stopped, or gone."""
    if beat["host"] != socket.gethostname():
        return ""
    try:
        info = proc_stat(beat["pid"])
    except OSError:  # unreadable (another user's, under hidepid): as good as gone, as before
        info = None
    if info is None:
        return " and has exited"
    return " (it is stopped: SIGSTOP or a debugger)" if info[0] in "tT" else ""


def timed_out(exc: BaseException) -> bool:
    """A collective's timeout (gloo: "Timed out waiting ...", NCCL's watchdog: "... timeout")."""
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in ("timed out", "timeout"))


@contextlib.contextmanager
def peer_heartbeats(
    rank: int, world_size: int, store: dist.Store | None = None, interval_s: float = 1.0
) -> Iterator[Heartbeat | None]:
    """Beat while the block runs; an exception raised while a peer is silent becomes an
    UnresponsivePeerError naming that peer (the original error chained). A group of one has no
    peers to wait for: nothing is started then."""
    if world_size < 2:
        yield None
        return
    beat = Heartbeat(rank, world_size, store, interval_s).start()
    try:
        yield beat
    except Exception as exc:
        if (silent := beat.describe_unresponsive()) is not None:
            raise UnresponsivePeerError(silent) from exc
        if timed_out(exc) and (busy := beat.describe_compiling()) is not None:
            raise UnresponsivePeerError(busy) from exc
        raise
    finally:
        beat.stop()
