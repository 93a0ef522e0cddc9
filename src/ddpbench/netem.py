"""Emulated networks on one machine: N network namespaces joined by shaped links (Linux, root).

Two namespaces are joined by one veth pair; more than two each get a veth pair to a bridge in a
hub namespace. Every link is shaped in both directions with ``tc``: bandwidth with a token bucket
(``tbf``) and, where the kernel has it, one-way latency with ``netem``. Every interface is created
inside the namespaces, and the addresses (a private /24, ``.1`` to ``.N``) exist only there, so
no traffic reaches the host's network. Interface names are the same in every namespace
(``veth0``), so one ``GLOO_SOCKET_IFNAME`` fits all "hosts".

    with EmulatedNetwork(2, bandwidth_gbit=1.0) as net:
        net.run(0, ["python", "-c", "..."])          # inside namespace 0 (ip netns exec)
        net.popen(1, [...], env=...)                 # ended when the block ends

Everything is removed when the block ends, on an error, and on SIGTERM, SIGHUP or SIGINT.
After a SIGKILL, ``cleanup_stale(prefix)`` removes what a dead owner left. Namespace names
are PREFIX-PID-INDEX (and PREFIX-PID-hub), so live owners' namespaces can be told apart.

A training run across such a network (what the workflow's ``train.emulate_network`` runs):

    python -m ddpbench.netem launch --nodes 2 --bandwidth-gbit 1 -- -m ddpbench.train --data DIR --out run.json

starts one torchrun agent with one rank in each namespace, each on its own CPUs where there are
enough, hands the ranks the link as JSON (DDPBENCH_EMULATED_LINK, recorded in the run) and ends
the agents, which also die with it if it is killed, and the network whatever happens. The agents
themselves (argv, CPUs, environment, start and wait) are ddpbench.netem_agents'; the process
supervision both use (parent-death signals, grace-then-kill, signal handlers) is ddpbench.supervise's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from functools import cache

from ddpbench import netem_agents as agents
from ddpbench.supervise import (
    end_processes,
    exit_on_signals,
    handle_signals,
    pid_exists,
    restore_signals,
    signal_all,
)

DEFAULT_PREFIX = "ddpbn"
DEFAULT_SUBNET = "10.231.8"
IFNAME = "veth0"
RDZV_PORT = 29400  # nothing else listens inside a fresh namespace
BRIDGE = "br0"
_NAME = re.compile(r"^[A-Za-z0-9_.]{1,24}$")


class EmulationError(RuntimeError):
    """The network cannot be emulated here; the message says why and what to do."""


class NotRootError(EmulationError):
    pass


class NetemUnavailableError(EmulationError):
    pass


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise EmulationError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def require_tools() -> None:
    """Root and iproute2, or an error that says which is missing."""
    if os.geteuid() != 0:
        raise NotRootError(
            "emulating a network needs root (network namespaces, veth pairs and tc need CAP_NET_ADMIN and "
            "CAP_SYS_ADMIN); run as root, or remove the emulated network from the configuration"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise EmulationError(f"{' and '.join(missing)} not found; install iproute2 (apt-get install iproute2)")


@cache
def netem_available() -> bool:
    """Whether this kernel has the netem qdisc: tried on the loopback of a throwaway namespace."""
    require_tools()
    probe = f"{DEFAULT_PREFIX}-{os.getpid()}-probe"
    _run("ip", "netns", "add", probe)
    try:
        tried = _run("tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
    finally:
        _run("ip", "netns", "delete", probe, check=False)
    return tried.returncode == 0


def require_emulation(bandwidth_gbit: float, latency_us: float = 0.0) -> None:
    """Check, before anything is created, that this link can be emulated here."""
    if not bandwidth_gbit > 0 or not latency_us >= 0:
        raise EmulationError(f"bandwidth_gbit must be > 0 and latency_us >= 0, got {bandwidth_gbit}, {latency_us}")
    require_tools()
    if latency_us > 0 and not netem_available():
        raise NetemUnavailableError(
            f"latency_us: {latency_us} needs the netem qdisc, which this kernel does not have "
            "(tc: 'Specified qdisc kind is unknown'; load sch_netem or use a kernel built with "
            "CONFIG_NET_SCH_NETEM); bandwidth alone works: set latency_us to 0"
        )


def shape(namespace: str, device: str, bandwidth_gbit: float, latency_us: float = 0.0) -> None:
    """Limit what ``device`` sends to ``bandwidth_gbit`` (tbf), after ``latency_us`` (netem) if given.

    The bucket holds at least 64 KiB, so the 64 KiB segments veth hands over pass whole, and the
    queue up to 20 ms of traffic, enough for TCP to keep the link busy."""
    rate_bytes = bandwidth_gbit * 1e9 / 8
    burst = max(64 * 1024, int(rate_bytes / 1000))
    tbf = ["tbf", "rate", f"{int(bandwidth_gbit * 1e9)}bit", "burst", str(burst), "latency", "20ms"]
    tc = ["tc", "-n", namespace, "qdisc", "add", "dev", device]
    if latency_us > 0:
        _run(*tc, "root", "handle", "1:", "netem", "delay", f"{latency_us}us", "limit", "100000")
        _run(*tc, "parent", "1:1", "handle", "10:", *tbf)
    else:
        _run(*tc, "root", *tbf)


def check_prefix(prefix: str) -> None:
    if not _NAME.match(prefix):
        raise EmulationError(f"prefix {prefix!r}: use 1 to 24 letters, digits, '_' or '.'")


def namespaces(prefix: str) -> list[str]:
    """Names of the network namespaces that start with ``prefix``-."""
    listed = _run("ip", "netns", "list").stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(f"{prefix}-")]


def delete_namespace(name: str) -> None:
    """End the processes still inside ``name`` (started there by its owner), then delete it:
    its interfaces, and with them their veth peers, go with it."""
    pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
    signal_all(map(int, pids), signal.SIGKILL)
    _run("ip", "netns", "delete", name, check=False)


def _owner_alive(name: str, prefix: str) -> bool:
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)-\w+", name)
    return match is not None and pid_exists(int(match.group(1)))


def cleanup_stale(prefix: str = DEFAULT_PREFIX, include_live: bool = False) -> list[str]:
    """Remove the namespaces (and so the links) named ``prefix``-PID-... whose owning process is
    gone, as a SIGKILLed run leaves them; ``include_live`` removes those of live owners too.
    Returns the names removed."""
    require_tools()
    stale = [ns for ns in namespaces(prefix) if include_live or not _owner_alive(ns, prefix)]
    for ns in stale:
        delete_namespace(ns)
    return stale


class Links:
    """The namespaces of an emulated network and the links between them, shaped to ``bandwidth_gbit``
    (and ``latency_us``) each way: their names and addresses, fixed before anything exists, their
    creation and their removal.

    Namespace i is ``namespaces[i]`` with address ``addresses[i]`` on interface ``ifname``."""

    def __init__(
        self,
        size: int,
        bandwidth_gbit: float,
        latency_us: float = 0.0,
        prefix: str = DEFAULT_PREFIX,
        subnet: str = DEFAULT_SUBNET,
    ):
        if not 2 <= size <= 253:
            raise EmulationError(f"an emulated network needs 2 to 253 namespaces, got {size}")
        check_prefix(prefix)
        if not re.fullmatch(r"10\.\d{1,3}\.\d{1,3}", subnet):
            raise EmulationError(f"subnet {subnet!r}: give the first three octets of a private 10.x.y.0/24")
        self.size, self.bandwidth_gbit, self.latency_us, self.prefix = size, bandwidth_gbit, latency_us, prefix
        owner = f"{prefix}-{os.getpid()}"
        self.namespaces = [f"{owner}-{i}" for i in range(size)]
        self.hub = f"{owner}-hub" if size > 2 else None
        self.addresses = [f"{subnet}.{i + 1}" for i in range(size)]
        self.ifname = IFNAME

    def all_namespaces(self) -> list[str]:
        """The "hosts'" namespaces and, for more than two, the hub's."""
        return [*self.namespaces, *([self.hub] if self.hub else [])]

    def create(self) -> None:
        for ns in self.all_namespaces():
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        if self.hub is None:  # two: one veth pair, created directly inside the namespaces
            a, b = self.namespaces
            _run("ip", "link", "add", IFNAME, "netns", a, "type", "veth", "peer", "name", IFNAME, "netns", b)
        else:
            _run("ip", "-n", self.hub, "link", "add", BRIDGE, "type", "bridge")
            _run("ip", "-n", self.hub, "link", "set", BRIDGE, "up")
            for i, ns in enumerate(self.namespaces):
                port = f"port{i}"
                _run("ip", "link", "add", IFNAME, "netns", ns, "type", "veth", "peer", "name", port, "netns", self.hub)
                _run("ip", "-n", self.hub, "link", "set", port, "master", BRIDGE, "up")
                shape(self.hub, port, self.bandwidth_gbit, self.latency_us)  # towards namespace i
        for ns, address in zip(self.namespaces, self.addresses, strict=True):
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", IFNAME)
            _run("ip", "-n", ns, "link", "set", IFNAME, "up")
            shape(ns, IFNAME, self.bandwidth_gbit, self.latency_us)  # what namespace i sends
        self._wait_until_up()

    def _wait_until_up(self, timeout_s: float = 5.0) -> None:
        """A veth end may take a moment to report carrier: wait, so callers can connect at once."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [_run("ip", "-n", ns, "-br", "link", "show", IFNAME).stdout for ns in self.namespaces]
            if all(" UP " in s for s in states):
                return
            if time.monotonic() > deadline:
                raise EmulationError(f"the emulated links did not come up within {timeout_s} s: {states}")
            time.sleep(0.05)

    def remove(self) -> None:
        """Remove every namespace of this network that exists (and so every link)."""
        present = set(namespaces(self.prefix))
        for ns in self.all_namespaces():
            if ns in present:
                delete_namespace(ns)

    def describe(self) -> dict:
        """What a run records about the link it crossed."""
        return {
            "namespaces": self.size,
            "bandwidth_gbit": self.bandwidth_gbit,
            "latency_us": self.latency_us,
            "topology": "bridge" if self.hub else "veth pair",
            "shaping": "tbf" + (" + netem" if self.latency_us else ""),
            "ifname": self.ifname,
            "addresses": list(self.addresses),
        }


class EmulatedNetwork(Links):
    """The links of ``Links`` (same arguments) for the length of a ``with`` block, and the processes
    run in their namespaces: on leaving the block (on an error too, and on SIGTERM or SIGHUP, which
    raise SystemExit meanwhile), the processes started here end and then the namespaces go."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._procs: list[subprocess.Popen] = []
        self._previous_handlers: dict[int, object] = {}

    def __enter__(self) -> EmulatedNetwork:
        require_emulation(self.bandwidth_gbit, self.latency_us)
        self._catch_signals()
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def exec_prefix(self, index: int, **env: str) -> list[str]:
        """Argv prefix that runs a command in namespace ``index``, with ``env`` added to its environment."""
        return ["ip", "netns", "exec", self.namespaces[index], "env", *(f"{k}={v}" for k, v in env.items())]

    def popen(self, index: int, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` in namespace ``index``; it is ended, if still running, when the network goes."""
        proc = subprocess.Popen([*self.exec_prefix(index), *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, index: int, argv: Sequence[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` to completion in namespace ``index``."""
        return subprocess.run([*self.exec_prefix(index), *argv], timeout=timeout, **kwargs)

    def torchrun(
        self, index: int, args: Sequence[str], run_id: str, nproc_per_node: int = 1, port: int = RDZV_PORT
    ) -> list[str]:
        """Argv of the torchrun agent of "node" ``index`` (run it with ``popen(index, ...)``): a c10d
        rendezvous on namespace 0's address, gloo on the shaped interface. ``args`` follow torchrun's
        own options (``-m ddpbench.commbench --out ...``)."""
        rdzv = self.addresses[0]
        return [
            "env",
            f"GLOO_SOCKET_IFNAME={self.ifname}",
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(self.size),
            "--nproc-per-node",
            str(nproc_per_node),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"{rdzv}:{port}",
            "--rdzv-id",
            run_id,
            # The agent decides whether it hosts the store by matching the endpoint against the host
            # name's addresses, which the namespace's address is not among; and it advertises its host
            # name, which does not resolve to that address: say both.
            "--rdzv-conf",
            f"is_host={int(index == 0)},join_timeout=60",
            "--local-addr",
            self.addresses[index],
            "--max-restarts",
            "0",
            *args,
        ]

    def close(self) -> None:
        """End the processes started here, then remove every namespace (and so every link) of this network."""
        end_processes(self._procs, grace_s=5.0)
        self._procs = []
        self.remove()
        restore_signals(self._previous_handlers)
        self._previous_handlers = {}

    def _catch_signals(self) -> None:
        """Turn SIGTERM and SIGHUP into SystemExit (SIGINT already raises), so the block's exit runs."""
        if threading.current_thread() is threading.main_thread():
            self._previous_handlers = exit_on_signals((signal.SIGTERM, signal.SIGHUP))


# --------------------------------------------------------------------------- launch: one torchrun agent per namespace

LEAVING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def launch(
    nodes: int, bandwidth_gbit: float, latency_us: float, args: Sequence[str], prefix: str = DEFAULT_PREFIX
) -> int:
    """Run ``args`` (torchrun's, after its options) with one rank in each of ``nodes`` namespaces joined by
    shaped links; the exit code is the first non-zero one of the agents, or 128 + the signal that ended
    the launch. Whatever happens, the agents end and the namespaces go before this returns."""
    check_prefix(prefix)
    require_emulation(bandwidth_gbit, latency_us)
    for name in cleanup_stale(prefix):
        agents.log(f"removed network namespace {name}, left by a launch that was killed")
    cpus = agents.agent_cpus(nodes)
    received: list[int] = []
    previous = exit_on_signals(LEAVING_SIGNALS, received)
    procs: list[subprocess.Popen] = []
    try:
        with contextlib.ExitStack() as stack:
            net = stack.enter_context(EmulatedNetwork(nodes, bandwidth_gbit, latency_us, prefix)) if nodes > 1 else None
            exit_on_signals(LEAVING_SIGNALS, received)  # in place of the network's own, which it restores on closing
            link = net.describe() if net else agents.single_rank_link(bandwidth_gbit, latency_us)
            agents.log(agents.describe_launch(link, cpus))
            try:
                env = agents.agent_env(link, len(cpus[0]) if cpus else None, nodes)
                agents.start_agents(agents.agent_argvs(net, args), cpus, env, procs)
                return agents.wait_for_agents(procs)
            finally:
                handle_signals(LEAVING_SIGNALS, signal.SIG_IGN)  # a second signal must not cut the clean-up short
                if received:
                    agents.log(f"got {signal.Signals(received[0]).name}: ending the agents and removing the network")
                end_processes(procs, agents.AGENT_GRACE_S)
    finally:
        restore_signals(previous)


@contextlib.contextmanager
def emulated_network(
    size: int, bandwidth_gbit: float, latency_us: float = 0.0, prefix: str = DEFAULT_PREFIX
) -> Iterator[EmulatedNetwork]:
    """``with emulated_network(2, 1.0) as net:`` the same as ``with EmulatedNetwork(2, 1.0) as net``."""
    with EmulatedNetwork(size, bandwidth_gbit, latency_us, prefix) as net:
        yield net


def node_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 253:
        raise argparse.ArgumentTypeError(f"{text!r}: give the number of ranks, 1 to 253 (one namespace each)")
    return int(text)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m ddpbench.netem", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="exit 0 if this link can be emulated here, else say why (exit 2)")
    check.add_argument("--bandwidth-gbit", type=float, required=True)
    check.add_argument("--latency-us", type=float, default=0.0)
    clean = sub.add_parser("cleanup", help="remove namespaces left by dead owners (after a SIGKILL)")
    clean.add_argument("--prefix", default=DEFAULT_PREFIX)
    clean.add_argument("--all", action="store_true", help="also those of owners still running")
    run = sub.add_parser(
        "launch",
        help="one torchrun agent with one rank per namespace, the namespaces joined by shaped links",
        usage="python -m ddpbench.netem launch --nodes W --bandwidth-gbit G [--latency-us U] [--prefix P] "
        "-- -m ddpbench.train ...",
        description="Start W namespaces joined by links shaped to G Gbit/s (and U us each way, where the kernel "
        "has netem), one torchrun agent with one rank in each (c10d rendezvous on namespace 0, gloo on the "
        "shaped interface), each agent on its own CPUs where there are enough. The ranks get "
        "DDPBENCH_EMULATED_LINK, the link as JSON. Exits with the first non-zero exit code of the agents; "
        "the agents end and the namespaces go on exit, on a failure and on SIGTERM, SIGINT or SIGHUP.",
    )
    run.add_argument("--nodes", type=node_count, required=True, help="ranks, one namespace each")
    run.add_argument("--bandwidth-gbit", type=float, required=True, help="each link's rate, each way")
    run.add_argument("--latency-us", type=float, default=0.0, help="one-way delay; > 0 needs netem (default 0)")
    run.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"namespace names' prefix (default {DEFAULT_PREFIX})")
    run.add_argument("args", nargs=argparse.REMAINDER, help="torchrun's arguments after its options, after --")
    args = p.parse_args(argv)
    if args.command == "launch":
        args.args = args.args[1:] if args.args[:1] == ["--"] else args.args
        if not args.args:
            run.error("nothing to run: put torchrun's arguments after --, e.g. -- -m ddpbench.train --data DIR")
    return p, args


def main(argv: Sequence[str] | None = None) -> int:
    p, args = parse_args(argv)
    try:
        if args.command == "check":
            require_emulation(args.bandwidth_gbit, args.latency_us)
        elif args.command == "cleanup":
            for name in cleanup_stale(args.prefix, include_live=args.all):
                print(f"removed network namespace {name}")
        else:
            return launch(args.nodes, args.bandwidth_gbit, args.latency_us, args.args, args.prefix)
    except EmulationError as exc:
        p.exit(2, f"ddpbench.netem: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
