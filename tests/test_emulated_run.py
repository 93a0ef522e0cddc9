"""python -m ddpbench.netem launch: a training run whose ranks each live in a network namespace and
talk across a shaped link; it records the link, and leaves neither processes nor namespaces behind
when it ends, is stopped or is killed.

Needs root and iproute2 (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import RUN_SCHEMA, alive, child_env

from ddpbench import netem, netem_agents

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="emulated networks need root and iproute2 (ip, tc)",
)


def launch_cmd(prefix: str, data: Path, out: Path, *train_args: str, latency_us: float = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ddpbench.netem",
        "launch",
        "--nodes",
        "2",
        "--bandwidth-gbit",
        "1",
        "--latency-us",
        str(latency_us),
        "--prefix",
        prefix,
        "--",
        "-m",
        "ddpbench.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads-per-worker",
        "1",
        "--max-train-samples",
        "512",
        *train_args,
    ]


def launch_env() -> dict:
    """As the workflow runs timed runs: the machine is the run's (DDPBENCH_PIN=1), all of it granted."""
    env = child_env()
    env.pop("DDPBENCH_JOB_CPUS", None)
    env["DDPBENCH_PIN"] = "1"
    return env


@pytest.mark.slow  # training runs across the link (20 s each)
@pytest.mark.cluster
@needs_root
def test_two_ranks_train_across_an_emulated_link(synthetic_cache, tmp_path):
    prefix = f"trun{os.getpid()}"
    out = tmp_path / "run.json"
    done = subprocess.run(
        launch_cmd(prefix, synthetic_cache, out, "--epochs", "1"),
        capture_output=True,
        text=True,
        timeout=120,
        env=launch_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(out.read_text())
    jsonschema.validate(run, json.loads(RUN_SCHEMA.read_text()))
    assert (run["config"]["world_size"], run["config"]["nnodes"]) == (2, 2)
    link = run["environment"]["emulated_link"]
    assert (link["bandwidth_gbit"], link["latency_us"], link["namespaces"]) == (1, 0, 2)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:  # namespace i's rank on the i-th CPU
        assert [r["cpu_affinity"] for r in sorted(run["ranks"], key=lambda r: r["rank"])] == [[cpus[0]], [cpus[1]]]
    assert "[node 0]" in done.stdout  # each agent's lines say which "node" they come from
    assert netem.namespaces(prefix) == []


def describe_alive(pids: list[int]) -> str:
    """What each live pid is and where it waits: what a failure needs to say which process hung."""
    lines = []
    for pid in pids:
        if alive(pid):
            proc = Path(f"/proc/{pid}")
            argv = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
            wchan = proc.joinpath("wchan").read_text() if proc.joinpath("wchan").exists() else "?"
            lines.append(f"pid {pid} ({argv}) waits in {wchan}")
    return "\n".join(lines) + "\n"


def wait_for_training(launcher: subprocess.Popen, log: Path, prefix: str, timeout: float = 60) -> list[int]:
    """Wait until rank 0 has finished an epoch; the processes then in the launch's namespaces."""
    deadline = time.monotonic() + timeout
    while "Epoch [1/" not in log.read_text():
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    names = netem.namespaces(prefix)
    assert len(names) == 2
    pids = [
        int(p)
        for ns in names
        for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    ]
    assert len(pids) >= 4  # an agent and its rank in each namespace
    return pids


@pytest.mark.slow  # training runs across the link (20 s each)
@pytest.mark.cluster
@needs_root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_or_killed_launch_leaves_nothing_running(synthetic_cache, tmp_path, sig):
    """SIGTERM (how ddpbench.launch stops it): the agents end and the namespaces go before it exits.
    SIGKILL: the agents die with it; its namespaces stay until `netem cleanup` or the next launch."""
    prefix = f"tstop{os.getpid()}"
    log = tmp_path / "launch.log"
    with log.open("w") as fh:
        launcher = subprocess.Popen(
            launch_cmd(prefix, synthetic_cache, tmp_path / "run.json", "--epochs", "100"),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=launch_env(),
        )
    try:
        pids = wait_for_training(launcher, log, prefix)
        launcher.send_signal(sig)
        assert launcher.wait(timeout=20) == (128 + sig if sig == signal.SIGTERM else -sig)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if alive(pid)], describe_alive(pids) + log.read_text()[-3000:]
        if sig == signal.SIGKILL:
            assert len(netem.namespaces(prefix)) == 2  # nothing ran to remove them
            cleanup = [sys.executable, "-m", "ddpbench.netem", "cleanup", "--prefix", prefix]
            removed = subprocess.run(cleanup, capture_output=True, text=True, timeout=60, check=True).stdout
            assert removed.count("removed network namespace") == 2
        assert netem.namespaces(prefix) == []
        assert not (tmp_path / "run.json").exists()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        netem.cleanup_stale(prefix, include_live=True)


@pytest.mark.cluster
@needs_root
def test_latency_without_netem_is_an_error_before_anything_is_created(synthetic_cache, tmp_path, monkeypatch, capsys):
    """Where the kernel has netem, its absence is simulated: the check must come before any namespace."""
    prefix = f"tlat{os.getpid()}"
    cmd = launch_cmd(prefix, synthetic_cache, tmp_path / "run.json", latency_us=50)
    if not netem.netem_available():
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=launch_env())
        code, err = done.returncode, done.stderr
    else:
        monkeypatch.setattr(netem, "netem_available", lambda: False)
        with pytest.raises(SystemExit) as exited:
            netem.main(cmd[3:])
        code, err = exited.value.code, capsys.readouterr().err
    assert code == 2
    assert "latency_us: 50" in err and "netem" in err and "set latency_us to 0" in err
    assert netem.namespaces(prefix) == []
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize(
    ("nodes", "cpus", "env", "expected"),
    [
        (2, {0, 1, 2, 3}, {}, [[0, 1], [2, 3]]),  # the machine divided among the "nodes"
        (2, {4, 6}, {"DDPBENCH_JOB_CPUS": "2"}, [[4], [6]]),  # the i-th CPU of the launcher's affinity
        (3, {0, 1}, {}, None),  # more ranks than CPUs
        (2, {0, 1, 2, 3}, {"DDPBENCH_JOB_CPUS": "2"}, None),  # CPUs shared with other jobs
        (2, {0, 1, 2, 3}, {"DDPBENCH_JOB_CPUS": "2", "DDPBENCH_PIN": "1"}, [[0], [1]]),  # ... unless the host is ours
        (2, {0, 1}, {"DDPBENCH_PIN": "0"}, None),
    ],
)
def test_each_agent_gets_its_own_cpus_where_there_are_enough(monkeypatch, nodes, cpus, env, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    for name in ("DDPBENCH_JOB_CPUS", "DDPBENCH_PIN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert netem_agents.agent_cpus(nodes) == expected


def test_unpinned_ranks_share_the_granted_cpus_and_do_not_pin(monkeypatch):
    """Every agent's rank is local rank 0: left to pin itself, each would take the first core."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setenv("DDPBENCH_JOB_CPUS", "4")
    link = netem_agents.single_rank_link(1.0, 0.0)
    env = netem_agents.agent_env(link, None, nodes=3)
    assert (env["DDPBENCH_JOB_CPUS"], env["DDPBENCH_PIN"]) == ("1", "0")
    assert json.loads(env["DDPBENCH_EMULATED_LINK"]) == link
    assert netem_agents.agent_env(link, 2, nodes=2)["DDPBENCH_JOB_CPUS"] == "2"


def test_each_namespace_runs_an_agent_of_the_shaped_network():
    """Without creating anything: the names and addresses a network will have, what a run records of
    it, and each agent's argv (inside its namespace, c10d on namespace 0, gloo on the shaped interface)."""
    net = netem.EmulatedNetwork(3, bandwidth_gbit=0.5, prefix="targv", subnet="10.9.9")
    assert net.all_namespaces() == [f"targv-{os.getpid()}-{i}" for i in (0, 1, 2)] + [f"targv-{os.getpid()}-hub"]
    assert net.describe()["addresses"] == ["10.9.9.1", "10.9.9.2", "10.9.9.3"]
    assert (net.describe()["topology"], net.describe()["shaping"]) == ("bridge", "tbf")
    argvs = netem_agents.agent_argvs(net, ["-m", "ddpbench.train"])
    assert len(argvs) == 3 and argvs[1][:4] == ["ip", "netns", "exec", net.namespaces[1]]
    agent = " ".join(argvs[1])
    assert "GLOO_SOCKET_IFNAME=veth0" in agent and "--rdzv-endpoint 10.9.9.1:29400" in agent
    assert "is_host=0" in agent and "--local-addr 10.9.9.2" in agent and agent.endswith("-m ddpbench.train")
    assert "--standalone" in netem_agents.agent_argvs(None, ["x"])[0]
    with pytest.raises(netem.EmulationError, match="2 to 253"):
        netem.EmulatedNetwork(1, bandwidth_gbit=1.0)
