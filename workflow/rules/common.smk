import copy
import os
import re
import sys
from types import SimpleNamespace

import jsonschema
import yaml
from jsonschema.exceptions import best_match
from snakemake.utils import validate

# The rules call this checkout's package (run options, atomic writes); it never calls them.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from ddpbench.options import command_line

CONFIG_SCHEMA = "../schemas/config.schema.yaml"


def coerce_cli_strings(value, schema):
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


def schema_node(schema, path):
    """The part of the schema that describes the value at ``path`` (keys and list indices)."""
    node = schema
    for key in path:
        if isinstance(key, int):
            node = next((s["items"] for s in [node, *node.get("oneOf", [])] if "items" in s), {})
        else:
            node = node.get("properties", {}).get(key, {})
    return node


def check_config(config, schema, where=""):
    """Fail before any job with the key, what is wrong, and what the key allows."""
    error = best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return
    path = [k for k in error.absolute_path if not isinstance(k, int)]
    key = ".".join(map(str, [where, *path] if where else path)) or "(top level)"
    allowed = schema_node(schema, path).get("description")
    raise ValueError(f"config {key}: {error.message}." + (f" Allowed: {allowed}" if allowed else ""))


def without_defaults(node):
    """A schema without its defaults: an override names only what it changes."""
    if isinstance(node, dict):
        return {k: without_defaults(v) for k, v in node.items() if k != "default"}
    return node


def variant_schema(schema):
    """One variant's overrides: any train option, with the train section's types and choices."""
    train = without_defaults(schema["properties"]["train"])
    loader = without_defaults(schema["properties"]["data"]["properties"]["loader"])
    data = {"type": "object", "additionalProperties": False, "properties": {"loader": loader}}
    return {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {"train": train, "data": data},
    }


def check_variants(variants, schema):
    """Variants as the user wrote them (before defaults are filled in), each checked on its own."""
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


with open(workflow.source_path(CONFIG_SCHEMA)) as schema_file:
    _schema = yaml.safe_load(schema_file)
config.update(coerce_cli_strings(config, _schema))
check_config(config, _schema)
VARIANTS = check_variants(config.get("grid", {}).get("variants"), _schema)
validate(config, schema=CONFIG_SCHEMA)  # fills in the defaults

# Every job runs this checkout's package (also in a --sdm conda environment, which lacks it).
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={os.path.join(workflow.basedir, 'src')}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)
ENV = "../../envs/ddpbench.yaml"
# A training launch ends with the Snakemake that runs its shell (ddpbench.launch --watch-pid):
# every Snakemake that reads this file, also the one srun starts in a cluster job, runs its jobs'
# shells from its own process.
os.environ["DDPBENCH_SNAKEMAKE_PID"] = str(os.getpid())


wildcard_constraints:
    world_size=r"\d+",
    batch_size=r"\d+",
    seed=r"\d+",
    variant="|".join(re.escape(name) for name in VARIANTS or {}) or "(?!)",


# ---------------------------------------------------------------- the grid
# What sizes and checks the grid depends only on the configuration, except world_sizes: auto
# and the check against this machine's size, which only the Snakemake that builds the DAG for
# local jobs applies. A job re-reads this file on its node (a cluster job sees only its own
# CPUs), and on a cluster this machine's size is not the limit.


def checks_this_machine():
    return workflow.is_main_process and workflow.local_exec


def train_device():
    """The device the rules plan for; auto plans for none (no GPU is requested) and the job decides."""
    return config["train"]["device"]


def capacity():
    """Ranks this machine can run at once: its cores (cpu) or GPUs (cuda)."""
    if train_device() == "cuda":
        import torch  # only for a CUDA grid sized by this machine

        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0))


def world_sizes():
    grid = config["grid"]
    if grid["world_sizes"] == "auto":
        if ranks_per_node() is not None:
            raise ValueError(
                "grid.world_sizes: auto counts this machine's cores, but train.ranks_per_node spreads runs over "
                "cluster nodes; list the world sizes, e.g. [1, 2, 4, 8]"
            )
        return [w for w in (2**k for k in range(16)) if w <= max(capacity(), 1)]
    sizes = sorted(grid["world_sizes"])
    if 1 not in sizes:
        raise ValueError(
            "grid.world_sizes must include 1: speedup and efficiency are measured against the one-worker run"
        )
    for w in sizes:
        nodes(w)  # a world size that does not split evenly over nodes fails here, before any job
    if checks_this_machine() and ranks_per_node() is None and not grid["allow_oversubscribe"]:
        check_fits_this_machine(sizes)
    return sizes


def check_fits_this_machine(sizes):
    limit, unit = capacity(), "GPUs" if train_device() == "cuda" else "cores"
    too_big = [w for w in sizes if w > limit]
    if too_big:
        raise ValueError(
            f"grid.world_sizes {too_big} exceed the {limit} {unit} available here; "
            f"use world sizes up to {limit}, or set grid.allow_oversubscribe: true to run them anyway"
        )


def ranks_per_node():
    value = config["train"]["ranks_per_node"]
    return None if value == "auto" else value


def nodes(world_size):
    """Nodes a world size spans: 1 unless train.ranks_per_node is set and smaller."""
    per_node = ranks_per_node()
    if per_node is None or world_size <= per_node:
        return 1
    if world_size % per_node:
        raise ValueError(
            f"world size {world_size} does not split into nodes of train.ranks_per_node = {per_node} ranks; "
            "use world sizes that are multiples of it"
        )
    return world_size // per_node


def world_size_pattern(multinode):
    """A wildcard constraint matching the grid's one-node (or multi-node) world sizes exactly."""
    if ranks_per_node() is None:
        return r"\d+" if not multinode else "(?!)"
    sizes = [w for w in world_sizes() if (nodes(w) > 1) == multinode]
    return "|".join(map(str, sizes)) if sizes else "(?!)"


# With grid.variants every path of a run gains the variant's folder; without, paths stay as they were.
RUN = ("{variant}/" if VARIANTS else "") + "ws{world_size}_bs{batch_size}_seed{seed}"


def run_names():
    return expand(
        RUN,
        variant=list(VARIANTS or {}),
        world_size=world_sizes(),
        batch_size=config["grid"]["batch_sizes"],
        seed=config["grid"]["seeds"],
    )


def run_files():
    return expand("results/runs/{name}.json", name=run_names())


def existing_run_files(wildcards):
    """The grid's runs that finished (a run file exists only for a successful run)."""
    return [path for path in run_files() if os.path.exists(path)]


def final_targets():
    return ["results/summary.csv", "results/summary.json", "results/report.html"]


# ---------------------------------------------------------------- data


def dataset_dir():
    return f"resources/{config['data']['source']}"


def dataset_files(wildcards=None):
    return [f"{dataset_dir()}/{name}" for name in DATASET_FILES]


DATASET_FILES = [
    "train_images.npy",
    "train_labels.npy",
    "test_images.npy",
    "test_labels.npy",
    "meta.json",
]


def output_dir(wildcards, output):
    return os.path.dirname(output[0])


def input_dir(wildcards, input):
    return os.path.dirname(input[0])


def cifar10_archive(wildcards):
    return config["data"]["archive"] or "resources/cifar-10-python.tar.gz"


def check_archive():
    archive = config["data"]["archive"]
    if workflow.is_main_process and config["data"]["source"] == "cifar10" and archive is not None:
        if not os.path.isfile(archive):
            raise ValueError(
                f"config data.archive: no file at {archive!r}. Point it at a local cifar-10-python.tar.gz, "
                "or set it to null to download from data.url"
            )


check_archive()


# ---------------------------------------------------------------- training


# Options that shape the DAG (nodes, GPUs requested) are the same for every variant.
GRID_WIDE_OPTIONS = ("ranks_per_node", "device")


def check_variant_overrides():
    for name, overrides in (VARIANTS or {}).items():
        fixed = sorted(set((overrides or {}).get("train", {})) & set(GRID_WIDE_OPTIONS))
        if fixed:
            raise ValueError(
                f"config grid.variants.{name}.train.{fixed[0]}: it decides how runs are placed, the same for "
                f"every variant; set it in train: instead"
            )


check_variant_overrides()


def variant_options(wildcards):
    """The run's options: the train section (and data.loader) with its variant's overrides on top."""
    options = {**config["train"], "loader": config["data"]["loader"]}
    overrides = (VARIANTS or {}).get(getattr(wildcards, "variant", None)) or {}
    options.update(overrides.get("train", {}))
    options.update(overrides.get("data", {}))
    return options


def run_options(wildcards):
    """The command-line options of `python -m ddpbench.train`, passed through without naming each."""
    return command_line(variant_options(wildcards))


def ranks_on_node(wildcards):
    world_size = int(wildcards.world_size)
    return world_size // nodes(world_size)


def train_threads(wildcards):
    """A node's CPUs for the job: threads_per_worker for each of its ranks. With auto, locally
    every core Snakemake may use (the job divides them among its ranks); on a cluster, one per
    rank unless threads_per_worker says more."""
    per_worker = variant_options(wildcards)["threads_per_worker"]
    if per_worker == "auto":
        return workflow.cores if workflow.local_exec else ranks_on_node(wildcards)
    return ranks_on_node(wildcards) * per_worker


def omp_threads(wildcards, threads):
    """OMP_NUM_THREADS per rank: the job's granted threads shared among its ranks (Snakemake
    would otherwise give every rank all of them)."""
    return max(1, threads // ranks_on_node(wildcards))


def train_mem_mb(wildcards):
    """Memory per node: about 1.5 GB a rank (torch's CUDA build), plus the shared dataset."""
    return 1500 * ranks_on_node(wildcards) + 512


def train_nodes(wildcards):
    return nodes(int(wildcards.world_size))


def train_gpus(wildcards):
    return ranks_on_node(wildcards) if train_device() == "cuda" else 0


def train_gres(wildcards):
    return f"gpu:{train_gpus(wildcards)}" if train_device() == "cuda" else ""


def pin_cores(wildcards, resources):
    """DDPBENCH_PIN for the engine: pin ranks to cores only while timed runs go one at a time
    (the job holds the single bench_slot), so two jobs never pin onto the same cores."""
    cap = workflow.global_resources.get("bench_slot")
    cap = getattr(cap, "value", cap)
    # Otherwise "auto": the engine pins only if a scheduler confined it to exactly its cores.
    return 1 if resources.get("bench_slot", 0) >= 1 and cap == 1 else "auto"


def train_launcher(wildcards, threads, resources):
    """torchrun on one node (a free rendezvous port), or srun starting one torchrun per node
    that meet at c10d on the allocation's first node (the port derived from the job id); either
    under ddpbench.launch, which ends it if Snakemake dies and, while timed runs are meant to run
    alone (the same test as pin_cores), queues it on the host-wide timing lock."""
    world_size = int(wildcards.world_size)
    n = nodes(world_size)
    if n == 1:
        return f"{launch_prefix(wildcards, resources)} -- {one_node_launcher(world_size, variant_options(wildcards))}"
    return (
        f"{launch_prefix(wildcards, resources, timed=False)} -- srun --nodes={n} --ntasks-per-node=1 --cpus-per-task={threads} --kill-on-bad-exit=1"
        f" torchrun --nnodes {n} --nproc-per-node {world_size // n}"
        ' --rdzv-backend c10d --rdzv-endpoint "$head:$port" --rdzv-id "$SLURM_JOB_ID"'
    )


def launch_prefix(wildcards, resources, timed=True):
    """ddpbench.launch, which ends the launch if Snakemake dies and, while timed jobs are meant to
    run alone (the same test as pin_cores), queues it on the host-wide timing lock that the timed
    jobs of every workflow on this host share."""
    lock = " --timing-lock" if timed and pin_cores(wildcards, resources) == 1 else ""
    return f'python -m ddpbench.launch --watch-pid "$DDPBENCH_SNAKEMAKE_PID"{lock}'


def one_node_launcher(world_size, options):
    """torchrun with a free rendezvous port; or, with emulate_network, one torchrun agent per
    rank, each in its own network namespace, joined by shaped links."""
    link = options.get("emulate_network")
    if link is None:
        return f"torchrun --standalone --nproc-per-node {world_size}"
    return (
        f"python -m ddpbench.netem launch --nodes {world_size} --bandwidth-gbit {link['bandwidth_gbit']}"
        f" --latency-us {link.get('latency_us', 0)} --"
    )


def check_emulated_networks():
    """Emulated links need root and tc (and netem for latency): say so before any job."""
    if not workflow.is_main_process:
        return
    for name in [None, *(VARIANTS or {})]:
        link = variant_options(SimpleNamespace(variant=name)).get("emulate_network")
        if link is not None:
            from ddpbench.netem import EmulationError, require_emulation

            try:
                require_emulation(link["bandwidth_gbit"], link.get("latency_us", 0))
            except EmulationError as err:
                where = f"grid.variants.{name}.train" if name else "train"
                raise ValueError(f"config {where}.emulate_network: {err}") from None


check_emulated_networks()


def rendezvous(wildcards):
    """Shell lines that find a multi-node run's head node and port (none for one node). The
    SLURM plugin strips SLURM_JOB_NODELIST from the job's environment: ask squeue."""
    if nodes(int(wildcards.world_size)) == 1:
        return ""
    return (
        'head=$(scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n1);'
        " port=$((29400 + SLURM_JOB_ID % 1000));"
    )


# ---------------------------------------------------------------- prediction
# The all-reduce timings the scaling prediction (ddpbench.predict, in summary.json) is fitted to:
# one short ddpbench.commbench launch at the largest measured world size that runs on one node,
# timing each measured world size of 2 or more in a group of its first ranks (one start-up for
# all). With grid.variants the prediction is the baseline variant's (grid.baseline, else the first).

COMM = "comm/" + ("{variant}/" if VARIANTS else "")  # under results/, logs/ and benchmarks/
COMM_WORLD_SIZES = [w for w in world_sizes() if w >= 2 and nodes(w) == 1]
COMM_LAUNCH_SIZE = max(COMM_WORLD_SIZES, default=0)  # the one launch times them all
PREDICTION_VARIANT = (config["grid"].get("baseline") or next(iter(VARIANTS))) if VARIANTS else None
COMM_FILES = expand(
    f"results/{COMM}ws{{world_size}}.json",
    world_size=COMM_WORLD_SIZES,
    **({"variant": [PREDICTION_VARIANT]} if VARIANTS else {}),
)


def comm_wildcards(wildcards):
    """The commbench job as a training job of the largest world size it times (for its resources)."""
    return SimpleNamespace(world_size=str(COMM_LAUNCH_SIZE), variant=getattr(wildcards, "variant", None))


def comm_mem_mb(wildcards):
    return train_mem_mb(comm_wildcards(wildcards))


def comm_gpus(wildcards):
    return train_gpus(comm_wildcards(wildcards))


def comm_launcher(wildcards):
    """torchrun, or the emulated network's launcher, as the runs it predicts. Of the wildcards
    alone, so that a changed emulated link reruns the timings (Snakemake does not compare a
    parameter that needs resources with the last run's)."""
    return one_node_launcher(COMM_LAUNCH_SIZE, variant_options(wildcards))


def comm_threads(wildcards):
    return train_threads(comm_wildcards(wildcards))


def comm_omp_threads(wildcards, threads):
    return omp_threads(comm_wildcards(wildcards), threads)


def comm_options(wildcards, threads):
    """What decides the messages: the model's buckets at the runs' bucket cap, on their device;
    and the step commbench times with the ranks computing at once: the model at the per-rank batch
    of the launch size's runs (of the grid's first batch size), at their threads per rank."""
    options = variant_options(wildcards)
    batch = config["grid"]["batch_sizes"][0]
    if options["batch_size_mode"] == "global":
        batch = max(1, batch // COMM_LAUNCH_SIZE)
    per_rank = comm_omp_threads(wildcards, threads)
    return command_line({k: options[k] for k in ("model", "bucket_cap_mb", "device", "timeout")}) + (
        f" --step-batch {batch} --threads-per-rank {per_rank}"
    )
