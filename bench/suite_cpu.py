"""Where the test suite's time goes, and the least time it could take on this machine.

    python bench/suite_cpu.py                      # the whole suite, as CI runs it (pyproject's addopts)
    python bench/suite_cpu.py -- -m "not slow"     # pytest's arguments after --

Runs pytest once with bench/suite_accounting on PYTHONPATH: a plugin records each test's wall time
and CPU time (its worker's and that of the processes it reaped), and a sitecustomize records every
Python process at its exit (command, CPU time, whether it imported torch and torch._dynamo). Before
the suite (run it on an otherwise idle machine) it times the fixed cost of a process: the CPU seconds of
``python -c "import torch"`` and of torch with torch._dynamo (which DDP and torch.optim import),
the median of 3 each. It writes bench/results/<host>-suite-cpu.json and prints:
- per module: wall and CPU seconds;
- per kind of process: how many, their CPU seconds, and how many imported torch and torch._dynamo;
- the floor: the ``alone`` tests' wall time, plus the other tests' CPU time over the cores: this
  run's work packed perfectly on these cores (an ``alone`` test has the machine to itself). It
  leaves out what no test holds (collection, workers' start), SLURM jobs (they run under slurmd:
  in the process records, not in the tests') and processes orphaned by a kill; and another order
  could spend less CPU where ranks now spin waiting for a descheduled peer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from ddpbench.cpus import cores_available
from ddpbench.io import atomic_write_json, utc_now
from ddpbench.machine import cpu_model, git_commit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
IMPORTS = {"torch": "import torch", "torch_and_dynamo": "import torch, torch._dynamo"}


def child_cpu_s(cmd: list[str]) -> float:
    """CPU seconds (user + system) of one run of ``cmd`` and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def import_costs(reps: int) -> dict[str, float]:
    """Median CPU seconds of a Python that imports torch, and torch with torch._dynamo."""
    return {
        name: statistics.median(child_cpu_s([sys.executable, "-c", code]) for _ in range(reps))
        for name, code in IMPORTS.items()
    }


def process_kind(argv: list[str]) -> str:
    """What a recorded process was, from its command line."""
    first = argv[0] if argv else ""
    name = Path(first).name
    if first.endswith("torch/distributed/run.py") or name == "torchrun":
        return "torchrun agent"
    if first.endswith("ddpbench/train.py"):
        return "training rank (ddpbench.train)"
    if first.endswith("ddpbench/commbench.py"):
        return "commbench rank (ddpbench.commbench)"
    if name == "snakemake" or first.endswith("snakemake/__main__.py"):
        return "snakemake"
    if name == "__main__.py":  # python -m PACKAGE
        return f"python -m {Path(first).parent.name}"
    if first == "-c":
        return "python -c (pytest-xdist workers, snippets)"
    return name or "(none)"


def read_records(path: Path) -> tuple[list[dict], int]:
    """The JSON lines of ``path`` and how many were unreadable (a process killed while writing)."""
    records, torn = [], 0
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return records, torn


def summarise(tests: list[dict], processes: list[dict], cores: int, costs: dict[str, float]) -> dict:
    """Per module, per kind of process, the estimated fixed cost of the processes, and the floor."""
    modules: dict[str, dict] = defaultdict(lambda: {"tests": 0, "wall_s": 0.0, "cpu_s": 0.0})
    for test in tests:
        row = modules[test["module"]]
        row["tests"] += 1
        row["wall_s"] += test["wall_s"]
        row["cpu_s"] += test["cpu_s"]
    kinds: dict[str, dict] = defaultdict(
        lambda: {"processes": 0, "cpu_s": 0.0, "imported_torch": 0, "imported_dynamo": 0}
    )
    for proc in processes:
        row = kinds[process_kind(proc["argv"])]
        row["processes"] += 1
        row["cpu_s"] += proc["cpu_s"]
        row["imported_torch"] += proc["torch"]
        row["imported_dynamo"] += proc["dynamo"]
    torch_processes = sum(p["torch"] for p in processes)
    dynamo_processes = sum(p["dynamo"] for p in processes)
    fixed = torch_processes * costs["torch"] + dynamo_processes * (costs["torch_and_dynamo"] - costs["torch"])
    test_cpu = sum(t["cpu_s"] for t in tests)
    alone = [t for t in tests if t["alone"]]
    alone_wall, alone_cpu = sum(t["wall_s"] for t in alone), sum(t["cpu_s"] for t in alone)
    return {
        "modules": dict(sorted(modules.items(), key=lambda item: -item[1]["cpu_s"])),
        "process_kinds": dict(sorted(kinds.items(), key=lambda item: -item[1]["cpu_s"])),
        "tests_cpu_s": test_cpu,
        "processes_cpu_s": sum(p["cpu_s"] for p in processes),
        "processes_importing_torch": torch_processes,
        "processes_importing_dynamo": dynamo_processes,
        "import_fixed_cpu_s": fixed,
        "alone_wall_s": alone_wall,
        "alone_cpu_s": alone_cpu,
        "floor_s": alone_wall + (test_cpu - alone_cpu) / cores,
    }


def run_suite(pytest_args: list[str], scratch: Path) -> tuple[float, int, str]:
    """pytest with the accounting on: (wall seconds, exit code, pytest's last line)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH / "suite_accounting"), env.get("PYTHONPATH")]))
    env["SUITE_CPU_TESTS"], env["SUITE_CPU_PROCESSES"] = str(scratch / "tests.jsonl"), str(scratch / "processes.jsonl")
    cmd = [sys.executable, "-m", "pytest", "-p", "suite_cpu_plugin", "-q", *pytest_args]
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    tail = (result.stdout.strip().splitlines() or [""])[-1]
    if result.returncode not in (0, 1):  # 1: some tests failed, which the figures still describe
        raise SystemExit(f"pytest exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return wall, result.returncode, tail


SHOWN_CPU_S = 5.0  # the table's rows from this many CPU seconds: the rest are in the JSON


def table(result: dict) -> str:
    s, run, cores = result["summary"], result["pytest"], result["machine"]["cores"]
    lines = [f"{run['last_line']}  ({run['wall_s']:.0f} s wall, {cores} cores)"]
    lines += ["", f"{'module':45s} {'tests':>5s} {'wall s':>8s} {'CPU s':>8s}"]
    lines += [
        f"{m:45s} {r['tests']:5d} {r['wall_s']:8.1f} {r['cpu_s']:8.1f}"
        for m, r in s["modules"].items()
        if r["cpu_s"] >= SHOWN_CPU_S
    ]
    lines += ["", f"{'kind of process':45s} {'count':>5s} {'CPU s':>8s} {'torch':>6s} {'dynamo':>6s}"]
    lines += [
        f"{k:45s} {r['processes']:5d} {r['cpu_s']:8.1f} {r['imported_torch']:6d} {r['imported_dynamo']:6d}"
        for k, r in s["process_kinds"].items()
        if r["cpu_s"] >= SHOWN_CPU_S
    ]
    costs = result["import_cpu_s"]
    lines += [
        "",
        f"tests' CPU {s['tests_cpu_s']:.0f} s; recorded Python processes' {s['processes_cpu_s']:.0f} s",
        f"import torch {costs['torch']:.2f} CPU s, with torch._dynamo {costs['torch_and_dynamo']:.2f}: "
        f"{s['processes_importing_torch']} processes imported torch, {s['processes_importing_dynamo']} torch._dynamo, "
        f"{s['import_fixed_cpu_s']:.0f} CPU s in all",
        f"floor (this run's work packed perfectly): alone tests {s['alone_wall_s']:.0f} s + the rest's CPU "
        f"over {cores} cores = {s['floor_s']:.0f} s (measured {run['wall_s']:.0f} s)",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="JSON to write (default: bench/results/<host>-suite-cpu.json)")
    p.add_argument("--import-reps", type=int, default=3, help="runs of each import timed (their median)")
    p.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments")
    args = p.parse_args()
    costs = import_costs(args.import_reps)
    with tempfile.TemporaryDirectory() as scratch:
        wall, code, last = run_suite(args.pytest_args, Path(scratch))
        tests, torn_tests = read_records(Path(scratch) / "tests.jsonl")
        processes, torn_processes = read_records(Path(scratch) / "processes.jsonl")
    cores = cores_available()
    result = {
        "generated_utc": utc_now(),
        "machine": {"hostname": socket.gethostname(), "cpu_model": cpu_model(), "cores": cores},
        "commit": git_commit(str(REPO)),
        "pytest": {"args": args.pytest_args, "wall_s": wall, "exit_code": code, "last_line": last},
        "unreadable_records": {"tests": torn_tests, "processes": torn_processes},
        "import_cpu_s": costs,
        "summary": summarise(tests, processes, cores, costs),
        "tests": tests,
        "processes": processes,
    }
    out = args.out or BENCH / "results" / f"{socket.gethostname()}-suite-cpu.json"
    atomic_write_json(out, result)
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
