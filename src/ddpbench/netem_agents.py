"""The torchrun agents of ``python -m ddpbench.netem launch``: one per network namespace, each with
one rank, its own CPUs where there are enough, the link it crosses in its environment
(DDPBENCH_EMULATED_LINK, recorded in the run), its output relayed with its node's name, and an end
when the launcher dies, however it dies (the namespaces outlive a SIGKILL; the agents must not).

ddpbench.netem builds the network and runs the launch; the supervision itself (parent-death
signals, relaying, grace-then-kill) is ddpbench.supervise's.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ddpbench.cpus import core_block, job_cpus, may_pin
from ddpbench.supervise import dies_with_this_process, end_processes, exit_code, relay_output

if TYPE_CHECKING:  # for the annotations only: ddpbench.netem imports this module
    from ddpbench.netem import EmulatedNetwork

AGENT_GRACE_S = 5.0  # SIGTERM to SIGKILL; ddpbench.launch kills everything 10 s after its own SIGTERM


def log(message: str) -> None:
    print(f"ddpbench.netem: {message}", file=sys.stderr, flush=True)


def agent_cpus(nodes: int) -> list[list[int]] | None:
    """The CPUs of each agent (a block per namespace, in the launcher's affinity order), or None: leave
    the ranks unpinned. Pins as ddpbench.distributed.pin_to_cores does (``cpus.may_pin``): not with
    DDPBENCH_PIN=0, nor when this launch was granted fewer CPUs than it sees (DDPBENCH_JOB_CPUS;
    another job may share them) unless DDPBENCH_PIN=1, nor with more ranks than granted CPUs."""
    cores = len(os.sched_getaffinity(0))
    granted = job_cpus(cores)
    per_agent = granted // nodes
    if not may_pin(per_agent >= 1, granted == cores):
        return None
    return [core_block(i, per_agent) for i in range(nodes)]


def agent_env(link: dict, cpus_per_agent: int | None, nodes: int) -> dict[str, str]:
    """The agents' environment: the link to record, and the CPUs that threads_per_worker: auto divides
    (each agent is a node of one rank, so the engine must not count the whole machine as its own)."""
    env = {**os.environ, "DDPBENCH_EMULATED_LINK": json.dumps(link)}
    if cpus_per_agent is not None:
        env["DDPBENCH_JOB_CPUS"] = str(cpus_per_agent)
    else:  # every rank is local rank 0: pinning would put them all on the first core
        env.update(DDPBENCH_JOB_CPUS=str(max(1, job_cpus(len(os.sched_getaffinity(0))) // nodes)), DDPBENCH_PIN="0")
    return env


def agent_argvs(net: EmulatedNetwork | None, args: Sequence[str]) -> list[list[str]]:
    """One torchrun agent per namespace; a single rank (no network) runs a standalone torchrun."""
    if net is None:
        return [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *args]]
    run_id = f"netem-{os.getpid()}"
    return [[*net.exec_prefix(i), *net.torchrun(i, args, run_id)] for i in range(net.size)]


def start_agents(
    argvs: list[list[str]], cpus: list[list[int]] | None, env: dict[str, str], procs: list[subprocess.Popen]
) -> None:
    """Start every agent, each added to ``procs`` at once (for the clean-up, should a signal come), then
    relay their output: the threads only after the forks, as preexec_fn and threads do not mix."""
    for i, argv in enumerate(argvs):
        pin = functools.partial(os.sched_setaffinity, 0, cpus[i]) if cpus else None
        preexec = dies_with_this_process(then=pin)
        procs.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec)
        )
    relay_output(procs, [f"[node {i}] ".encode() if len(procs) > 1 else b"" for i in range(len(procs))])


def wait_for_agents(procs: list[subprocess.Popen]) -> int:
    """Wait for every agent; the first non-zero exit ends the others and is the launch's exit code."""
    while running := [p for p in procs if p.poll() is None]:
        failed = [p for p in procs if p.returncode]
        if failed:
            code = exit_code(failed[0].returncode)
            log(f"node {procs.index(failed[0])} exited with {code}: ending the other {len(running)}")
            end_processes(procs, AGENT_GRACE_S)
            return code
        time.sleep(0.1)
    return next((exit_code(p.returncode) for p in procs if p.returncode), 0)


def single_rank_link(bandwidth_gbit: float, latency_us: float) -> dict:
    """What a run of one rank records: the link it was configured with, though nothing crosses it."""
    return {
        "namespaces": 0,
        "bandwidth_gbit": bandwidth_gbit,
        "latency_us": latency_us,
        "topology": "none",
        "shaping": "none",
        "ifname": None,
        "addresses": [],
    }


def describe_launch(link: dict, cpus: list[list[int]] | None) -> str:
    latency = f", {link['latency_us']:g} us each way" if link["latency_us"] else ""
    where = (
        f"{link['namespaces']} namespaces joined by a {link['topology']}" if link["namespaces"] else "one rank, no link"
    )
    if cpus:
        pinning = "pinned: " + ", ".join(f"node {i} on CPU {','.join(map(str, c))}" for i, c in enumerate(cpus))
    else:
        pinning = "ranks not pinned (more ranks than granted CPUs, DDPBENCH_PIN=0, or CPUs shared with other jobs)"
    return f"{where} at {link['bandwidth_gbit']:g} Gbit/s{latency}; {pinning}"
