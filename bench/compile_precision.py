"""torch.compile and bf16 against eager fp32: the engine, its compute bound and the matrix-product peak.

    python bench/compile_precision.py [--data resources/cifar10] [--reps 3] [--epochs 2]
        [--precisions fp32 bf16] [--compile none default] [--out bench/results/NAME.json]

For every setting (precision x compile mode), at world size 1 with all the cores, in one run:
  - the engine (torchrun -m ddpbench.train --compile MODE): images/s over the epochs after the
    first (the first holds the compile, reported as compile_s), and its test accuracy;
  - its compute bound (bench/compute_bound.py --compile MODE, compiled in its warm-up), and the
    matrix-product peak of the same threads in the setting's precision (ddpbench.peak);
  - engine / bound, and the MFU of both against that peak;
  - the setting's ratio to fp32 eager within each round (the rounds pair them): median, min, max.
Repetitions are interleaved: each round measures every setting once, one at a time, so a drift of
the machine's speed reaches all of them. bf16 on a CPU without AVX512-BF16 or AMX is measured and
flagged as emulated. Each figure is the median of the rounds, with min and max.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import time
from pathlib import Path

import run  # bench/run.py: the engine and compute-bound launches, the data, the spreads
import torch

from ddpbench.cpus import cores_available
from ddpbench.io import atomic_write_json, utc_now
from ddpbench.machine import cpu_model
from ddpbench.peak import flops_per_image

BASELINE = ("fp32", "none")


def bound(threads: int, args, precision: str, mode: str) -> dict:
    setting = argparse.Namespace(**{**vars(args), "precision": precision})
    cmd = [*run.compute_bound_cmd(threads, setting), "--gemm", "--compile", mode]
    result = run.run_json(cmd, env={"OMP_NUM_THREADS": str(threads)})
    return {k: result[k] for k in ("images_per_s", "gemm_flops_s", "warmup_s")}


def engine(threads: int, args, precision: str, mode: str) -> dict:
    setting = argparse.Namespace(**{**vars(args), "precision": precision})
    return run.engine(1, threads, "resident", setting, extra=("--compile", mode))


def measure(args, settings: list[tuple[str, str]], threads: int) -> dict[str, list[dict]]:
    samples: dict[str, list[dict]] = {}
    for rep in range(args.reps):
        for precision, mode in settings:
            for kind, function in (("engine", engine), ("bound", bound)):
                t0 = time.perf_counter()
                samples.setdefault(f"{kind}_{precision}_{mode}", []).append(function(threads, args, precision, mode))
                took = time.perf_counter() - t0
                print(f"round {rep + 1}/{args.reps} {kind} {precision} {mode}: {took:.0f}s", file=sys.stderr)
    return samples


def ratios(samples: dict[str, list[dict]], settings: list[tuple[str, str]], flops: float) -> dict:
    """Per setting: engine / bound, both MFUs, and the engine's ratio to fp32 eager per round."""
    out = {}
    base = samples[f"engine_{BASELINE[0]}_{BASELINE[1]}"]
    for precision, mode in settings:
        eng, bnd = samples[f"engine_{precision}_{mode}"], samples[f"bound_{precision}_{mode}"]
        per_round = {
            "engine_vs_bound": [e["images_per_s"] / b["images_per_s"] for e, b in zip(eng, bnd, strict=True)],
            "engine_mfu": [e["images_per_s"] * flops / b["gemm_flops_s"] for e, b in zip(eng, bnd, strict=True)],
            "bound_mfu": [b["images_per_s"] * flops / b["gemm_flops_s"] for b in bnd],
            "engine_vs_fp32_eager": [e["images_per_s"] / r["images_per_s"] for e, r in zip(eng, base, strict=True)],
        }
        out[f"{precision}_{mode}"] = {k: run.spread(v) for k, v in per_round.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_measurement_arguments(p)
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--compile", nargs="+", choices=("none", "default", "max-autotune"), default=["none", "default"])
    p.add_argument("--out", type=Path, help="JSON to write (default: bench/results/compile-precision-<host>.json)")
    args = p.parse_args()
    args.device = "cpu"
    run.prepare_data(args)
    threads = cores_available()
    settings = [BASELINE] + [s for s in itertools.product(args.precisions, args.compile) if s != BASELINE]
    samples = measure(args, settings, threads)
    flops = flops_per_image("simple_cnn", "cpu")
    result = {
        "generated_utc": utc_now(),
        "machine": {
            "hostname": socket.gethostname(),
            "cpu_model": cpu_model(),
            "cores_available": threads,
            "bf16_native": run.cpu_has_fast_bf16(),
            "torch": torch.__version__,
        },
        "settings": {
            "dataset_source": args.data_meta["source"],
            "reps": args.reps,
            "epochs": args.epochs,
            "max_train_samples": args.max_train_samples,
            "threads_ws1": threads,
            "command": " ".join(sys.argv),
            "model_flops_per_image": flops,
            "cxx": os.environ.get("CXX", "g++"),
        },
        "figures": run.summarize(samples),
        "ratios": ratios(samples, settings, flops),
        "samples": samples,
    }
    out = args.out or run.BENCH / "results" / f"compile-precision-{socket.gethostname()}.json"
    atomic_write_json(out, result)
    print(table(result))
    print(f"wrote {out}")
    return 0


def table(result: dict) -> str:
    names = ("engine img/s", "bound img/s", "eng/bound", "MFU eng", "MFU bound", "vs fp32 eager", "compile s", "acc %")
    widths = (13, 12, 10, 8, 9, 14, 10, 6)
    lines = [f"{'setting':22}" + "".join(f" {n:>{w}}" for n, w in zip(names, widths, strict=True))]
    for name, r in result["ratios"].items():
        eng, bnd = result["figures"][f"engine_{name}"], result["figures"][f"bound_{name}"]
        compile_s = eng.get("compile_s", {}).get("median")
        lines.append(
            f"{name:22} {eng['images_per_s']['median']:13.0f} {bnd['images_per_s']['median']:12.0f}"
            f" {r['engine_vs_bound']['median']:10.2f} {100 * r['engine_mfu']['median']:7.1f}%"
            f" {100 * r['bound_mfu']['median']:8.1f}% {r['engine_vs_fp32_eager']['median']:14.2f}"
            f" {compile_s if compile_s is None else round(compile_s, 1)!s:>10} {eng['test_acc']['median']:6.1f}"
        )
    if not result["machine"]["bf16_native"]:
        lines.append("bf16: no AVX512-BF16 or AMX on this CPU: emulated")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
