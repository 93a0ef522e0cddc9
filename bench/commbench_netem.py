"""ddpbench.commbench across an emulated link: does the fitted bandwidth match the shaped one?

    sudo .venv/bin/python bench/commbench_netem.py --bandwidth-gbit 1 [--ranks 2] [--sizes ...] [--out DIR]

Creates ``--ranks`` network namespaces joined by links shaped to ``--bandwidth-gbit`` (tbf),
runs one torchrun agent with one rank in each (c10d rendezvous on the first namespace's
address, gloo on the shaped veth), fits the ring all-reduce model to the timings and prints
one JSON line: the shaped and fitted bandwidth, the fitted latency, the fit errors and the
medians. Linux and root only; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ddpbench import netem
from ddpbench.allreduce import fit_collective
from ddpbench.commbench import parse_bytes_list
from ddpbench.commtimes import comm_points

QUICK_SIZES = "8,512,32768,262144,1048576,4194304,16777216"


def commbench_across(net: netem.EmulatedNetwork, out: Path, sizes: str, reps: int, timeout: float) -> dict:
    """Run ddpbench.commbench with one rank per namespace of ``net``; rank 0's output."""
    args = [
        "-m",
        "ddpbench.commbench",
        "--out",
        str(out),
        "--sizes",
        sizes,
        "--reps",
        str(reps),
        "--budget-s",
        "1",
        "--timeout",
        str(timeout),
    ]
    logs = [out.with_name(f"{out.stem}.node{i}.log") for i in range(net.size)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as fh:
            argv = net.torchrun(i, args, run_id=f"commbench-{os.getpid()}")
            procs.append(
                net.popen(i, argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            )
    codes = [proc.wait(timeout=timeout) for proc in procs]
    if any(codes):
        tails = "\n".join(f"--- node {i}\n{log.read_text()[-2000:]}" for i, log in enumerate(logs))
        raise RuntimeError(f"commbench failed across the emulated network ({codes}):\n{tails}")
    return json.loads(out.read_text())


def summarise(result: dict, bandwidth_gbit: float) -> dict:
    fit = fit_collective(*comm_points([result]))
    return {
        "world_size": result["world_size"],
        "shaped_gbit": bandwidth_gbit,
        "fitted_gbit": fit.bandwidth_bytes_s * 8e-9,
        "fitted_alpha_us": fit.alpha_s * 1e6,
        "median_rel_error": fit.median_rel_error,
        "max_rel_error": fit.max_rel_error,
        "cpu_model": result["environment"]["cpu_model"],
        "medians_s": {p["bytes"]: p["median_s"] for p in result["sweep"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bandwidth-gbit", type=float, default=1.0)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--sizes", default=QUICK_SIZES, type=lambda s: (parse_bytes_list(s), s)[1])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, help="directory for comm.json and the logs (default: a temporary one)")
    args = p.parse_args()
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="commbench-netem-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with netem.EmulatedNetwork(args.ranks, args.bandwidth_gbit, prefix="cbnetem") as net:
        result = commbench_across(net, out_dir / "comm.json", args.sizes, args.reps, args.timeout)
    print(json.dumps(summarise(result, args.bandwidth_gbit)))


if __name__ == "__main__":
    sys.exit(main())
