"""How close to the hardware's limit: the model's FLOPs per training image and the machine's
attainable peak, measured (results/peak.json, a rule beside commbench; ddpbench.utilisation
turns them into each setting's achieved FLOP/s and model FLOP utilisation).

    python -m ddpbench.peak --models simple_cnn --out results/peak.json [--no-cache]

* FLOPs per training image: ``torch.utils.flop_counter.FlopCounterMode`` over one forward, loss
  and backward pass of the model on a batch of CIFAR-10-shaped images, divided by the batch. It
  counts the matrix products and convolutions (forward and both backward products), which is
  where the work is; the optimizer's update and the elementwise work of BatchNorm, ReLU, pooling,
  dropout and the loss are not counted. The count is the same in fp32 and bf16.
* The measured peak: the median FLOP/s of a large square matrix product (n = 2048, 2 n^3 FLOPs
  each) over a second, after a warm-up, in fp32 and, where the CPU has AVX512-BF16 or AMX (or the
  GPU bf16), in bf16, at 1, 2, 4, ... threads up to the cores (a rank of t threads is read at t,
  scaled from the nearest count below where t is not measured). Measured once per host: the
  result is kept in the host's cache (~/.cache/ddpbench/peak, or $DDPBENCH_CACHE/peak), keyed by
  the host, CPU, cores, device, torch version and model, and a later study on the same host takes
  it from there (peak.json says which; --no-cache measures again).
* The nominal peak, only where it can be derived: on a CPU whose maximum clock the system
  exposes, cores x FMA lanes per cycle (AVX-512: 2 x 16 fp32, AVX2: 2 x 8) x 2 FLOPs x the clock:
  an assumption of two FMA units per core, named as such; "unknown" otherwise (virtual machines
  rarely expose the clock).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ddpbench.io import atomic_write_json, utc_now
from ddpbench.machine import cpu_flags, cpu_model
from ddpbench.supervise import exit_finished

GEMM_N = 2048
GEMM_SECONDS = 1.0  # timed per (precision, threads), after a warm-up product
FORMAT = 1  # of peak.json and the cache's entries
BATCH = 8  # images the FLOPs are counted over (the count is linear in the batch)
COUNTED = (
    "matrix products and convolutions of one forward, loss and backward pass "
    "(torch.utils.flop_counter.FlopCounterMode); not the optimizer's update nor the elementwise work of "
    "BatchNorm, ReLU, pooling, dropout and the loss"
)


def trained_models(config: dict, variants: dict | None) -> str:
    """The models the study trains (its own, and any variant's), comma-separated, for ddpbench.peak."""
    own = config["train"]["model"]
    return ",".join(sorted({own, *((v.get("train") or {}).get("model", own) for v in (variants or {}).values())}))


def bf16_native(device: str) -> bool:
    """Whether bf16 matrix products run in hardware here (else torch emulates them, slowly)."""
    if device == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def flops_per_image(model_name: str, device: str = "cpu") -> float:
    """Training FLOPs per image of ``model_name`` on 3 x 32 x 32 inputs (what COUNTED says)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ddpbench.models import build_model

    model = build_model(model_name).to(device)
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def gemm_flops(threads: int, precision: str, device: str = "cpu", n: int = GEMM_N) -> dict:
    """Median FLOP/s of n x n matrix products with ``threads`` threads (on a GPU: one device)."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def product() -> float:
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    product()  # warm-up: allocation, kernel choice, clocks
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < GEMM_SECONDS or len(times) < 3:
        times.append(product())
    median = statistics.median(times)
    return {"flops_s": 2 * n**3 / median, "n": n, "reps": len(times), "threads": threads, "median_s": median}


def max_clock_hz() -> float | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) * 1e3
    except (OSError, ValueError):
        return None


def nominal_peak(cores: int) -> dict:
    """cores x FMA lanes x 2 x clock where the clock is exposed; None with the reason otherwise."""
    flags, clock = cpu_flags(), max_clock_hz()
    lanes = 16 if "avx512f" in flags else 8 if "fma" in flags else None
    if clock is None or lanes is None:
        why = "the system exposes no maximum CPU clock" if clock is None else "no FMA vector unit is listed"
        return {"fp32_flops_s": None, "reason": why}
    return {
        "fp32_flops_s": cores * 2 * lanes * 2 * clock,
        "assumption": f"{cores} cores x 2 FMA units x {lanes} fp32 lanes x 2 FLOPs x {clock / 1e9:.2f} GHz",
    }


def thread_counts(cores: int) -> list[int]:
    return sorted({*(2**k for k in range(cores.bit_length()) if 2**k <= cores), cores})


def identity(models: list[str], device: str, cores: int) -> dict:
    """What a measurement is valid for: a cached one is reused only where all of it matches."""
    import importlib.metadata
    import socket

    gpu = None
    if device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0)
    host = socket.gethostname()
    return {"format": FORMAT, "host": host, "cpu": cpu_model(), "cores": cores, "device": device, "gpu": gpu} | {
        "torch": importlib.metadata.version("torch"),
        "models": models,
        "gemm_n": GEMM_N,
    }


def cache_path(ident: dict) -> Path:
    import hashlib
    import os

    root = Path(os.environ.get("DDPBENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "ddpbench")
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return root.expanduser() / "peak" / f"{ident['host']}-{digest}.json"


def cached(path: Path, ident: dict) -> dict | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("identity") == ident else None


def measure(threads: list[int], models: list[str], device: str, cores: int) -> dict:
    precisions = ["fp32"] + (["bf16"] if bf16_native(device) else [])
    return {
        "created_utc": utc_now(),
        "device": device,
        "flops_per_image": {model: flops_per_image(model, device) for model in models},
        "flops_counted": COUNTED,
        "bf16_native": bf16_native(device),
        "gemm": {p: [gemm_flops(t, p, device) for t in threads] for p in precisions},
        "gemm_method": f"median FLOP/s of {GEMM_N} x {GEMM_N} matrix products over {GEMM_SECONDS} s, after a warm-up",
        "nominal": nominal_peak(cores) if device == "cpu" else {"fp32_flops_s": None, "reason": "not derived on GPUs"},
    }


def main(argv: list[str] | None = None) -> int:
    from ddpbench.cpus import cores_available

    p = argparse.ArgumentParser(prog="python -m ddpbench.peak", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="simple_cnn", help="comma-separated: the models the study trains")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-cache", action="store_true", help="measure again, whatever the host's cache holds")
    args = p.parse_args(argv)
    cores = cores_available() if args.device == "cpu" else 1
    models = sorted(set(args.models.split(",")))
    ident = identity(models, args.device, cores)
    store = cache_path(ident)
    result = None if args.no_cache else cached(store, ident)
    from_cache = result is not None  # created_utc says when it was measured
    if result is None:
        result = {"identity": ident, **measure(thread_counts(cores), models, args.device, cores)}
        atomic_write_json(store, result)
    result = {**result, "from_cache": from_cache}
    atomic_write_json(args.out, result)
    print(json.dumps({p: [round(g["flops_s"] / 1e9, 1) for g in gs] for p, gs in result["gemm"].items()}), "GFLOP/s")
    return 0


if __name__ == "__main__":
    exit_finished(main())  # written: the interpreter's teardown would only delay the job
