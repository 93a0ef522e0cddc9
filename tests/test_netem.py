"""ddpbench.netem: shaped links between network namespaces carry real TCP at the shaped rate,
and leave nothing behind, whether the owner ends normally, on SIGTERM or on SIGKILL.

Needs root and iproute2 (skipped with the reason otherwise). Traffic stays inside the
namespaces the tests create (a private /24 that exists only there)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ddpbench import netem

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
        reason="emulated networks need root and iproute2 (ip, tc)",
    ),
]
REPO = Path(__file__).resolve().parents[1]

PORT = 5201
# A receiver that reports the goodput after the first MiB (past the token bucket's initial
# burst and TCP's slow start), and a sender bounded in time and bytes.
RECEIVER = textwrap.dedent("""
    import json, socket, sys, time
    srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
    srv.settimeout(20)
    conn, _ = srv.accept()
    total, start, counted = 0, None, 0
    while chunk := conn.recv(1 << 16):
        total += len(chunk)
        if start is None and total >= 1 << 20:
            start, counted = time.perf_counter(), total
    end = time.perf_counter()
    print(json.dumps({"bytes": total, "bits_per_s": 8 * (total - counted) / (end - start)}))
""")
SENDER = textwrap.dedent("""
    import socket, sys, time
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    payload, sent, stop = b"x" * (1 << 16), 0, time.monotonic() + float(sys.argv[3])
    while time.monotonic() < stop and sent < int(sys.argv[4]):
        sock.sendall(payload)
        sent += len(payload)
    sock.close()
""")


def goodput(net: netem.EmulatedNetwork, sender: int, receiver: int, seconds: float, max_bytes: int) -> float:
    """Bits per second of one TCP stream from namespace ``sender`` to ``receiver``."""
    address = net.addresses[receiver]
    rx = net.popen(receiver, [sys.executable, "-c", RECEIVER, address, str(PORT)], stdout=subprocess.PIPE, text=True)
    net.run(sender, [sys.executable, "-c", SENDER, address, str(PORT), str(seconds), str(max_bytes)], check=True)
    out, _ = rx.communicate(timeout=30)
    assert rx.returncode == 0, out
    return json.loads(out)["bits_per_s"]


def host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow  # two seconds of shaped traffic
def test_two_namespaces_carry_tcp_at_the_shaped_rate():
    prefix = f"tnetem{os.getpid()}"
    before = host_links()
    with netem.EmulatedNetwork(2, bandwidth_gbit=0.1, prefix=prefix) as net:
        assert sorted(netem.namespaces(prefix)) == sorted(net.namespaces)
        rate = goodput(net, 0, 1, seconds=2.0, max_bytes=50_000_000)
        # TCP/IP headers take about 4 % of each 1514-byte frame the bucket counts.
        assert rate == pytest.approx(100e6, rel=0.2), f"{rate / 1e6:.1f} Mbit/s through a 100 Mbit/s link"
        assert net.describe()["bandwidth_gbit"] == 0.1
    assert netem.namespaces(prefix) == []
    assert host_links() == before  # no interface ever appeared on the host


@pytest.mark.slow  # 1.5 seconds of shaped traffic
def test_more_than_two_namespaces_meet_through_a_shaped_bridge():
    prefix = f"tbridge{os.getpid()}"
    with netem.EmulatedNetwork(3, bandwidth_gbit=0.1, prefix=prefix) as net:
        assert len(netem.namespaces(prefix)) == 4  # three hosts and the hub holding the bridge
        rate = goodput(net, 2, 0, seconds=1.5, max_bytes=40_000_000)
        assert rate == pytest.approx(100e6, rel=0.2), f"{rate / 1e6:.1f} Mbit/s through a 100 Mbit/s bridge port"
    assert netem.namespaces(prefix) == []


def test_latency_needs_netem():
    prefix = f"tlat{os.getpid()}"
    if netem.netem_available():
        with netem.EmulatedNetwork(2, bandwidth_gbit=1.0, latency_us=5000, prefix=prefix) as net:
            ping = net.run(0, ["ping", "-c", "3", "-i", "0.2", net.addresses[1]], capture_output=True, text=True)
            rtt_ms = float(ping.stdout.rsplit("=", 1)[1].split("/")[1])
            assert rtt_ms == pytest.approx(10.0, rel=0.3)  # 5 ms each way
    else:
        with pytest.raises(netem.NetemUnavailableError, match="netem.*latency_us to 0"):
            netem.EmulatedNetwork(2, bandwidth_gbit=1.0, latency_us=50, prefix=prefix).__enter__()
    assert netem.namespaces(prefix) == []


def test_not_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netem.NotRootError, match="needs root"):
        netem.require_emulation(1.0)


OWNER = textwrap.dedent("""
    import sys, time
    from ddpbench import netem
    with netem.EmulatedNetwork(2, bandwidth_gbit=1.0, prefix=sys.argv[1]) as net:
        print("ready", flush=True)
        time.sleep(60)
""")


def start_owner(prefix: str) -> subprocess.Popen:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, prefix], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "ready"
    assert len([ns for ns in netem.namespaces(prefix) if ns.startswith(f"{prefix}-{owner.pid}-")]) == 2
    return owner


def test_sigterm_removes_the_network():
    prefix = f"tterm{os.getpid()}"
    owner = start_owner(prefix)
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=20) == 128 + signal.SIGTERM
    assert netem.namespaces(prefix) == []


def test_cleanup_stale_removes_what_a_killed_owner_left():
    prefix = f"tkill{os.getpid()}"
    live = start_owner(prefix)
    try:
        killed = start_owner(prefix)
        killed.kill()
        killed.wait(timeout=10)
        leftover = {ns for ns in netem.namespaces(prefix) if ns.startswith(f"{prefix}-{killed.pid}-")}
        assert len(leftover) == 2  # a SIGKILL runs no clean-up
        assert set(netem.cleanup_stale(prefix)) == leftover  # the live owner's network is left alone
        assert {ns.split("-")[1] for ns in netem.namespaces(prefix)} == {str(live.pid)}
    finally:
        live.terminate()
        live.wait(timeout=20)
        netem.cleanup_stale(prefix, include_live=True)
    assert netem.namespaces(prefix) == []


@pytest.mark.slow  # a commbench run of two torchrun agents (about 30 s)
@pytest.mark.alone  # the fitted bandwidth is the link's or a little below: another test's load would lower it
def test_commbench_across_an_emulated_link_fits_its_bandwidth(tmp_path):
    """Two ranks, one per namespace, all-reduce over a 1 Gbit/s link: the fitted ring model's bandwidth
    is the link's, less TCP/IP's headers (about 5 %), and less what a 2-core VM loses to moving the
    bytes through the shaped veth pair: seven runs alone on a 2-core EPYC fitted 0.54-0.94 Gbit/s, five
    of them under 0.81. Unshaped loopback would fit tens of Gbit/s; a ring factor off by two, under 0.5."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "commbench_netem.py"),
            "--bandwidth-gbit",
            "1",
            "--sizes",
            "8,512,32768,262144,1048576,4194304",
            "--reps",
            "5",
            "--timeout",
            "60",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["world_size"] == 2
    assert 0.5 < summary["fitted_gbit"] < 1.1, summary
    assert netem.namespaces("cbnetem") == []
