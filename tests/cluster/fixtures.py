"""Fixtures for tests that need a SLURM cluster or a two-"host" network.

Load this file by path and bind the fixtures in the test module (tests/conftest.py is
not involved; tests/ is not a package, and "fixtures" is also a PyPI package name)::

    _fx = load_cluster_fixtures()          # see tests/test_multinode.py
    slurm_cluster = _fx.slurm_cluster

Both fixtures skip, with the reason, where the machine cannot provide them (not root,
binaries missing, network namespaces not permitted); a cluster that is there but fails
to start is a test error, with the daemons' log tails in the message.

* ``slurm_cluster`` (module scope): a one-node SLURM cluster started by
  tests/cluster/slurm.sh in a temporary directory and stopped at teardown. Its jobs are
  bound to their CPUs, as on real clusters: by task/affinity, or with
  ``@pytest.mark.parametrize("slurm_cluster", TASK_PLUGINS, indirect=True)`` also by
  task/cgroup (skipped where cgroups cannot be made; ``"cgroup|affinity"`` takes the first
  that the machine can give). Pytest keeps one instance alive at a
  time, so the two configurations never run at once. Run client tools with
  ``cluster.env`` (it carries SLURM_CONF and puts this venv first on PATH, so jobs find
  torchrun and snakemake); ``cluster.snakemake_args`` are the flags a workflow test needs
  on top of ``--workflow-profile profiles/slurm``.
* ``netns_pair`` (function scope): network namespaces PREFIX-a / PREFIX-b joined by a
  veth pair (tests/cluster/netns.sh); traffic stays inside them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLURM_SH = HERE / "slurm.sh"
NETNS_SH = HERE / "netns.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
UNSUPPORTED = 3  # exit status of slurm.sh / netns.sh: "cannot run here", i.e. skip

# SLURM_TASK_PLUGIN values of slurm.sh: how jobs are bound to the CPUs they were allocated.
TASK_PLUGINS = ("affinity", "cgroup")

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "srun", "sinfo", "squeue", "scontrol", "scancel")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def missing_binaries(names) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def venv_env(**extra: str) -> dict:
    """os.environ with this interpreter's bin directory first on PATH (torchrun, snakemake)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- SLURM


@dataclass
class SlurmCluster:
    statedir: Path
    conf: Path
    task_plugin: str  # one of TASK_PLUGINS
    env: dict = field(repr=False)
    # Flags for `snakemake --workflow-profile profiles/slurm ...` against this cluster: the
    # first status check after 2 s instead of 40 s (MinJobAge=300 keeps squeue reliable).
    snakemake_args: tuple[str, ...] = ("--slurm-init-seconds-before-status-checks", "2")

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run a client command (srun, sbatch, snakemake, ...) against this cluster."""
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{_tail(proc.stdout)}\n"
                f"stderr:\n{_tail(proc.stderr)}\n{self.log_tails()}"
            )
        return proc

    def log_tails(self, lines: int = 20) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.statedir / "log" / name
            if path.exists():
                parts.append(f"--- {path}\n{_tail(path.read_text(errors='replace'), lines)}")
        return "\n".join(parts)


def _slurm_statedir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slurm")
    # The munge socket lives at STATEDIR/run/munge.socket.2; unix socket paths are
    # limited to 107 bytes, and a long --basetemp could exceed that.
    if len(str(path / "run" / "munge.socket.2")) > 100:
        path = Path(tempfile.mkdtemp(prefix="ddpb-slurm-", dir="/tmp"))
    return path


@pytest.fixture(scope="module")
def slurm_cluster(request, tmp_path_factory):
    choices = getattr(request, "param", "affinity")
    if not is_root():
        pytest.skip("SLURM test cluster needs root (slurmd and munged run as root)")
    missing = missing_binaries(SLURM_BINARIES)
    if missing:
        pytest.skip(
            f"SLURM/munge binaries missing: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)"
        )
    # "cgroup|affinity": the first of these that this machine can give.
    for task_plugin in choices.split("|"):
        statedir = _slurm_statedir(tmp_path_factory)
        start = subprocess.run(
            ["bash", str(SLURM_SH), "start", str(statedir)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "SLURM_TASK_PLUGIN": task_plugin},
        )
        if start.returncode != UNSUPPORTED:
            break
    if start.returncode == UNSUPPORTED:
        pytest.skip(f"slurm.sh cannot run here: {start.stderr.strip()}")
    if start.returncode != 0:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(statedir)], capture_output=True, timeout=60)
        pytest.fail(f"slurm.sh start failed ({start.returncode}):\n{_tail(start.stderr, 120)}")
    conf = statedir / "slurm.conf"
    cluster = SlurmCluster(statedir=statedir, conf=conf, task_plugin=task_plugin, env=venv_env(SLURM_CONF=str(conf)))
    try:
        yield cluster
    finally:
        stop = subprocess.run(
            ["bash", str(SLURM_SH), "stop", str(statedir)], capture_output=True, text=True, timeout=120
        )
        if stop.returncode != 0:
            print(f"slurm.sh stop failed ({stop.returncode}): {stop.stderr}", file=sys.stderr)


# --------------------------------------------------------------------------- network namespaces


@dataclass(frozen=True)
class NetnsPair:
    ns_a: str
    ns_b: str
    ifname: str  # the veth end's name, the same in both namespaces
    addr_a: str
    addr_b: str

    def exec_prefix(self, ns: str, **env: str) -> list[str]:
        """argv prefix running a command inside namespace `ns` with extra environment."""
        return ["ip", "netns", "exec", ns, "env", *(f"{k}={v}" for k, v in env.items())]


@pytest.fixture
def netns_pair():
    if not is_root():
        pytest.skip("network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
    if shutil.which("ip") is None:
        pytest.skip("'ip' (iproute2) not found")
    prefix = f"ddpb{os.getpid()}"
    up = subprocess.run(["bash", str(NETNS_SH), "up", prefix], capture_output=True, text=True, timeout=60)
    if up.returncode == UNSUPPORTED:
        pytest.skip(f"cannot create network namespaces here: {up.stderr.strip()}")
    if up.returncode != 0:
        subprocess.run(["bash", str(NETNS_SH), "down", prefix], capture_output=True, timeout=60)
        pytest.fail(f"netns.sh up failed ({up.returncode}):\n{up.stderr}")
    kv = dict(line.split("=", 1) for line in up.stdout.split() if "=" in line)
    try:
        yield NetnsPair(kv["NS_A"], kv["NS_B"], kv["IFNAME"], kv["ADDR_A"], kv["ADDR_B"])
    finally:
        subprocess.run(["bash", str(NETNS_SH), "down", prefix], capture_output=True, timeout=60)
