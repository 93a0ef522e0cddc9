import os

import yaml
from snakemake.utils import validate


def coerce_cli_strings(value, schema):
    """`--config` values arrive as strings (Snakemake reads them with YAML's BaseLoader):
    turn '2' into 2, 'null' into None or 'true' into True where the schema asks for that type.
    """
    alternatives = [schema, *schema.get("oneOf", [])]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {
            k: coerce_cli_strings(v, properties.get(k, {})) for k, v in value.items()
        }
    if isinstance(value, list):
        items = next((s["items"] for s in alternatives if "items" in s), {})
        return [coerce_cli_strings(v, items) for v in value]
    if isinstance(value, str):
        types = set()
        for s in alternatives:
            t = s.get("type", [])
            types.update([t] if isinstance(t, str) else t)
        parsed = (
            yaml.safe_load(value)
            if types & {"integer", "number", "boolean", "null"}
            else value
        )
        if (
            (parsed is None and "null" in types)
            or (isinstance(parsed, bool) and "boolean" in types)
            or (
                isinstance(parsed, int)
                and not isinstance(parsed, bool)
                and types & {"integer", "number"}
            )
            or (isinstance(parsed, float) and "number" in types)
        ):
            return parsed
    return value


CONFIG_SCHEMA = "../schemas/config.schema.yaml"
with open(workflow.source_path(CONFIG_SCHEMA)) as schema_file:
    config.update(coerce_cli_strings(config, yaml.safe_load(schema_file)))
validate(config, schema=CONFIG_SCHEMA)

# Every job runs this checkout's package (also in a --sdm conda environment, which lacks it).
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={os.path.join(workflow.basedir, 'src')}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)
ENV = "../../envs/ddpbench.yaml"


wildcard_constraints:
    world_size=r"\d+",
    batch_size=r"\d+",
    seed=r"\d+",


def cores_available():
    return len(os.sched_getaffinity(0))


def gpus_available():
    import torch  # imported only when a CUDA grid is asked for

    return torch.cuda.device_count()


def train_device():
    device = config["train"]["device"]
    if device == "auto":
        return "cuda" if gpus_available() else "cpu"
    return device


def capacity():
    """Ranks this machine can run at once: its cores (cpu) or GPUs (cuda)."""
    return gpus_available() if train_device() == "cuda" else cores_available()


def world_sizes():
    grid = config["grid"]
    limit, unit = capacity(), "GPUs" if train_device() == "cuda" else "cores"
    if grid["world_sizes"] == "auto":
        sizes = [w for w in (2**k for k in range(16)) if w <= max(limit, 1)]
    else:
        sizes = sorted(grid["world_sizes"])
        # With ranks_per_node set, nodes come from the cluster: this machine's size does not bound them.
        too_big = [w for w in sizes if w > limit] if ranks_per_node() is None else []
        if too_big and not grid["allow_oversubscribe"]:
            raise ValueError(
                f"grid.world_sizes {too_big} exceed the {limit} {unit} available here; "
                f"use world sizes up to {limit}, or set grid.allow_oversubscribe: true to run them anyway"
            )
    if 1 not in sizes:
        raise ValueError(
            "grid.world_sizes must include 1: speedup and efficiency are measured against the one-worker run"
        )
    for w in sizes:
        nodes(
            w
        )  # a world size that does not split evenly over nodes fails here, before any job
    return sizes


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
    sizes = [w for w in world_sizes() if (nodes(w) > 1) == multinode]
    return "|".join(map(str, sizes)) if sizes else "(?!)"


def run_names():
    return expand(
        "ws{world_size}_bs{batch_size}_seed{seed}",
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


# ---------------------------------------------------------------- training


def ranks_on_node(wildcards):
    world_size = int(wildcards.world_size)
    return world_size // nodes(world_size)


def train_threads(wildcards):
    """A node's cores for the job: each of its ranks gets threads_per_worker (auto: an equal
    share of this machine's cores)."""
    ranks = ranks_on_node(wildcards)
    per_worker = config["train"]["threads_per_worker"]
    if per_worker == "auto":
        per_worker = max(1, cores_available() // ranks)
    return ranks * per_worker


def threads_per_worker(wildcards, threads):
    """Threads each rank uses, from the threads Snakemake granted (it may scale them down)."""
    per_worker = config["train"]["threads_per_worker"]
    if per_worker == "auto":
        return max(1, threads // ranks_on_node(wildcards))
    return per_worker


def train_mem_mb(wildcards):
    """Memory per node: a rank peaks near 1.1 GB (torch's CUDA build, measured), plus the shared dataset."""
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


def train_command(launcher):
    """The shell command of a train rule: the environment, a launcher, the engine and its log."""
    return (
        "DDPBENCH_LAUNCH_TIME=$(date +%s.%N) DDPBENCH_PIN={params.pin}"
        " OMP_NUM_THREADS={params.threads_per_worker} "
        + launcher
        + " -m ddpbench.train --data {params.data_dir} --out {output}"
        " --batch-size {wildcards.batch_size} --seed {wildcards.seed}"
        " --threads-per-worker {params.threads_per_worker} {params.options} > {log} 2>&1"
    )


def train_options():
    """Command-line options of `python -m ddpbench.train` from the train section."""
    t = config["train"]
    options = {
        "model": t["model"],
        "epochs": t["epochs"],
        "lr": t["lr"],
        "momentum": t["momentum"],
        "weight-decay": t["weight_decay"],
        "batch-size-mode": t["batch_size_mode"],
        "lr-scaling": t["lr_scaling"],
        "base-batch-size": t["base_batch_size"],
        "warmup-epochs": t["warmup_epochs"],
        "augment": t["augment"],
        "channels-last": t["channels_last"],
        "precision": t["precision"],
        "allreduce": t["allreduce"],
        "loader": config["data"]["loader"],
        "device": train_device(),
        "eval-batch-size": t["eval_batch_size"],
        "timeout": t["timeout"],
    }
    if t["max_train_samples"] is not None:
        options["max-train-samples"] = t["max_train_samples"]
    if t["target_accuracy"] is not None:
        options["target-accuracy"] = t["target_accuracy"]
    return " ".join(f"--{key} {value}" for key, value in options.items())
