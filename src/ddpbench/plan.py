"""The plan of a study: its configuration coerced and checked, its runs (world sizes, nodes, names,
each run's options) and their jobs (threads, memory, GPUs, launch commands), commbench's included.

workflow/rules/common.smk builds it from the config and the few facts of Snakemake's ``workflow``
object it needs; the rules take its methods as input functions (hence the ``wildcards``, ``threads``
and ``resources`` arguments). It imports no Snakemake, so tests call it on its own.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from ddpbench.cpus import cores_available
from ddpbench.fetch import check_archive
from ddpbench.options import command_line
from ddpbench.schedule import check_warmup

# Options that shape the DAG (nodes, GPUs requested) are the same for every variant.
GRID_WIDE_OPTIONS = ("ranks_per_node", "device")
DATASET_FILES = ["train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy", "meta.json"]
# A multi-node run's head node and port (the SLURM plugin strips SLURM_JOB_NODELIST: ask squeue).
RENDEZVOUS = (
    'head=$(scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n1);'
    " port=$((29400 + SLURM_JOB_ID % 1000));"
)


# ---------------------------------------------------------------- the configuration


def coerce_cli_strings(value: Any, schema: dict) -> Any:
    """`--config` values arrive as strings (Snakemake reads them with YAML's BaseLoader):
    turn '2' into 2, 'null' into None or 'true' into True where the schema asks for that type.
    """
    alternatives = [schema, *schema.get("oneOf", [])]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: coerce_cli_strings(v, properties.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        items = next((s["items"] for s in alternatives if "items" in s), {})
        return [coerce_cli_strings(v, items) for v in value]
    if not isinstance(value, str):
        return value
    types = set()
    for s in alternatives:
        t = s.get("type", [])
        types.update([t] if isinstance(t, str) else t)
    if not types & {"integer", "number", "boolean", "null"}:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:  # a path such as "*x" or "it's": a string, as written
        return value
    if (
        (parsed is None and "null" in types)
        or (isinstance(parsed, bool) and "boolean" in types)
        or (isinstance(parsed, int) and not isinstance(parsed, bool) and types & {"integer", "number"})
        or (isinstance(parsed, float) and "number" in types)
    ):
        return parsed
    return value


def schema_node(schema: dict, path: list) -> dict:
    """The part of the schema that describes the value at ``path`` (keys and list indices)."""
    node = schema
    for key in path:
        if isinstance(key, int):
            node = next((s["items"] for s in [node, *node.get("oneOf", [])] if "items" in s), {})
        else:
            node = node.get("properties", {}).get(key, {})
    return node


def check_config(config: dict, schema: dict, where: str = "") -> None:
    """Fail before any job with the key, what is wrong, and what the key allows."""
    error = best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return
    path = [k for k in error.absolute_path if not isinstance(k, int)]
    key = ".".join(map(str, [where, *path] if where else path)) or "(top level)"
    allowed = schema_node(schema, path).get("description")
    raise ValueError(f"config {key}: {error.message}." + (f" Allowed: {allowed}" if allowed else ""))


def without_defaults(node: Any) -> Any:
    """A schema without its defaults: an override names only what it changes."""
    if isinstance(node, dict):
        return {k: without_defaults(v) for k, v in node.items() if k != "default"}
    return node


def variant_schema(schema: dict) -> dict:
    """One variant's overrides: any train option, with the train section's types and choices."""
    train = without_defaults(schema["properties"]["train"])
    loader = without_defaults(schema["properties"]["data"]["properties"]["loader"])
    data = {"type": "object", "additionalProperties": False, "properties": {"loader": loader}}
    return {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {"train": train, "data": data},
    }


def check_variants(config: dict, schema: dict) -> dict | None:
    """Variants as the user wrote them (before defaults are filled in), each checked on its own and
    coerced in place; returned as a copy that filling in the defaults leaves alone."""
    variants = config.get("grid", {}).get("variants")
    for name, overrides in (variants or {}).items():
        one = variant_schema(schema)
        variants[name] = coerce_cli_strings(overrides, one) or {}
        check_config(variants[name], one, where=f"grid.variants.{name}")
    baseline = config.get("grid", {}).get("baseline")
    if baseline is not None and baseline not in (variants or {}):
        raise ValueError(
            f"config grid.baseline: {baseline!r} is not a variant; choose one of {sorted(variants or {})} or null"
        )
    return copy.deepcopy(variants)


def check_variant_overrides(variants: dict) -> None:
    for name, overrides in variants.items():
        fixed = sorted(set((overrides or {}).get("train", {})) & set(GRID_WIDE_OPTIONS))
        if fixed:
            raise ValueError(
                f"config grid.variants.{name}.train.{fixed[0]}: it decides how runs are placed, the same for "
                f"every variant; set it in train: instead"
            )


# ---------------------------------------------------------------- the machine and the launchers


def machine_capacity(device: str) -> int:
    """Ranks this machine can run at once: its cores (cpu) or GPUs (cuda)."""
    if device != "cuda":
        return cores_available()
    import torch  # only for a CUDA grid sized by this machine

    return torch.cuda.device_count()


def check_fits(sizes: list[int], limit: int, device: str) -> None:
    unit = "GPUs" if device == "cuda" else "cores"
    too_big = [w for w in sizes if w > limit]
    if too_big:
        raise ValueError(
            f"grid.world_sizes {too_big} exceed the {limit} {unit} available here; "
            f"use world sizes up to {limit}, or set grid.allow_oversubscribe: true to run them anyway"
        )


def one_node_launcher(world_size: int, options: dict) -> str:
    """torchrun with a free rendezvous port; or, with emulate_network, one torchrun agent per
    rank, each in its own network namespace, joined by shaped links."""
    link = options.get("emulate_network")
    if link is None:
        return f"torchrun --standalone --nproc-per-node {world_size}"
    return (
        f"python -m ddpbench.netem launch --nodes {world_size} --bandwidth-gbit {link['bandwidth_gbit']}"
        f" --latency-us {link.get('latency_us', 0)} --"
    )


# ---------------------------------------------------------------- the grid


class Grid:
    """The runs of a study, from the validated config (defaults filled in) and its variants as written.

    Only the Snakemake that builds the DAG (``is_main_process``) checks the archive and the emulated
    links, and, for local jobs, the world sizes against this machine's ``capacity``: a cluster job
    re-reads the workflow on a node that sees only its own CPUs, and there this machine is not the limit.
    """

    def __init__(
        self,
        config: dict,
        variants: dict | None,
        *,
        is_main_process: bool,
        local_exec: bool,
        capacity: Callable[[str], int] = machine_capacity,
    ):
        self.config, self.variants = config, variants or {}
        self.is_main_process, self.local_exec, self.capacity = is_main_process, local_exec, capacity
        # With grid.variants every path of a run gains the variant's folder; without, paths stay as they were.
        self.run_pattern = ("{variant}/" if self.variants else "") + "ws{world_size}_bs{batch_size}_seed{seed}"

    @property
    def device(self) -> str:
        """The device the rules plan for; auto plans for none (no GPU is requested) and the job decides."""
        return self.config["train"]["device"]

    @property
    def ranks_per_node(self) -> int | None:
        value = self.config["train"]["ranks_per_node"]
        return None if value == "auto" else value

    def nodes(self, world_size: int) -> int:
        """Nodes a world size spans: 1 unless train.ranks_per_node is set and smaller."""
        per_node = self.ranks_per_node
        if per_node is None or world_size <= per_node:
            return 1
        if world_size % per_node:
            raise ValueError(
                f"world size {world_size} does not split into nodes of train.ranks_per_node = {per_node} ranks; "
                "use world sizes that are multiples of it"
            )
        return world_size // per_node

    def world_sizes(self) -> list[int]:
        """The grid's world sizes, checked; auto: 1, 2, 4, ... up to this machine's capacity."""
        grid = self.config["grid"]
        if grid["world_sizes"] == "auto":
            if self.ranks_per_node is not None:
                raise ValueError(
                    "grid.world_sizes: auto counts this machine's cores, but train.ranks_per_node spreads runs "
                    "over cluster nodes; list the world sizes, e.g. [1, 2, 4, 8]"
                )
            return [w for w in (2**k for k in range(16)) if w <= max(self.capacity(self.device), 1)]
        sizes = sorted(grid["world_sizes"])
        if 1 not in sizes:
            raise ValueError(
                "grid.world_sizes must include 1: speedup and efficiency are measured against the one-worker run"
            )
        for w in sizes:
            self.nodes(w)  # a world size that does not split evenly over nodes fails here, before any job
        checks_this_machine = self.is_main_process and self.local_exec
        if checks_this_machine and self.ranks_per_node is None and not grid["allow_oversubscribe"]:
            check_fits(sizes, self.capacity(self.device), self.device)
        return sizes

    def world_size_pattern(self, multinode: bool) -> str:
        """A wildcard constraint matching the grid's one-node (or multi-node) world sizes exactly."""
        if self.ranks_per_node is None:
            return r"\d+" if not multinode else "(?!)"
        sizes = [w for w in self.world_sizes() if (self.nodes(w) > 1) == multinode]
        return "|".join(map(str, sizes)) if sizes else "(?!)"

    def run_names(self) -> list[str]:
        """Every run, in the order of Snakemake's expand: variant, world size, batch size, seed."""
        grid = self.config["grid"]
        runs = itertools.product(self.variants or [None], self.world_sizes(), grid["batch_sizes"], grid["seeds"])
        return [self.run_pattern.format(variant=v, world_size=w, batch_size=b, seed=s) for v, w, b, s in runs]

    def run_files(self) -> list[str]:
        return [f"results/runs/{name}.json" for name in self.run_names()]

    def existing_run_files(self, wildcards) -> list[str]:
        """The grid's runs that finished (a run file exists only for a successful run)."""
        return [path for path in self.run_files() if os.path.exists(path)]

    def dataset_files(self, wildcards=None) -> list[str]:
        return [f"resources/{self.config['data']['source']}/{name}" for name in DATASET_FILES]

    def variant_options(self, wildcards) -> dict:
        """The run's options: the train section (and data.loader) with its variant's overrides on top."""
        options = {**self.config["train"], "loader": self.config["data"]["loader"]}
        overrides = self.variants.get(getattr(wildcards, "variant", None)) or {}
        options.update(overrides.get("train", {}))
        options.update(overrides.get("data", {}))
        return options

    def check(self) -> None:
        """Fail before any job: check_archive, check_variant_overrides, check_variant_options, world_sizes."""
        if self.is_main_process:
            check_archive(self.config["data"])
        check_variant_overrides(self.variants)
        if self.is_main_process:
            self.check_variant_options()
        self.world_sizes()

    def check_variant_options(self) -> None:
        """Each variant's options (the train section's without variants): a warm-up shorter than the
        run (schedule.check_warmup); emulated links need root and tc (and netem for latency)."""
        for name in [None, *self.variants]:
            options = self.variant_options(SimpleNamespace(variant=name))
            where = f"grid.variants.{name}.train" if name else "train"
            check_warmup(options, where)
            if (link := options.get("emulate_network")) is not None:
                from ddpbench.netem import EmulationError, require_emulation

                try:
                    require_emulation(link["bandwidth_gbit"], link.get("latency_us", 0))
                except EmulationError as err:
                    raise ValueError(f"config {where}.emulate_network: {err}") from None


# ---------------------------------------------------------------- the jobs


class Jobs:
    """Each run's job: its resources and its launch command.

    ``cores`` is read only when asked (Snakemake's workflow.cores fails unless --cores was given);
    ``bench_slot_cap`` is the global bench_slot resource (profiles/default caps it at 1).
    """

    def __init__(self, grid: Grid, *, cores: Callable[[], int], bench_slot_cap: int | None):
        self.grid, self.cores, self.bench_slot_cap = grid, cores, bench_slot_cap

    def run_options(self, wildcards) -> str:
        """The command-line options of `python -m ddpbench.train`, passed through without naming each."""
        return command_line(self.grid.variant_options(wildcards))

    def ranks_on_node(self, wildcards) -> int:
        world_size = int(wildcards.world_size)
        return world_size // self.grid.nodes(world_size)

    def peak_threads(self) -> int:
        """ddpbench.peak's threads: the --cores Snakemake may use; without (a cluster's --jobs) one."""
        try:
            return self.cores()
        except Exception:  # Snakemake's WorkflowError (this module imports no Snakemake)
            return 1

    def train_threads(self, wildcards) -> int:
        """A node's CPUs for the job: threads_per_worker for each of its ranks. With auto, locally
        every core Snakemake may use (the job divides them among its ranks); on a cluster, one per
        rank unless threads_per_worker says more."""
        per_worker = self.grid.variant_options(wildcards)["threads_per_worker"]
        if per_worker == "auto":
            return self.cores() if self.grid.local_exec else self.ranks_on_node(wildcards)
        return self.ranks_on_node(wildcards) * per_worker

    def omp_threads(self, wildcards, threads: int) -> int:
        """OMP_NUM_THREADS per rank: the job's granted threads shared among its ranks (Snakemake
        would otherwise give every rank all of them)."""
        return max(1, threads // self.ranks_on_node(wildcards))

    def train_mem_mb(self, wildcards) -> int:
        """Memory per node: about 1.5 GB a rank (torch's CUDA build), plus the shared dataset."""
        return 1500 * self.ranks_on_node(wildcards) + 512

    def train_nodes(self, wildcards) -> int:
        return self.grid.nodes(int(wildcards.world_size))

    def train_gpus(self, wildcards) -> int:
        return self.ranks_on_node(wildcards) if self.grid.device == "cuda" else 0

    def train_gres(self, wildcards) -> str:
        return f"gpu:{self.train_gpus(wildcards)}" if self.grid.device == "cuda" else ""

    def pin_cores(self, wildcards, resources: Mapping) -> int | str:
        """DDPBENCH_PIN for the engine: pin ranks to cores only while timed runs go one at a time
        (the job holds the single bench_slot), so two jobs never pin onto the same cores."""
        # Otherwise "auto": the engine pins only if a scheduler confined it to exactly its cores.
        return 1 if resources.get("bench_slot", 0) >= 1 and self.bench_slot_cap == 1 else "auto"

    def launch_prefix(self, wildcards, resources: Mapping, timed: bool = True) -> str:
        """ddpbench.launch, which ends the launch if Snakemake dies and, while timed jobs are meant to
        run alone (the same test as pin_cores), queues it on the host-wide timing lock that the timed
        jobs of every workflow on this host share."""
        lock = " --timing-lock" if timed and self.pin_cores(wildcards, resources) == 1 else ""
        return f'python -m ddpbench.launch --watch-pid "$DDPBENCH_SNAKEMAKE_PID"{lock}'

    def train_launcher(self, wildcards, threads: int, resources: Mapping) -> str:
        """torchrun on one node (a free rendezvous port), or srun starting one torchrun per node
        that meet at c10d on the allocation's first node (the port derived from the job id); either
        under launch_prefix."""
        world_size = int(wildcards.world_size)
        n = self.grid.nodes(world_size)
        if n == 1:
            launcher = one_node_launcher(world_size, self.grid.variant_options(wildcards))
            return f"{self.launch_prefix(wildcards, resources)} -- {launcher}"
        return (
            f"{self.launch_prefix(wildcards, resources, timed=False)} -- srun --nodes={n} --ntasks-per-node=1"
            f" --cpus-per-task={threads} --kill-on-bad-exit=1 torchrun --nnodes {n} --nproc-per-node {world_size // n}"
            ' --rdzv-backend c10d --rdzv-endpoint "$head:$port" --rdzv-id "$SLURM_JOB_ID"'
        )

    def rendezvous(self, wildcards) -> str:
        """Shell lines that find a multi-node run's head node and port (none for one node)."""
        return "" if self.grid.nodes(int(wildcards.world_size)) == 1 else RENDEZVOUS


# ---------------------------------------------------------------- commbench


class CommBench:
    """The all-reduce timings the scaling prediction (ddpbench.predict) is fitted to: one commbench
    launch at the largest world size that runs on one node, timing each world size of 2 or more in a
    group of its first ranks (one start-up for all), as a training job of that size; with variants,
    the baseline variant's (grid.baseline, else the first)."""

    def __init__(self, jobs: Jobs):
        self.jobs, self.grid = jobs, jobs.grid
        self.dir = "comm/" + ("{variant}/" if self.grid.variants else "")  # under results/, logs/, benchmarks/

    def world_sizes(self) -> list[int]:
        return [w for w in self.grid.world_sizes() if w >= 2 and self.grid.nodes(w) == 1]

    @property
    def launch_size(self) -> int:
        return max(self.world_sizes(), default=0)  # the one launch times them all

    @property
    def prediction_variant(self) -> str | None:
        variants = self.grid.variants
        return (self.grid.config["grid"].get("baseline") or next(iter(variants))) if variants else None

    def files(self) -> list[str]:
        folder = self.dir.format(variant=self.prediction_variant)
        return [f"results/{folder}ws{w}.json" for w in self.world_sizes()]

    def as_run(self, wildcards) -> SimpleNamespace:
        """The wildcards of a training run of the launch size (for its resources)."""
        return SimpleNamespace(world_size=str(self.launch_size), variant=getattr(wildcards, "variant", None))

    def mem_mb(self, wildcards) -> int:
        return self.jobs.train_mem_mb(self.as_run(wildcards))

    def gpus(self, wildcards) -> int:
        return self.jobs.train_gpus(self.as_run(wildcards))

    def threads(self, wildcards) -> int:
        return self.jobs.train_threads(self.as_run(wildcards))

    def omp_threads(self, wildcards, threads: int) -> int:
        return self.jobs.omp_threads(self.as_run(wildcards), threads)

    def launcher(self, wildcards) -> str:
        """torchrun, or the emulated network's launcher, as the runs it predicts. Of the wildcards
        alone, so that a changed emulated link reruns the timings (Snakemake does not compare a
        parameter that needs resources with the last run's)."""
        return one_node_launcher(self.launch_size, self.grid.variant_options(wildcards))

    def options(self, wildcards, threads: int) -> str:
        """What decides the messages: the model's buckets at the runs' bucket cap, on their device;
        and the step commbench times with the ranks computing at once: the model at the per-rank batch
        of the launch size's runs (of the grid's first batch size), at their threads per rank."""
        options = self.grid.variant_options(wildcards)
        batch = self.grid.config["grid"]["batch_sizes"][0]
        if options["batch_size_mode"] == "global":
            batch = max(1, batch // self.launch_size)
        passed = command_line({k: options[k] for k in ("model", "bucket_cap_mb", "device", "timeout")})
        return f"{passed} --step-batch {batch} --threads-per-rank {self.omp_threads(wildcards, threads)}"
