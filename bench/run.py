"""ddpbench's performance benchmark: is the training path close to what the hardware can do?

    python bench/run.py [--data resources/cifar10] [--reps 3] [--epochs 2] [--out bench/results/NAME.json]

Measures, on this machine and in one run, interleaving the repetitions so that drifts in the
machine's speed hit every figure alike:
  1. the compute bound (bench/compute_bound.py) at the threads of world size 1 and of the
     largest world size, and at the latter also as many bounds at once as that world size has
     ranks, each on its own cores like a rank: what the cores give when all are busy; and
     those bounds meeting at a barrier after every step, as DDP ranks do: what synchronous
     training could give on these cores, without data or DDP;
  2. the engine (torchrun -m ddpbench.train) at world size 1 and at the largest world size:
     images/s over the epochs after the first (the first epoch's warm-up is reported apart);
  3. at world size 1, the per-sample DataLoader (--loader dataloader) alone, and the study's
     whole classic pipeline: that loader with the study's contiguous (NCHW) memory format;
  4. all-reduce of a gradient-sized buffer at world size 2 and the largest world size, through
     gloo and (CPU) through ddpbench's shared-memory exchange; and, at the largest world size,
     the engine with that exchange instead of DDP's own all-reduce (train.allreduce: shared_memory);
  5. launch-to-first-step time, peak RSS and PSS per rank, and the dataset's share of them;
  6. the matrix-product peak of the world size 1 threads (ddpbench.peak, after each compute bound,
     in its precision where the CPU has it, else fp32), and the bound's and the engine's model
     FLOP utilisation against it.
Each figure is the median of the repetitions, with min and max. Every measurement runs alone
on the machine (one after the other), never two at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpbench.cache import make_synthetic, read_meta
from ddpbench.cpus import cores_available
from ddpbench.io import atomic_write_json, utc_now
from ddpbench.machine import cpu_model
from ddpbench.peak import flops_per_image

BENCH = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def run_json(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run a command that prints one JSON line last; fail loudly with its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compute_bound_cmd(threads: int, args, channels_last: str = "on", heap: str = "retain") -> list[str]:
    return [
        sys.executable,
        str(BENCH / "compute_bound.py"),
        "--threads",
        str(threads),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--channels-last",
        channels_last,
        "--heap",
        heap,
        "--warmup",
        str(args.bound_warmup),
        "--steps",
        str(args.bound_steps),
    ]


def compute_bound(threads: int, args, channels_last: str = "on", heap: str = "retain", gemm: bool = False):
    """images/s of the compute bound; with ``gemm`` a dict that also holds the matrix-product peak
    of the same threads (ddpbench.peak), timed after it in the same process."""
    cmd = compute_bound_cmd(threads, args, channels_last, heap) + (["--gemm"] if gemm else [])
    result = run_json(cmd, env={"OMP_NUM_THREADS": str(threads)})
    return {k: result[k] for k in ("images_per_s", "gemm_flops_s")} if gemm else result["images_per_s"]


def concurrent_compute_bounds(copies: int, threads: int, args) -> float:
    """Sum of ``copies`` compute bounds run at once, each pinned to its own block of cores.
    A copy that finishes first leaves the others the machine to themselves for their last
    steps, so if anything this overstates the bound."""
    cmd = compute_bound_cmd(threads, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen([*cmd, "--block", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(copies)
    ]
    total = 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(proc.args)} failed:\n{out[-3000:]}\n{err[-3000:]}")
        total += json.loads(out.strip().splitlines()[-1])["images_per_s"]
    return total


def synchronised_compute_bounds(copies: int, threads: int, args) -> float:
    """Sum of ``copies`` compute bounds, one per rank under torchrun, each pinned to its own
    block of cores, meeting at a barrier after every step as DDP ranks meet at their gradient
    exchange: the engine at this world size less its data path, DDP and the exchange itself."""
    cmd = [
        *TORCHRUN,
        "--standalone",
        f"--nproc-per-node={copies}",
        *compute_bound_cmd(threads, args)[1:],
        "--synchronise",
    ]
    return run_json(cmd, env={"OMP_NUM_THREADS": str(threads)})["images_per_s"]


def engine(
    world_size: int,
    threads: int,
    loader: str,
    args,
    channels_last: str = "auto",
    allreduce: str = "backend",
    extra: tuple[str, ...] = (),
) -> dict:
    """One torchrun launch of the engine (``extra``: more of its options): its steady figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [
            *TORCHRUN,
            "--standalone",
            f"--nproc-per-node={world_size}",
            "-m",
            "ddpbench.train",
            "--data",
            str(args.data),
            "--out",
            str(out),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--threads-per-worker",
            str(threads),
            "--loader",
            loader,
            "--channels-last",
            channels_last,
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--allreduce",
            allreduce,
            "--quiet",
            *extra,
        ]
        if args.max_train_samples:
            cmd += ["--max-train-samples", str(args.max_train_samples)]
        # Measurements run one at a time, so the engine may pin its ranks as in the workflow.
        env = {"OMP_NUM_THREADS": str(threads), "DDPBENCH_PIN": "1", "DDPBENCH_LAUNCH_TIME": f"{time.time():.6f}"}
        subprocess.run(cmd, check=True, timeout=7200, env={**os.environ, **env})
        run = json.loads(out.read_text())
    epochs = run["epochs"]
    steady = epochs[1:] or epochs
    images = sum(e["images"] for e in steady)
    train = sum(e["train_time_s"] for e in steady)
    step = sum(e["step_time_s"] for e in steady)
    exposed = [e["comm_exposed_time_s"] for e in steady]
    dataset = [r.get("dataset_memory") for r in run["ranks"]]
    return {
        "allreduce": run["config"]["allreduce"],
        "test_acc": epochs[-1]["test_acc"],
        "compile_s": run["totals"].get("compile_s"),
        "images_per_s": images / train,
        "first_epoch_images_per_s": epochs[0]["throughput_img_s"],
        "comm_share_of_step": sum(exposed) / step if None not in exposed else None,
        "data_share_of_train": sum(e["data_time_s"] for e in steady) / train,
        "launch_to_first_step_s": run["totals"]["launch_to_first_step_s"],
        "peak_rss_bytes_per_rank": [r["peak_rss_bytes"] for r in run["ranks"]],
        "peak_rss_bytes_total": sum(r["peak_rss_bytes"] for r in run["ranks"]),
        "pss_bytes_total": sum(r["pss_bytes"] or 0 for r in run["ranks"]),
        "dataset_rss_bytes_total": sum(d["rss_bytes"] for d in dataset) if None not in dataset else None,
        "dataset_pss_bytes_total": sum(d["pss_bytes"] for d in dataset) if None not in dataset else None,
        "peak_gpu_mem_bytes": max((r["peak_gpu_mem_bytes"] or 0) for r in run["ranks"]) or None,
    }


def allreduce(world_size: int, args, transport: str = "backend") -> dict:
    cmd = [
        *TORCHRUN,
        "--standalone",
        f"--nproc-per-node={world_size}",
        str(BENCH / "allreduce.py"),
        "--device",
        args.device,
        "--transport",
        transport,
    ]
    return run_json(cmd, env={"OMP_NUM_THREADS": "1"})


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(samples: dict[str, list]) -> dict:
    """Median/min/max of every numeric field of every measurement."""
    out = {}
    for name, reps in samples.items():
        if isinstance(reps[0], dict):
            out[name] = {
                k: spread([r[k] for r in reps])
                for k, v in reps[0].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and None not in [r[k] for r in reps]
            }
        else:
            out[name] = spread(reps)
    return out


def prepare_data(args) -> None:
    if args.data is None:
        default = Path("resources/cifar10")
        if (default / "meta.json").exists():
            args.data = default
        else:
            args.data = Path(tempfile.mkdtemp(prefix="ddpbench-bench-"))
            print(f"no resources/cifar10: generating 10,000 synthetic images in {args.data}", file=sys.stderr)
            make_synthetic(args.data, 10_000, 2_000)
    args.data_meta = read_meta(args.data)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 autocast can beat fp32 on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def measure_bf16(args: argparse.Namespace) -> bool:
    if args.device != "cpu" or args.precision != "fp32" or args.bf16 == "off":
        return False
    return args.bf16 == "on" or cpu_has_fast_bf16()


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that run the engine and its bound: data, rounds, sizes."""
    p.add_argument("--data", type=Path, help="dataset cache (default: resources/cifar10, else synthetic)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="per engine run; the first (warm-up, any compile) is left out")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bound-steps", type=int, default=150, help="timed steps per compute bound")
    p.add_argument("--bound-warmup", type=int, default=10, help="untimed steps before them (a compiled bound builds)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_measurement_arguments(p)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--max-world-size", type=int, help="default: the cores (cpu) or GPUs (cuda)")
    p.add_argument("--skip-classic", action="store_true", help="leave out the per-sample DataLoader pipeline")
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="also measure bf16 autocast at world size 1 (auto: on a CPU with AMX or AVX512-BF16)",
    )
    p.add_argument("--out", type=Path, help="JSON to write (default: bench/results/<host>-<device>.json)")
    args = p.parse_args()
    prepare_data(args)
    cores = cores_available()
    capacity = torch.cuda.device_count() if args.device == "cuda" else cores
    w_max = args.max_world_size or capacity
    threads_1 = cores if args.device == "cpu" else 1
    threads_max = max(1, cores // w_max) if args.device == "cpu" else 1

    samples: dict[str, list] = {}
    plan = [
        (f"compute_bound_{threads_1}t", lambda: compute_bound(threads_1, args, gemm=True)),
        # What train.channels_last: auto (= on) is chosen against.
        (f"compute_bound_{threads_1}t_contiguous", lambda: compute_bound(threads_1, args, channels_last="off")),
        ("engine_ws1", lambda: engine(1, threads_1, "resident", args)),
    ]
    if args.device == "cpu":  # what the engine's retained heap (train.retain_freed_memory) gains
        plan.insert(
            2, (f"compute_bound_{threads_1}t_system_heap", lambda: compute_bound(threads_1, args, heap="system"))
        )
    bf16 = argparse.Namespace(**{**vars(args), "precision": "bf16"})
    if measure_bf16(args):  # against the fp32 engine and the bf16 compute bound, in the same run
        plan += [
            (f"compute_bound_{threads_1}t_bf16", lambda: compute_bound(threads_1, bf16, gemm=True)),
            ("engine_ws1_bf16", lambda: engine(1, threads_1, "resident", bf16)),
        ]
    if not args.skip_classic:
        plan += [
            ("per_sample_dataloader_ws1", lambda: engine(1, threads_1, "dataloader", args)),
            ("study_pipeline_ws1", lambda: engine(1, threads_1, "dataloader", args, channels_last="off")),
        ]
    if w_max > 1:
        if threads_max != threads_1:
            plan.append((f"compute_bound_{threads_max}t", lambda: compute_bound(threads_max, args)))
        if args.device == "cpu":
            plan.append(
                (
                    f"compute_bound_{threads_max}t_x{w_max}_at_once",
                    lambda: concurrent_compute_bounds(w_max, threads_max, args),
                )
            )
            plan.append(
                (
                    f"compute_bound_{threads_max}t_x{w_max}_synchronised",
                    lambda: synchronised_compute_bounds(w_max, threads_max, args),
                )
            )
        plan.append((f"engine_ws{w_max}", lambda: engine(w_max, threads_max, "resident", args)))
        if args.device == "cpu":  # DDP's own all-reduce (the default) against ddpbench's shared-memory exchange
            plan.append(
                (
                    f"engine_ws{w_max}_shared_memory",
                    lambda: engine(w_max, threads_max, "resident", args, allreduce="shared_memory"),
                )
            )
        for w in sorted({2, w_max}):
            plan.append((f"allreduce_ws{w}", lambda w=w: allreduce(w, args)))
            if args.device == "cpu":
                plan.append((f"allreduce_shared_memory_ws{w}", lambda w=w: allreduce(w, args, "shared_memory")))
    for rep in range(args.reps):  # interleaved: every figure sees the same machine drift
        for name, measure in plan:
            t0 = time.perf_counter()
            samples.setdefault(name, []).append(measure())
            print(f"rep {rep + 1}/{args.reps} {name}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    figures = summarize(samples)
    med = {k: v["images_per_s"]["median"] if "images_per_s" in v else v.get("median") for k, v in figures.items()}
    dataset_bytes = (Path(args.data) / "train_images.npy").stat().st_size + (
        Path(args.data) / "test_images.npy"
    ).stat().st_size
    targets = {
        "ws1_vs_compute_bound": med["engine_ws1"] / med[f"compute_bound_{threads_1}t"],
        "channels_last_vs_contiguous": med[f"compute_bound_{threads_1}t"]
        / med[f"compute_bound_{threads_1}t_contiguous"],
    }
    if args.device == "cpu":
        targets["retained_heap_vs_system_heap"] = (
            med[f"compute_bound_{threads_1}t"] / med[f"compute_bound_{threads_1}t_system_heap"]
        )
    # How far from the hardware: model FLOP/s over the matrix-product peak of the same threads.
    flops = flops_per_image("simple_cnn", args.device)
    for suffix in ("", "_bf16") if measure_bf16(args) else ("",):
        gemm = figures[f"compute_bound_{threads_1}t{suffix}"]["gemm_flops_s"]["median"]
        targets[f"compute_bound_{threads_1}t{suffix}_mfu"] = med[f"compute_bound_{threads_1}t{suffix}"] * flops / gemm
        targets[f"engine_ws1{suffix}_mfu"] = med[f"engine_ws1{suffix}"] * flops / gemm
    if measure_bf16(args):
        targets["ws1_bf16_vs_bf16_compute_bound"] = med["engine_ws1_bf16"] / med[f"compute_bound_{threads_1}t_bf16"]
        targets["ws1_bf16_vs_ws1_fp32"] = med["engine_ws1_bf16"] / med["engine_ws1"]
    if not args.skip_classic:
        targets["ws1_vs_study_pipeline"] = med["engine_ws1"] / med["study_pipeline_ws1"]
        targets["ws1_vs_per_sample_dataloader"] = med["engine_ws1"] / med["per_sample_dataloader_ws1"]
    if w_max > 1:
        targets[f"ws{w_max}_vs_{w_max}x_compute_bound_{threads_max}t"] = med[f"engine_ws{w_max}"] / (
            w_max * med[f"compute_bound_{threads_max}t"]
        )
        if args.device == "cpu":  # data and DDP alone: against the bound with every core busy
            targets[f"ws{w_max}_vs_compute_bound_{threads_max}t_x{w_max}_at_once"] = (
                med[f"engine_ws{w_max}"] / med[f"compute_bound_{threads_max}t_x{w_max}_at_once"]
            )
            # What meeting every step costs on these cores, apart from data and DDP.
            targets[f"ws{w_max}_vs_compute_bound_{threads_max}t_x{w_max}_synchronised"] = (
                med[f"engine_ws{w_max}"] / med[f"compute_bound_{threads_max}t_x{w_max}_synchronised"]
            )
            targets[f"compute_bound_{threads_max}t_x{w_max}_synchronised_vs_{w_max}x_alone"] = med[
                f"compute_bound_{threads_max}t_x{w_max}_synchronised"
            ] / (w_max * med[f"compute_bound_{threads_max}t"])
            # The same cores busy, the barrier the only difference: what meeting every step costs.
            targets[f"compute_bound_{threads_max}t_x{w_max}_synchronised_vs_at_once"] = (
                med[f"compute_bound_{threads_max}t_x{w_max}_synchronised"]
                / med[f"compute_bound_{threads_max}t_x{w_max}_at_once"]
            )
            targets[f"ws{w_max}_shared_memory_vs_{w_max}x_compute_bound_{threads_max}t"] = med[
                f"engine_ws{w_max}_shared_memory"
            ] / (w_max * med[f"compute_bound_{threads_max}t"])
            targets[f"ws{w_max}_shared_memory_vs_backend_allreduce"] = (
                med[f"engine_ws{w_max}_shared_memory"] / med[f"engine_ws{w_max}"]
            )
        targets[f"rss_increase_ws1_to_ws{w_max}_over_dataset"] = (
            figures[f"engine_ws{w_max}"]["peak_rss_bytes_total"]["median"]
            - figures["engine_ws1"]["peak_rss_bytes_total"]["median"]
        ) / dataset_bytes
        targets[f"pss_increase_ws1_to_ws{w_max}_over_dataset"] = (
            figures[f"engine_ws{w_max}"]["pss_bytes_total"]["median"]
            - figures["engine_ws1"]["pss_bytes_total"]["median"]
        ) / dataset_bytes
    result = {
        "generated_utc": utc_now(),
        "machine": {
            "hostname": socket.gethostname(),
            "cpu_model": cpu_model(),
            "cores_available": cores,
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_model(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "data": str(args.data),
            "dataset_source": args.data_meta["source"],
            "dataset_image_bytes": dataset_bytes,
            "reps": args.reps,
            "epochs": args.epochs,
            "max_train_samples": args.max_train_samples,
            "batch_size": args.batch_size,
            "device": args.device,
            "precision": args.precision,
            "threads_ws1": threads_1,
            f"threads_ws{w_max}": threads_max,
            "command": " ".join(sys.argv),
            "model_flops_per_image": flops,
        },
        "figures": figures,
        "ratios_of_medians": targets,
        "samples": samples,
    }
    out = args.out or BENCH / "results" / f"{socket.gethostname()}-{args.device}.json"
    atomic_write_json(out, result)
    print(table(result))
    print(f"wrote {out}")
    return 0


def table(result: dict) -> str:
    lines = [f"{'measurement':34} {'median':>12} {'min':>12} {'max':>12}  unit"]
    for name, fig in result["figures"].items():
        key, unit = ("images_per_s", "images/s") if "images_per_s" in fig else ("median_s", "s/call")
        if name.startswith("compute_bound"):  # a plain spread, or with its matrix-product peak beside it
            f, unit = fig.get("images_per_s", fig), "images/s"
        else:
            f = fig[key]
        lines.append(
            f"{name:34} {f['median']:12.1f} {f['min']:12.1f} {f['max']:12.1f}  {unit}"
            if unit == "images/s"
            else f"{name:34} {f['median'] * 1e3:12.2f} {f['min'] * 1e3:12.2f} {f['max'] * 1e3:12.2f}  ms/call"
            f" ({fig['bus_bandwidth_gb_s']['median']:.2f} GB/s bus)"
        )
        if "gemm_flops_s" in fig:
            lines[-1] += f"  (matrix-product peak {fig['gemm_flops_s']['median'] / 1e9:.0f} GFLOP/s)"
        if "_ws" in name and not name.startswith("allreduce"):
            extra = [
                f"first epoch {fig['first_epoch_images_per_s']['median']:.0f} img/s",
                f"launch->step {fig['launch_to_first_step_s']['median']:.1f}s",
                f"peak RSS total {fig['peak_rss_bytes_total']['median'] / 2**20:.0f} MiB",
                f"PSS total {fig['pss_bytes_total']['median'] / 2**20:.0f} MiB",
            ]
            if "comm_share_of_step" in fig:
                extra.append(f"comm {100 * fig['comm_share_of_step']['median']:.1f}% of step")
            lines.append(" " * 36 + ", ".join(extra))
    lines.append("ratios of medians: " + ", ".join(f"{k} = {v:.2f}" for k, v in result["ratios_of_medians"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
