"""ddpbench.plan as workflow/rules/common.smk uses it: the repository's config.yaml with .test's grid
on top, overrides as --config or a config file gives them, checked and filled in by the real schema
(Snakemake's own validate). No Snakemake run, no training."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake.utils import validate

from ddpbench import configdoc, netem, plan

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = configdoc.load_schema(SCHEMA_PATH)


def merged(base: dict, over: dict) -> dict:
    """As Snakemake merges config files and --config: nested sections key by key."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


BASE = {}
for config_file in ("config.yaml", ".test/config.yaml"):  # as `snakemake --configfile .test/config.yaml`
    BASE = merged(BASE, yaml.safe_load((REPO / config_file).read_text()))
VARIANTS = {"a": {}, "b": {"train": {"bucket_cap_mb": 1}, "data": {"loader": "dataloader"}}}


def configured(**sections) -> tuple[dict, dict | None]:
    """The config as common.smk leaves it: each given section merged over BASE's (as Snakemake merges
    --config), strings coerced, checked, the variants taken as written, the defaults filled in."""
    config = merged(copy.deepcopy(BASE), copy.deepcopy(sections))
    config.update(plan.coerce_cli_strings(config, SCHEMA))
    plan.check_config(config, SCHEMA)
    variants = plan.check_variants(config, SCHEMA)
    validate(config, schema=str(SCHEMA_PATH))
    return config, variants


def planned(*, capacity=2, cores=2, main=True, local=True, bench_slot=1, **sections):
    """Grid, Jobs and CommBench on a machine of ``capacity`` cores (or GPUs)."""
    config, variants = configured(**sections)
    grid = plan.Grid(config, variants, is_main_process=main, local_exec=local, capacity=lambda device: capacity)
    jobs = plan.Jobs(grid, cores=lambda: cores, bench_slot_cap=bench_slot)
    return grid, jobs, plan.CommBench(jobs)


def run(world_size, variant=None):
    return SimpleNamespace(world_size=str(world_size), batch_size="128", seed="0", variant=variant)


# ---------------------------------------------------------------- the configuration


def test_command_line_strings_take_the_schema_types():
    given = {
        "grid": {"world_sizes": ["1", "2"], "allow_oversubscribe": "true", "baseline": "null"},
        "train": {"lr": "0.5", "epochs": "3", "threads_per_worker": "auto", "ranks_per_node": "2"},
        "data": {"archive": "*x.tar.gz", "md5": "12", "timeout": "null"},
    }
    coerced = plan.coerce_cli_strings(given, SCHEMA)
    assert coerced["grid"] == {"world_sizes": [1, 2], "allow_oversubscribe": True, "baseline": None}
    assert coerced["train"] == {"lr": 0.5, "epochs": 3, "threads_per_worker": "auto", "ranks_per_node": 2}
    # Not valid YAML, a string where the schema wants one, or null where it is not allowed: as written.
    assert coerced["data"] == {"archive": "*x.tar.gz", "md5": "12", "timeout": "null"}
    assert plan.coerce_cli_strings({"train": {"epochs": "1.5"}}, SCHEMA) == {"train": {"epochs": "1.5"}}


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"train": {"epochs": "abc"}},
            "config train.epochs: 'abc' is not of type 'integer'. Allowed: Training epochs.",
        ),
        ({"train": {"epoch": 3}}, "config train: Additional properties are not allowed ('epoch' was unexpected)"),
        ({"data": {"source": "foo"}}, "config data.source: 'foo' is not one of ['cifar10', 'synthetic']."),
        ({"grid": {"world_sizes": [0, 1]}}, "config grid.world_sizes: 0 is less than the minimum of 1. Allowed: Ranks"),
        ({"nope": {"x": 1}}, "config (top level): Additional properties are not allowed ('nope' was unexpected)"),
        ({"grid": {"variants": {"a/b": {}}}}, "config grid.variants: 'a/b' does not match"),
        ({"grid": {"variants": {"x": {"train": {"nope": 1}}}}}, "config grid.variants.x.train: Additional prop"),
        ({"grid": {"variants": {"x": {"train": {"lr": "fast"}}}}}, "config grid.variants.x.train.lr: 'fast' is not"),
        ({"grid": {"variants": {"x": {"data": {"source": "synthetic"}}}}}, "config grid.variants.x.data: Addition"),
        ({"grid": {"variants": {"a": {}}, "baseline": "zz"}}, "config grid.baseline: 'zz' is not a variant; choose"),
        ({"grid": {"baseline": "zz"}}, "config grid.baseline: 'zz' is not a variant; choose one of [] or null"),
    ],
)
def test_a_bad_config_names_its_key(sections, message):
    with pytest.raises(ValueError) as error:
        configured(**sections)
    assert str(error.value).startswith(message)


def test_variants_are_coerced_in_the_config_and_kept_as_written():
    config, variants = configured(grid={"variants": {"a": None, "b": {"train": {"bucket_cap_mb": "1"}}}})
    assert variants == {"a": {}, "b": {"train": {"bucket_cap_mb": 1}}}  # no defaults filled in
    assert config["grid"]["variants"]["b"] == {"train": {"bucket_cap_mb": 1}}  # results/config.json's
    assert configured()[1] is None


@pytest.mark.parametrize("option, value", [("ranks_per_node", 2), ("device", "cpu")])
def test_a_variant_may_not_move_runs(option, value):
    grid, _, _ = planned(grid={"variants": {"x": {"train": {option: value}}}})
    with pytest.raises(ValueError, match=rf"^config grid.variants.x.train.{option}: it decides how runs are placed"):
        grid.check()


def test_a_missing_archive_is_named_by_the_process_that_builds_the_dag(tmp_path):
    archive = str(tmp_path / "cifar-10-python.tar.gz")
    grid, _, _ = planned(data={"source": "cifar10", "archive": archive})
    with pytest.raises(ValueError, match=r"^config data.archive: no file at '.*cifar-10-python.tar.gz'\. Point"):
        grid.check()
    planned(data={"source": "cifar10", "archive": archive}, main=False)[0].check()  # a job: not its business
    planned(data={"source": "synthetic", "archive": archive})[0].check()
    (tmp_path / "cifar-10-python.tar.gz").touch()
    grid.check()


# ---------------------------------------------------------------- world sizes


@pytest.mark.parametrize("capacity, sizes", [(1, [1]), (0, [1]), (6, [1, 2, 4]), (8, [1, 2, 4, 8])])
def test_auto_world_sizes_are_powers_of_two_up_to_the_machine(capacity, sizes):
    assert planned(capacity=capacity, grid={"world_sizes": "auto"})[0].world_sizes() == sizes


def test_capacity_is_asked_for_the_planned_device():
    config, variants = configured(grid={"world_sizes": "auto"}, train={"device": "cuda"})
    asked = []
    grid = plan.Grid(config, variants, is_main_process=True, local_exec=True, capacity=lambda d: asked.append(d) or 2)
    assert grid.world_sizes() == [1, 2] and set(asked) == {"cuda"}


def test_world_sizes_are_sorted_and_must_include_one():
    assert planned(grid={"world_sizes": [2, 1]})[0].world_sizes() == [1, 2]
    with pytest.raises(ValueError, match="^grid.world_sizes must include 1: speedup and efficiency"):
        planned(grid={"world_sizes": [2]})[0].world_sizes()


@pytest.mark.parametrize("device, unit", [("cpu", "cores"), ("cuda", "GPUs")])
def test_world_sizes_too_big_for_this_machine_fail_unless_oversubscribed(device, unit):
    sizes = {"world_sizes": [1, 2, 4, 8]}
    grid = planned(grid=sizes, train={"device": device})[0]
    with pytest.raises(ValueError) as error:
        grid.check()
    assert str(error.value) == (
        f"grid.world_sizes [4, 8] exceed the 2 {unit} available here; use world sizes up to 2, "
        "or set grid.allow_oversubscribe: true to run them anyway"
    )
    assert planned(grid={**sizes, "allow_oversubscribe": True})[0].world_sizes() == [1, 2, 4, 8]
    # Jobs re-reading the workflow, and cluster runs: this machine is not the limit.
    assert planned(grid=sizes, main=False)[0].world_sizes() == [1, 2, 4, 8]
    assert planned(grid=sizes, local=False)[0].world_sizes() == [1, 2, 4, 8]


def test_world_sizes_split_over_nodes_of_ranks_per_node():
    grid = planned(grid={"world_sizes": [1, 2, 4, 8]}, train={"ranks_per_node": 2})[0]
    assert grid.world_sizes() == [1, 2, 4, 8]  # over several nodes, not bounded by this machine
    assert [grid.nodes(w) for w in grid.world_sizes()] == [1, 1, 2, 4]
    assert grid.world_size_pattern(multinode=False) == "1|2" and grid.world_size_pattern(multinode=True) == "4|8"
    one_node = planned(grid={"world_sizes": [1, 2]})[0]
    assert one_node.world_size_pattern(multinode=False) == r"\d+" and one_node.world_size_pattern(True) == "(?!)"
    with pytest.raises(ValueError, match=r"^world size 3 does not split into nodes of train.ranks_per_node = 2"):
        planned(grid={"world_sizes": [1, 3]}, train={"ranks_per_node": 2})[0].world_sizes()
    with pytest.raises(ValueError, match="^grid.world_sizes: auto counts this machine's cores, but train.ranks_per"):
        planned(grid={"world_sizes": "auto"}, train={"ranks_per_node": 2})[0].world_sizes()


# ---------------------------------------------------------------- runs and their options


def test_run_names_without_variants():
    grid = planned(grid={"world_sizes": [1, 2], "batch_sizes": [64, 32], "seeds": [0, 1]})[0]
    assert grid.run_pattern == "ws{world_size}_bs{batch_size}_seed{seed}"
    assert grid.run_names()[:5] == [
        "ws1_bs64_seed0",
        "ws1_bs64_seed1",
        "ws1_bs32_seed0",
        "ws1_bs32_seed1",
        "ws2_bs64_seed0",
    ]
    assert len(grid.run_names()) == 8 and grid.run_files()[0] == "results/runs/ws1_bs64_seed0.json"
    assert grid.dataset_files()[-1] == "resources/synthetic/meta.json"


def test_run_names_with_variants_gain_the_variant_folder(tmp_path, monkeypatch):
    grid = planned(grid={"variants": VARIANTS, "seeds": [0]})[0]
    assert grid.run_pattern == "{variant}/ws{world_size}_bs{batch_size}_seed{seed}"
    assert grid.run_names() == ["a/ws1_bs128_seed0", "a/ws2_bs128_seed0", "b/ws1_bs128_seed0", "b/ws2_bs128_seed0"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "runs" / "b").mkdir(parents=True)
    (tmp_path / "results" / "runs" / "b" / "ws2_bs128_seed0.json").write_text("{}")
    assert grid.existing_run_files(run(1)) == ["results/runs/b/ws2_bs128_seed0.json"]


def test_a_variant_overrides_the_train_options_and_the_loader():
    grid, jobs, _ = planned(grid={"variants": VARIANTS})
    a, b = grid.variant_options(run(1, "a")), grid.variant_options(run(1, "b"))
    assert a == {**grid.config["train"], "loader": "resident"}
    assert {k: v for k, v in b.items() if a[k] != v} == {"bucket_cap_mb": 1, "loader": "dataloader"}
    assert grid.variant_options(SimpleNamespace(world_size="1")) == a  # a rule without a variant
    options = jobs.run_options(run(1, "b"))
    assert "--bucket-cap-mb 1 " in options and options.endswith(" --loader dataloader")
    assert "--threads-per-worker auto" in options and "--emulate-network null" in options


# ---------------------------------------------------------------- resources


def test_train_threads_omp_threads_and_memory():
    _, jobs, _ = planned(cores=6)
    assert jobs.train_threads(run(2)) == 6  # auto, locally: every core Snakemake may use
    assert jobs.omp_threads(run(2), 6) == 3 and jobs.omp_threads(run(4), 2) == 1
    assert jobs.train_mem_mb(run(2)) == 3512
    assert planned(local=False)[1].train_threads(run(2)) == 2  # auto on a cluster: one per rank
    fixed = planned(grid={"allow_oversubscribe": True}, train={"threads_per_worker": 3})[1]
    assert fixed.train_threads(run(2)) == 6
    over_nodes = planned(grid={"world_sizes": [1, 4]}, train={"ranks_per_node": 2, "threads_per_worker": 3})[1]
    assert over_nodes.train_threads(run(4)) == 6 and over_nodes.train_mem_mb(run(4)) == 3512  # per node
    assert over_nodes.train_nodes(run(4)) == 2


def test_gpus_are_asked_for_only_on_cuda():
    _, cpu, _ = planned()
    assert cpu.train_gpus(run(2)) == 0 and cpu.train_gres(run(2)) == ""
    _, cuda, _ = planned(grid={"world_sizes": [1, 4]}, train={"device": "cuda", "ranks_per_node": 2})
    assert cuda.train_gpus(run(4)) == 2 and cuda.train_gres(run(4)) == "gpu:2"
    assert planned(train={"device": "auto"})[1].train_gpus(run(2)) == 0  # auto: the job decides


def test_ranks_are_pinned_only_while_timed_runs_go_one_at_a_time():
    _, jobs, _ = planned(bench_slot=1)
    assert jobs.pin_cores(run(2), {"bench_slot": 1}) == 1
    assert jobs.pin_cores(run(2), {}) == "auto"
    assert planned(bench_slot=None)[1].pin_cores(run(2), {"bench_slot": 1}) == "auto"  # profiles/slurm
    assert planned(bench_slot=2)[1].pin_cores(run(2), {"bench_slot": 1}) == "auto"


# ---------------------------------------------------------------- launch commands

PREFIX = 'python -m ddpbench.launch --watch-pid "$DDPBENCH_SNAKEMAKE_PID"'


def test_one_node_launch():
    _, jobs, _ = planned()
    timed = {"bench_slot": 1}
    assert (
        jobs.train_launcher(run(2), 2, timed) == f"{PREFIX} --timing-lock -- torchrun --standalone --nproc-per-node 2"
    )
    assert jobs.train_launcher(run(2), 2, {}) == f"{PREFIX} -- torchrun --standalone --nproc-per-node 2"
    assert jobs.launch_prefix(run(2), timed) == f"{PREFIX} --timing-lock"
    assert jobs.rendezvous(run(2)) == ""


def test_an_emulated_network_launches_one_agent_per_rank():
    variants = {"plain": {}, "slow": {"train": {"emulate_network": {"bandwidth_gbit": "0.5"}}}}
    _, jobs, _ = planned(
        grid={"variants": variants}, train={"emulate_network": {"bandwidth_gbit": 1, "latency_us": 50}}
    )
    assert jobs.train_launcher(run(2, "plain"), 2, {"bench_slot": 1}) == (
        f"{PREFIX} --timing-lock -- python -m ddpbench.netem launch --nodes 2 --bandwidth-gbit 1 --latency-us 50 --"
    )
    assert jobs.train_launcher(run(2, "slow"), 2, {}).endswith("--nodes 2 --bandwidth-gbit 0.5 --latency-us 0 --")


def test_an_emulated_network_this_machine_cannot_make_fails_before_any_job(monkeypatch):
    def refuse(bandwidth_gbit, latency_us=0.0):
        raise netem.EmulationError(f"cannot shape {bandwidth_gbit} Gbit/s, {latency_us} us here")

    monkeypatch.setattr(netem, "require_emulation", refuse)
    variants = {"plain": {}, "slow": {"train": {"emulate_network": {"bandwidth_gbit": 0.5}}}}
    with pytest.raises(ValueError) as error:
        planned(grid={"variants": variants})[0].check()
    assert str(error.value) == "config grid.variants.slow.train.emulate_network: cannot shape 0.5 Gbit/s, 0 us here"
    with pytest.raises(ValueError, match=r"^config train.emulate_network: cannot shape 1 Gbit/s, 50 us here$"):
        planned(train={"emulate_network": {"bandwidth_gbit": 1, "latency_us": 50}})[0].check()
    planned(grid={"variants": variants}, main=False)[0].check()  # a job's Snakemake does not ask


def test_a_multinode_run_goes_through_srun_and_c10d():
    _, jobs, _ = planned(grid={"world_sizes": [1, 2, 8]}, train={"ranks_per_node": 2})
    assert jobs.train_launcher(run(8), 4, {"bench_slot": 1}) == (
        f"{PREFIX} -- srun --nodes=4 --ntasks-per-node=1 --cpus-per-task=4 --kill-on-bad-exit=1"
        " torchrun --nnodes 4 --nproc-per-node 2"
        ' --rdzv-backend c10d --rdzv-endpoint "$head:$port" --rdzv-id "$SLURM_JOB_ID"'
    )  # never on the timing lock: each node is its own allocation
    assert jobs.rendezvous(run(8)) == plan.RENDEZVOUS and "$head" not in plan.RENDEZVOUS
    assert plan.RENDEZVOUS.startswith("head=$(scontrol show hostnames") and "port=$((29400 + " in plan.RENDEZVOUS
    assert jobs.rendezvous(run(2)) == ""


# ---------------------------------------------------------------- commbench


@pytest.mark.parametrize(
    "sections, sizes",
    [
        ({"grid": {"world_sizes": [1, 2, 4], "allow_oversubscribe": True}}, [2, 4]),
        ({"grid": {"world_sizes": [1]}}, []),
        ({"grid": {"world_sizes": [1, 2, 4, 8]}, "train": {"ranks_per_node": 4}}, [2, 4]),  # on one node only
    ],
)
def test_commbench_times_the_one_node_world_sizes_of_two_or_more(sections, sizes):
    comm = planned(**sections)[2]
    assert comm.world_sizes() == sizes and comm.launch_size == max(sizes, default=0)
    assert comm.files() == [f"results/comm/ws{w}.json" for w in sizes] and comm.dir == "comm/"


def test_commbench_of_variants_is_the_baselines():
    comm = planned(grid={"variants": VARIANTS, "baseline": "b"})[2]
    assert comm.dir == "comm/{variant}/" and comm.files() == ["results/comm/b/ws2.json"]
    assert planned(grid={"variants": VARIANTS})[2].files() == ["results/comm/a/ws2.json"]  # else the first


def test_commbench_job_is_sized_as_its_launch_size_runs():
    _, jobs, comm = planned(grid={"world_sizes": [1, 2, 4], "allow_oversubscribe": True}, cores=8)
    assert comm.threads(run(1)) == 8 and comm.omp_threads(run(1), 8) == 2
    assert comm.mem_mb(run(1)) == jobs.train_mem_mb(run(4)) == 6512 and comm.gpus(run(1)) == 0
    assert comm.launcher(run(1)) == "torchrun --standalone --nproc-per-node 4"
    assert comm.options(run(1), 8) == (
        "--model simple_cnn --bucket-cap-mb 25.0 --device cpu --timeout 60 --step-batch 128 --threads-per-rank 2"
    )


def test_commbench_options_follow_the_variant_and_a_global_batch():
    sections = {"grid": {"variants": VARIANTS, "batch_sizes": [256, 64]}, "train": {"batch_size_mode": "global"}}
    comm = planned(**sections)[2]
    assert comm.options(run(1, "b"), 2) == (
        "--model simple_cnn --bucket-cap-mb 1 --device cpu --timeout 60 --step-batch 128 --threads-per-rank 1"
    )  # the first batch size split over the launch size's 2 ranks
    emulated = planned(train={"emulate_network": {"bandwidth_gbit": 10}})[2]
    assert (
        emulated.launcher(run(1)) == "python -m ddpbench.netem launch --nodes 2 --bandwidth-gbit 10 --latency-us 0 --"
    )
