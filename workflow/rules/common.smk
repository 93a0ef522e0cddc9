import os
import re
import shlex
import sys

from snakemake.utils import validate

# The rules call this checkout's package (the plan, run options, atomic writes); it never calls them.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from ddpbench import configdoc, order, peak, plan, runs

CONFIG_SCHEMA = "../schemas/config.schema.yaml"

# --config strings coerced to the schema's types, every key checked (naming it), the variants taken
# as written; then Snakemake's validation fills in the defaults.
_schema = configdoc.load_schema(workflow.source_path(CONFIG_SCHEMA))
config.update(plan.coerce_cli_strings(config, _schema))
plan.check_config(config, _schema)
VARIANTS = plan.check_variants(config, _schema)
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


# The plan (ddpbench.plan): the rules take its methods as input functions, under these names.
GRID = plan.Grid(config, VARIANTS, is_main_process=workflow.is_main_process, local_exec=workflow.local_exec)
GRID.check()  # before any job
_bench_slot = workflow.global_resources.get("bench_slot")
JOBS = plan.Jobs(GRID, cores=lambda: workflow.cores, bench_slot_cap=getattr(_bench_slot, "value", _bench_slot))
COMMBENCH = plan.CommBench(JOBS)

RUN = GRID.run_pattern
# Timed runs in rounds by seed, shuffled within a round (ddpbench.order): Snakemake starts them so.
RUN_ORDER = order.timed_order(GRID.run_names(), config["grid"]["order_seed"])
run_priority = order.priority_function(RUN_ORDER, RUN)
run_names = GRID.run_names
run_files = GRID.run_files
existing_run_files = GRID.existing_run_files
world_size_pattern = GRID.world_size_pattern
DATASET_FILES = plan.DATASET_FILES
dataset_files = GRID.dataset_files

run_options = JOBS.run_options
train_threads = JOBS.train_threads
omp_threads = JOBS.omp_threads
train_mem_mb = JOBS.train_mem_mb
train_nodes = JOBS.train_nodes
train_gpus = JOBS.train_gpus
train_gres = JOBS.train_gres
pin_cores = JOBS.pin_cores
launch_prefix = JOBS.launch_prefix
train_launcher = JOBS.train_launcher
rendezvous = JOBS.rendezvous

peak_threads = JOBS.peak_threads
PEAK_MODELS = peak.trained_models(config, VARIANTS)

COMM = COMMBENCH.dir
COMM_WORLD_SIZES = COMMBENCH.world_sizes()
COMM_FILES = COMMBENCH.files()
comm_threads = COMMBENCH.threads
comm_omp_threads = COMMBENCH.omp_threads
comm_mem_mb = COMMBENCH.mem_mb
comm_gpus = COMMBENCH.gpus
comm_launcher = COMMBENCH.launcher
comm_options = COMMBENCH.options


def final_targets():
    return ["results/summary.csv", "results/summary.json", "results/report.html", "results/bundle.tar.gz"]


def compare_reference(wildcards):
    reference = config["compare"]["reference"]
    return "" if reference is None else f"--reference {shlex.quote(reference)}"


def output_dir(wildcards, output):
    return os.path.dirname(output[0])


def input_dir(wildcards, input):
    return os.path.dirname(input[0])


def cifar10_archive(wildcards):
    return config["data"]["archive"] or "resources/cifar-10-python.tar.gz"
