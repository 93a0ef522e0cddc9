"""Does the scaling model predict a training step across a real, shaped link? (issue 14's targets)

    sudo .venv/bin/python bench/emulated_links.py --data resources/cifar10 \
        [--bandwidths 10,1,0.3] [--reps 2] [--out bench/results/NAME.json]

Run it alone: it times. Every training run is SimpleCNN, batch 128 per rank, one thread per rank,
each rank on its own core (DDPBENCH_PIN=1), ``--max-train-samples`` images for ``--epochs``
epochs; a step is the run's whole training time over its steps (data, compute, exposed
communication), pooled over the epochs as the workflow's prediction pools them.

1. On loopback: runs at W = 1 and W = 2, and ``ddpbench.commbench`` at W = 2 (with its timing of
   the model's step, one rank alone and both at once, as the workflow runs it).
2. Per bandwidth: ``commbench`` across two network namespaces joined by a veth pair shaped to it
   (tbf; ``bench/commbench_netem.py``), and a W = 2 run across the same kind of link
   (``python -m ddpbench.netem launch``).
3. Each emulated W = 2 step is predicted three ways, and compared with the measured one:
   - ``named``: what the report predicts for a network named with that bandwidth
     (``predict.networks``): the loopback runs' profile (W = 2 the reference) and the loopback
     all-reduce fit with its bandwidth capped at the link's (``allreduce.network_fit``, no latency);
   - ``from_w1``: the same from the W = 1 run alone: the whole model, compute carried over too;
   - ``link_fit``: the loopback profile with the all-reduce fitted to commbench across the link.
   The loopback W = 2 run predicted from W = 1 with the loopback fit is the ``loopback`` case;
   ``loopback_alone`` is the same without commbench's timing of the ranks computing together
   (what the one-rank runs alone tell), from the same runs.

Prints one line per case and writes everything, with the CPU model, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from commbench_netem import QUICK_SIZES, commbench_across

from ddpbench import allreduce, commtimes, netem, scaling
from ddpbench.metrics import cpu_model
from ddpbench.options import command_line

BATCH = 128
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def train_args(data: Path, out: Path, args: argparse.Namespace, seed: int) -> list[str]:
    options = {"data": str(data), "out": str(out), "batch_size": BATCH, "seed": seed, "epochs": args.epochs}
    options |= {"max_train_samples": args.max_train_samples, "threads_per_worker": 1}
    return ["-m", "ddpbench.train", *shlex.split(command_line(options)), "--quiet"]


def run(argv: list[str], out: Path, reuse: bool) -> dict:
    """Run ``argv``, which writes ``out``, with its output in ``out`` .log; the JSON it wrote. With
    ``reuse``, an ``out`` already there is read instead."""
    if not (reuse and out.exists()):
        log = out.with_suffix(".log")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DDPBENCH_PIN": "1"}
        with log.open("w") as fh:
            code = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=1800).returncode
        if code:
            raise SystemExit(f"{' '.join(argv)} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")
    return json.loads(out.read_text())


def loopback_run(world: int, out: Path, args: argparse.Namespace, seed: int) -> dict:
    argv = [*TORCHRUN, "--standalone", "--nproc-per-node", str(world), *train_args(args.data, out, args, seed)]
    return run(argv, out, args.reuse)


def emulated_run(bandwidth: float, out: Path, args: argparse.Namespace, seed: int) -> dict:
    launch = [sys.executable, "-m", "ddpbench.netem", "launch", "--nodes", "2", "--bandwidth-gbit", str(bandwidth)]
    return run([*launch, "--prefix", "bnchlink", "--", *train_args(args.data, out, args, seed)], out, args.reuse)


def loopback_comm(out: Path, args: argparse.Namespace) -> dict:
    argv = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "ddpbench.commbench", "--out", str(out)]
    argv += ["--sizes", QUICK_SIZES, "--reps", str(args.comm_reps), "--budget-s", "1"]
    return run([*argv, "--model", "simple_cnn", "--step-batch", str(BATCH)], out, args.reuse)


def link_comm(bandwidth: float, out: Path, args: argparse.Namespace) -> dict:
    if args.reuse and out.exists():
        return json.loads(out.read_text())
    with netem.EmulatedNetwork(2, bandwidth, prefix="bnchcomm") as net:
        return commbench_across(net, out, QUICK_SIZES, args.comm_reps, timeout=600)


def predicted_step(
    runs: list[dict],
    buckets: list[float],
    loopback: allreduce.CollectiveFit,
    collective: allreduce.CollectiveFit,
    colocation: scaling.Colocation,
) -> float:
    """The step the model predicts at W = 2 over ``collective`` from ``runs`` (loopback, of one or two
    world sizes, whose all-reduce the ``loopback`` fit describes), as ``predict.predict_from_runs`` does."""
    profile = scaling.profile_from(scaling.measure(runs), buckets, loopback, colocation)
    return scaling.predict_step(profile, 2, buckets, collective, "per_worker", BATCH)["step_time_s"]


def measured_step(run: dict) -> float:
    return scaling.measure([run])[run["config"]["world_size"]].period_s


def case(name: str, link: str, measured: list[float], predicted: float) -> dict:
    median = statistics.median(measured)
    return {
        "case": name,
        "link": link,
        "measured_step_s": measured,
        "measured_median_step_s": median,
        "predicted_step_s": predicted,
        "step_time_rel_error": predicted / median - 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a dataset cache (resources/cifar10, or a synthetic one)")
    p.add_argument("--bandwidths", default="10,1,0.3", type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--reps", type=int, default=2, help="training runs per configuration (seeds 0, 1, ...)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train-samples", type=int, default=8192)
    p.add_argument("--comm-reps", type=int, default=10)
    p.add_argument("--out", type=Path, help="JSON to write (default: print only)")
    p.add_argument("--work", type=Path, help="folder for the runs, timings and logs (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="predict again from what --work holds; measure the rest")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="emulated-links-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = range(args.reps)
    # Interleaved by repetition, so that a slow spell of the machine does not fall on one configuration.
    loop = {1: [], 2: []}
    links = {bw: [] for bw in args.bandwidths}
    for seed in seeds:
        for world in loop:
            loop[world].append(loopback_run(world, work / f"lo_ws{world}_seed{seed}.json", args, seed))
        for bw in links:
            links[bw].append(emulated_run(bw, work / f"link{bw:g}_seed{seed}.json", args, seed))
    lo_comm = loopback_comm(work / "comm_lo.json", args)
    lo_fit, together = (
        allreduce.fit_collective(*commtimes.comm_points([lo_comm])),
        scaling.Colocation.from_comm([lo_comm]),
    )
    both = loop[1] + loop[2]
    buckets = commtimes.gradient_buckets([], loop[2])  # as DDP built them at W = 2 (W = 1 skips the all-reduce)
    cases = [
        case(
            "loopback",
            "loopback",
            [measured_step(r) for r in loop[2]],
            predicted_step(loop[1], buckets, lo_fit, lo_fit, together),
        ),
        case(
            "loopback_alone",
            "loopback",
            [measured_step(r) for r in loop[2]],
            predicted_step(loop[1], buckets, lo_fit, lo_fit, scaling.Colocation()),
        ),
    ]
    fits = {"loopback": lo_fit.to_dict()}
    for bw, runs in links.items():
        measured = [measured_step(r) for r in runs]
        named = allreduce.network_fit(lo_fit, bw, 0.0)
        across = allreduce.fit_collective(*commtimes.comm_points([link_comm(bw, work / f"comm_{bw:g}.json", args)]))
        fits[f"{bw:g} Gbit/s"] = across.to_dict()
        ways = {"named": (both, named), "from_w1": (loop[1], named), "link_fit": (both, across)}
        for name, (runs_from, collective) in ways.items():
            predicted = predicted_step(runs_from, buckets, lo_fit, collective, together)
            cases.append(case(name, f"{bw:g} Gbit/s", measured, predicted))
    for c in cases:
        print(
            f"{c['link']:>11} {c['case']:>14}: measured {c['measured_median_step_s'] * 1e3:7.1f} ms, predicted "
            f"{c['predicted_step_s'] * 1e3:7.1f} ms, error {c['step_time_rel_error'] * 100:+6.1f} %"
        )
    result = {
        "cpu_model": cpu_model(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loopback_runs": {w: [r["totals"] for r in runs] for w, runs in loop.items()},
        "collective_fits": fits,
        "ranks_computing_together": lo_comm.get("compute"),
        "cases": cases,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
