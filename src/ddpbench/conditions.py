"""How and where the runs of a study were measured, for the report's machine and method sections:
the machine, the method's facts, the host-wide timing lock, runs that overlapped on a host, how the
cores were shared across world sizes (the resource model) and the options every run agreed on."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from ddpbench.runtable import records

# Run-config keys that differ by design between the runs of one grid.
PER_RUN_KEYS = frozenset(
    {
        "seed",
        "world_size",
        "out",
        "nnodes",
        "ranks_per_node",
        "global_batch_size",
        "per_rank_batch_size",
        "lr_effective",
        "threads_per_worker",
        "batch_size",
    }
)
MACHINE_FIELDS = [
    ("cpu_model", "CPU"),
    ("logical_cores", "Logical cores"),
    ("cores_available", "Cores available"),
    ("device", "Device"),
    ("backend", "Backend"),
    ("torch", "PyTorch"),
    ("torchvision", "torchvision"),
    ("python", "Python"),
    ("hostnames", "Hosts"),
    ("platform", "Platform"),
    ("git_commit", "Git commit"),
]


def distinct(values: Iterable[object]) -> list:
    """The different values (list items counted one by one), in first-seen order, None left out."""
    seen = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in seen:
                seen.append(item)
    return seen


def machine(runs: list[dict]) -> list[dict]:
    """What the runs ran on: each field's values, all of them where runs differ."""
    envs = [r["environment"] for r in runs]
    out = []
    for key, label in MACHINE_FIELDS:
        if key == "device":
            values = distinct(f"{e.get('device')} ({e.get('device_name')})" for e in envs)
        else:
            values = distinct(e.get(key) for e in envs)
        out.append({"key": key, "label": label, "values": values})
    return out


def timing_lock(runs: list[dict]) -> dict | None:
    """The host-wide lock timed runs queued on (environment.timing_lock), or None if no run took one."""
    held = [r["environment"]["timing_lock"] for r in runs if r["environment"].get("timing_lock")]
    if not held:
        return None
    waits = [lock["wait_s"] for lock in held]
    return {
        "paths": distinct(lock["path"] for lock in held),
        "n_runs": len(held),
        "wait_total_s": float(sum(waits)),
        "wait_max_s": float(max(waits)),
    }


def method(runs: list[dict], table: pd.DataFrame) -> dict:
    """The facts the "How this was measured" section quotes."""
    configs = [r["config"] for r in runs]
    threads = (
        table[["world_size", "threads_per_worker"]].drop_duplicates().sort_values(["world_size", "threads_per_worker"])
    )
    return {
        "threads": records(threads),
        "cores_available": distinct(r["environment"]["cores_available"] for r in runs),
        "epochs": distinct(c["epochs"] for c in configs),
        "model": distinct(r["model"]["name"] for r in runs),
        "parameters": distinct(r["model"]["parameters"] for r in runs),
        "dataset": distinct(r["dataset"]["source"] for r in runs),
        "train_samples": distinct(r["dataset"]["train_samples_used"] for r in runs),
        "test_samples": distinct(r["dataset"]["test_samples"] for r in runs),
        "batch_size_mode": distinct(c["batch_size_mode"] for c in configs),
        "loader": distinct(c["loader"] for c in configs),
        "allreduce": distinct(c["allreduce"] for c in configs if c["world_size"] > 1),
        "comm_timed": bool(table.comm_exposed_time_s.notna().any()),
        "startup_mean_s": None if table.startup_s.isna().all() else float(table.startup_s.mean()),
        "timing_lock": timing_lock(runs),
    }


def overlaps(table: pd.DataFrame) -> list[dict]:
    """Pairs of runs whose start-to-finish spans overlapped on a shared host."""
    spans = table.assign(host=table.hostnames.str.split(",")).explode("host")
    spans = spans.sort_values(["host", "started_utc", "name"])[["host", "started_utc", "finished_utc", "name"]]
    pairs = []
    for host, g in spans.groupby("host", sort=True):
        rows = list(g.itertuples(index=False))
        for i, run in enumerate(rows):
            for other in rows[i + 1 :]:
                if other.started_utc >= run.finished_utc:
                    break
                pairs.append({"host": host, "runs": [run.name, other.name]})
    return pairs


def resource_kind(g: pd.DataFrame) -> str:
    """How one set of runs shared the machine across world sizes (see the summary's DEFINITIONS["resource_model"])."""
    if g.threads_per_worker.nunique() == 1:
        return "cores_per_worker_fixed"
    if (g.threads_per_worker * g.world_size).nunique() == 1:
        return "cores_fixed"
    return "mixed"


def resource_model(table: pd.DataFrame) -> dict:
    """Whether the study held the total cores or the cores per worker fixed as the world size grew:
    what efficiency means (one rank on all the cores, or one rank on a worker's share)."""
    by_variant = {v: resource_kind(g) for v, g in table.groupby("variant", sort=False)}
    kinds = set(by_variant.values())
    cores = table.assign(cores=table.threads_per_worker * table.world_size)
    by_world_size = [
        {
            "world_size": int(ws),
            "threads_per_worker": sorted(int(t) for t in g.threads_per_worker.unique()),
            "cores": sorted(int(c) for c in g.cores.unique()),
        }
        for ws, g in cores.groupby("world_size", sort=True)
    ]
    return {
        "kind": kinds.pop() if len(kinds) == 1 else "mixed",
        "by_world_size": by_world_size,
        "by_variant": None if list(by_variant) == [""] else by_variant,
    }


def shared_run_config(runs: list[dict]) -> dict:
    """The options every run agrees on: what the grid held fixed, shown when no workflow config is given."""
    configs = [r["config"] for r in runs]
    return {k: v for k, v in configs[0].items() if k not in PER_RUN_KEYS and all(c.get(k) == v for c in configs)}
