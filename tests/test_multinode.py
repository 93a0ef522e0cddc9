"""Multi-node launches on one machine: DDP across two network namespaces, and a SLURM cluster.

Needs root; skips (with the reason) where namespaces or SLURM are not available.
Run: pytest -q -m cluster tests/test_multinode.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # every test starts a cluster or torchrun launches


def load_cluster_fixtures():
    """tests/cluster/fixtures.py, loaded by path (tests/ is not a package)."""
    name = "ddpbench_cluster_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "cluster" / "fixtures.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_fx = load_cluster_fixtures()
netns_pair = _fx.netns_pair
slurm_cluster = _fx.slurm_cluster
# Both ways a real cluster binds a job to its CPUs (cgroup: where this machine lets slurmd make cgroups).
on_both_task_plugins = pytest.mark.parametrize("slurm_cluster", _fx.TASK_PLUGINS, indirect=True)
# Binding shows only where a job can be given fewer CPUs than the node has.
two_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the SLURM node needs 2 CPUs to show CPU binding")

EPOCHS = 2
RDZV_PORT = 29400  # inside a fresh namespace nothing else listens, so a fixed port is safe
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # no PATH lookup inside `ip netns exec`


def train_args(data: Path, out: Path) -> list[str]:
    # One thread per rank in both launches: intra-op threading may change how kernels
    # split their reductions, and the comparison below is meant to see only DDP itself.
    return [
        "-m",
        "ddpbench.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--seed",
        "0",
        "--threads-per-worker",
        "1",
        "--timeout",
        "60",
        "--quiet",
    ]


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_all(procs: dict[str, subprocess.Popen], logs: dict[str, Path], timeout: float) -> dict[str, int]:
    """Wait for every launch; on timeout kill each launch's process group (it started one)."""
    codes = {}
    try:
        for name, proc in procs.items():
            codes[name] = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        pytest.fail(f"launch timed out after {timeout}s\n" + "\n".join(f"--- {n}\n{_tail(p)}" for n, p in logs.items()))
    return codes


def test_ddp_across_two_network_namespaces(netns_pair, synthetic_cache, tmp_path):
    # Unpinned: both namespaces' rank would otherwise take the same first core of this one machine.
    env = _fx.venv_env(OMP_NUM_THREADS="1", DDPBENCH_PIN="0")
    env.pop("GLOO_SOCKET_IFNAME", None)

    # Reference: one node, two ranks, torchrun's own rendezvous. It runs beside the two-"node"
    # launch below (one thread per rank: load changes the timings, never the arithmetic).
    ref_json, ref_log = tmp_path / "single.json", tmp_path / "single.log"
    with ref_log.open("w") as log:
        ref = subprocess.Popen(
            [*TORCHRUN, "--standalone", "--nproc-per-node", "2", *train_args(synthetic_cache, ref_json)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    # Two "nodes": one torchrun agent per namespace, one rank each, c10d rendezvous on
    # node a's veth address. Two settings a real cluster gets for free from DNS:
    #  * --rdzv-conf is_host: torchrun decides whether to host the rendezvous store by
    #    matching the endpoint against the hostname's addresses, and the veth address is
    #    not among them (it documents false negatives for secondary NICs);
    #  * --local-addr: the agent that becomes rank 0 advertises socket.getfqdn() for the
    #    workers' store, which here is "localhost", i.e. unreachable from the other side.
    # GLOO_SOCKET_IFNAME: multi-node, so the engine leaves gloo's interface to us.
    multi_json = tmp_path / "multi.json"
    procs, logs = {"single": ref}, {"single": ref_log}
    for node, ns, addr in (("a", netns_pair.ns_a, netns_pair.addr_a), ("b", netns_pair.ns_b, netns_pair.addr_b)):
        logs[node] = tmp_path / f"node-{node}.log"
        cmd = [
            *netns_pair.exec_prefix(ns, GLOO_SOCKET_IFNAME=netns_pair.ifname),
            *TORCHRUN,
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"{netns_pair.addr_a}:{RDZV_PORT}",
            "--rdzv-id",
            f"ddpb-netns-{os.getpid()}",
            "--rdzv-conf",
            f"is_host={int(node == 'a')},join_timeout=60",
            "--local-addr",
            addr,
            "--max-restarts",
            "0",
            *train_args(synthetic_cache, multi_json),
        ]
        with logs[node].open("w") as log:
            procs[node] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    codes = _wait_all(procs, logs, timeout=300)
    assert codes["single"] == 0, _tail(ref_log)
    assert codes == {"single": 0, "a": 0, "b": 0}, "\n".join(f"--- node {n}\n{_tail(logs[n])}" for n in "ab")
    assert multi_json.exists(), _tail(logs["a"])

    single, multi = json.loads(ref_json.read_text()), json.loads(multi_json.read_text())
    assert (single["config"]["nnodes"], single["config"]["world_size"]) == (1, 2)
    assert multi["config"]["nnodes"] == 2
    assert multi["config"]["world_size"] == 2
    assert multi["config"]["ranks_per_node"] == 1
    assert sorted(r["rank"] for r in multi["ranks"]) == [0, 1]
    # (Namespaces share the UTS hostname, so environment.hostnames has one entry here.)

    # Same seed, same shards, same threads: the runs differ only in transport. With two
    # ranks every gradient element's allreduce is a single IEEE addition a + b, which is
    # commutative, so the weights, and with them every loss, should be bit-identical;
    # measured: identical to the last digit (train_loss 2.3240810930728912, 2.1168407574295998).
    # rel=1e-6 (a few float32 ulps) only leaves room for a gloo version that chunks or
    # scales the reduction differently; a real desync (a rank skipping a sync) moves the
    # epoch losses by ~1e-3 or more. Accuracy is a count of correct images: exact.
    assert len(multi["epochs"]) == len(single["epochs"]) == EPOCHS
    for m, s in zip(multi["epochs"], single["epochs"], strict=True):
        assert m["train_loss"] == pytest.approx(s["train_loss"], rel=1e-6)
        assert m["test_loss"] == pytest.approx(s["test_loss"], rel=1e-6)
        assert m["test_acc"] == s["test_acc"]


@two_cpus
@on_both_task_plugins
def test_slurm_cluster_runs_a_step(slurm_cluster, tmp_path):
    out = slurm_cluster.run("srun", "-N1", "-n1", "hostname").stdout.strip()
    assert out == socket.gethostname()

    # Jobs see only the CPUs they were given, as on real clusters: the batch script (where the
    # Snakemake SLURM executor re-evaluates the Snakefile) and a step of a one-CPU job alike.
    affinity = "import os; print(sorted(os.sched_getaffinity(0)))"
    script = tmp_path / "affinity.out"
    slurm_cluster.run(
        "sbatch",
        "--wait",
        "-c1",
        "-o",
        str(script),
        "--wrap",
        f"python3 -c '{affinity}'; srun -c1 python3 -c '{affinity}'",
    )
    batch, step = script.read_text().split()
    assert batch == step and len(json.loads(batch)) == 1, script.read_text()
    if slurm_cluster.task_plugin == "cgroup":
        # A cpuset cgroup, not just a mask: a job cannot move itself onto cores it was not given.
        to_other_cores = "import os; os.sched_setaffinity(0, set(range(os.cpu_count())) - os.sched_getaffinity(0))"
        escape = slurm_cluster.run("srun", "-c1", "python3", "-c", to_other_cores, check=False)
        assert escape.returncode != 0 and "Invalid argument" in escape.stderr, escape.stderr

    # What a multi-node train rule relies on to pick the rendezvous host: the job's node
    # list, expanded inside a step (NodeName is `hostname -s`).
    head = slurm_cluster.run(
        "srun", "-N1", "-n1", "bash", "-c", 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1'
    ).stdout.strip()
    assert head == socket.gethostname().split(".")[0]

    # profiles/slurm polls job state with squeue (there is no accounting, so no sacct).
    slurm_cluster.run("squeue", "-h")


def failed_slurm_jobs(workdir: Path) -> str:
    """The end of every SLURM job log that reports an error: what went wrong inside a job (such
    as the Snakefile failing to load on the node) is only there, not in Snakemake's output."""
    logs = sorted((workdir / ".snakemake" / "slurm_logs").glob("**/*.log"))
    return "\n".join(f"--- {log.relative_to(workdir)}\n{_tail(log, 12)}" for log in logs if "Error" in log.read_text())


def assert_ran_on_its_allocation(run: dict) -> None:
    """A one-node run of W ranks x 1 thread: its job was given W CPUs and saw only those, and
    each rank ran one thread pinned to its own core among them."""
    world_size = run["config"]["world_size"]
    assert run["config"]["threads_per_worker"] == run["environment"]["threads_per_rank"] == 1
    assert run["environment"]["cores_available"] == world_size  # the allocation, not the node's CPUs
    affinities = [rank["cpu_affinity"] for rank in run["ranks"]]
    assert all(a is not None and len(a) == 1 for a in affinities), affinities
    cores = {core for a in affinities for core in a}
    assert len(cores) == world_size and cores <= set(range(os.cpu_count())), affinities


SLURM_GRID = {
    "data": {"source": "synthetic", "synthetic": {"train_size": 512, "test_size": 128}},
    "grid": {"world_sizes": [1, 2], "seeds": [0], "batch_sizes": [128]},
    "train": {"epochs": 1, "batch_size_mode": "global", "threads_per_worker": 1},
}


def slurm_snakemake(cluster, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --profile profiles/slurm ARGS` in ``workdir``, against ``cluster``."""
    snakemake = [str(Path(sys.executable).parent / "snakemake"), "--profile", "profiles/slurm"]
    return subprocess.run(
        [*snakemake, *cluster.snakemake_args, *args],
        cwd=workdir,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )


# The whole workflow once, with jobs confined by task/cgroup (a cpuset per job, as on most
# production clusters), or bound by task/affinity where this machine cannot make cgroups.
@two_cpus
@pytest.mark.parametrize("slurm_cluster", ["cgroup|affinity"], indirect=True)
def test_workflow_through_the_slurm_executor(slurm_cluster, tmp_path):
    """`snakemake --profile profiles/slurm` on synthetic data: a failing job is reported while
    the others finish (--keep-going), then the grid completes with the same outputs as locally.

    The node has 2 CPUs and jobs are confined to theirs, so the one-CPU jobs (data, ws1 runs,
    the report) re-evaluate the Snakefile where only one core is visible: a world size 2 grid
    must still be accepted there. Each run was given its own CPUs, saw only those and pinned
    its ranks to them."""
    from workflowcopy import copy_repo, write_config

    copy_repo(tmp_path)
    base = SLURM_GRID
    # Batch 127 cannot be split over 2 ranks: that one job fails, its three siblings finish.
    failing = write_config(tmp_path, "failing.yaml", {**base, "grid": {**base["grid"], "batch_sizes": [128, 127]}})

    def run_snakemake(*args: str) -> subprocess.CompletedProcess:
        return slurm_snakemake(slurm_cluster, tmp_path, *args)

    result = run_snakemake("--configfile", failing, "--keep-going")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    failed = re.search(r"Error in rule train:.*?ws2_bs127_seed0", output, re.S)
    assert failed, output[-3000:] + failed_slurm_jobs(tmp_path)
    runs = tmp_path / "results" / "runs"
    assert sorted(p.name for p in runs.glob("*.json")) == [
        "ws1_bs127_seed0.json",
        "ws1_bs128_seed0.json",
        "ws2_bs128_seed0.json",
    ]
    assert "not divisible by world size 2" in (tmp_path / "logs/train/ws2_bs127_seed0.log").read_text()

    good = write_config(tmp_path, "good.yaml", base)
    result = run_snakemake("--configfile", good)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:] + failed_slurm_jobs(tmp_path)
    for path in (
        "results/summary.csv",
        "results/summary.json",
        "results/report.html",
        "results/plots/speedup.svg",
        "benchmarks/train/ws2_bs128_seed0.tsv",
        "logs/train/ws2_bs128_seed0.log",
    ):
        assert (tmp_path / path).is_file(), path
    run = json.loads((runs / "ws2_bs128_seed0.json").read_text())
    assert run["config"]["world_size"] == 2 and run["config"]["nnodes"] == 1
    for name in ("ws1_bs128_seed0", "ws1_bs127_seed0", "ws2_bs128_seed0"):
        assert_ran_on_its_allocation(json.loads((runs / f"{name}.json").read_text()))
    summary = json.loads((tmp_path / "results/summary.json").read_text())
    assert [row["world_size"] for row in summary["rows"]] == [1, 2]
    assert "Nothing to be done" in (run_snakemake("--configfile", good).stderr)
