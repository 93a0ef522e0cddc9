"""What the summary refuses before it computes anything (ddpbench.runs): bad run files, runs whose
contents disagree with their name, the grid or the config (with a variant's overrides), and bad
all-reduce timings. The studies and configs defined here are shared with tests/test_summary.py."""

import json

import pytest
from conftest import RUN_SCHEMA
from runfactory import make_comm, make_run, write_comm, write_grid

from ddpbench.runs import RunsError, load_config
from ddpbench.summary import build_summary

# --------------------------------------------------------------------------- the studies


# The options runfactory's runs were trained with, as the workflow's results/config.json holds
# them: "auto" where the job resolves the value itself.
GRID_CONFIG = {
    "data": {"source": "synthetic", "loader": "resident"},
    "grid": {"world_sizes": [1, 2], "batch_sizes": [128], "seeds": [0, 1]},
    "train": {
        "model": "simple_cnn",
        "epochs": 3,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1.0e-4,
        "batch_size_mode": "per_worker",
        "lr_scaling": "none",
        "base_batch_size": 128,
        "warmup_epochs": 0,
        "augment": "none",
        "channels_last": "auto",
        "precision": "fp32",
        "allreduce": "auto",
        "device": "auto",
        "threads_per_worker": "auto",
        "ranks_per_node": "auto",
        "max_train_samples": None,
        "target_accuracy": 50,
        "eval_batch_size": 500,
        "timeout": 120,
    },
}


def write_run(folder, name, run) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(run))
    return path


# A study of three variants, as results/config.json holds it (fp32: null is an empty override),
# and the factory's runs for it: fp16hook 1.25x and bf16 1.9x the throughput, bf16 half a point less.
VARIANT_CONFIG = {
    **GRID_CONFIG,
    "grid": {
        **GRID_CONFIG["grid"],
        "variants": {
            "fp32": None,
            "fp16hook": {"train": {"comm_hook": "fp16"}},
            "bf16": {"train": {"precision": "bf16"}},
        },
        "baseline": None,
    },
}


FACTORY_VARIANTS = {
    "fp32": {},
    "fp16hook": {"throughput_factor": 1.25, "config_overrides": {"comm_hook": "fp16"}},
    "bf16": {"throughput_factor": 1.9, "acc_offset": -0.5, "config_overrides": {"precision": "bf16"}},
}


def variant_study(tmp_path, config=VARIANT_CONFIG, variants=FACTORY_VARIANTS, **kwargs):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1], variants=variants, **kwargs)
    result, table = build_summary(paths, RUN_SCHEMA, expected, config, "results/config.json")
    return result, table, paths


PREDICT_CONFIG = {
    **GRID_CONFIG,
    "predict": {"max_world_size": 64, "networks": {"1GbE": {"bandwidth_gbit": 1, "latency_us": 50}}},
}


def predicted_study(tmp_path, comm_world_sizes=(2,), config=PREDICT_CONFIG):
    """Two seeds at W = 1 and 2 with chosen times (one epoch: 16 and 8 steps of batch 128) and the
    all-reduce timings of a ring with alpha = 50 us, B = 1e9 B/s."""
    times = {1: 1.6, 2: 1.0}
    paths = [
        write_run(tmp_path, f"ws{ws}_bs128_seed{seed}", make_run(ws, 128, seed, epochs=1, train_time=times[ws]))
        for ws in (1, 2)
        for seed in (0, 1)
    ]
    comm = write_comm(tmp_path / "comm", comm_world_sizes)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**config, "train": {**config["train"], "epochs": 1}}))
    return paths, comm, config_file


# --------------------------------------------------------------------------- refused runs


def test_invalid_run_is_refused_with_its_path(tmp_path):
    paths, _ = write_grid(tmp_path, [1], [128], [0])
    broken = make_run(1, 128, 1)
    del broken["totals"]["train_time_s"]
    bad = write_run(tmp_path, "ws1_bs128_seed1", broken)
    with pytest.raises(RunsError, match="ws1_bs128_seed1.json .*train_time_s"):
        build_summary([*paths, bad], RUN_SCHEMA)
    bad.write_text("{ truncated")
    with pytest.raises(RunsError, match="cannot read run"):
        build_summary([bad], RUN_SCHEMA)


@pytest.mark.parametrize(
    "inside, key, shown",
    [
        ((4, 64, 1), "world_size", "config.world_size is 4 but the file name says world_size 2"),
        ((2, 64, 5), "seed", "config.seed is 5 but the file name says seed 1"),
        ((2, 128, 1), "batch_size", "config.batch_size is 128 but the file name says batch_size 64"),
    ],
)
def test_run_whose_contents_disagree_with_its_name_is_refused(tmp_path, inside, key, shown):
    paths, _ = write_grid(tmp_path, [1, 2], [64], [0, 1])
    tampered = write_run(tmp_path, "ws2_bs64_seed1", make_run(*inside))
    with pytest.raises(RunsError) as err:
        build_summary(paths, RUN_SCHEMA)
    message = str(err.value)
    assert str(tampered) in message and shown in message and "delete the file and rerun its job" in message


def test_run_file_without_a_run_name_is_refused(tmp_path):
    path = write_run(tmp_path, "best_run", make_run(1, 128, 0))
    with pytest.raises(RunsError, match=r"best_run.json: the file name does not say .* ws<W>_bs<B>_seed<S>"):
        build_summary([path], RUN_SCHEMA)


def test_runs_agreeing_with_the_workflow_config_pass(tmp_path):
    """Options the job resolves (auto threads, device, format, all-reduce) may differ from the config."""
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    result, _ = build_summary(paths, RUN_SCHEMA, expected, GRID_CONFIG)
    assert [r["n_seeds"] for r in result["rows"]] == [2, 2]


@pytest.mark.parametrize(
    "section, key, value, shown",
    [
        ("train", "epochs", 5, "config.epochs is 3 but results/config.json has train.epochs: 5"),
        ("train", "lr", 0.1, "config.lr is 0.01 but results/config.json has train.lr: 0.1"),
        (
            "train",
            "target_accuracy",
            None,
            "config.target_accuracy is 50.0 but results/config.json has train.target_accuracy: None",
        ),
        (
            "data",
            "loader",
            "dataloader",
            "config.loader is 'resident' but results/config.json has data.loader: 'dataloader'",
        ),
        (
            "data",
            "source",
            "cifar10",
            "dataset.source is 'synthetic' but results/config.json has data.source: 'cifar10'",
        ),
    ],
)
def test_run_trained_with_other_options_is_refused(tmp_path, section, key, value, shown):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    config = {**GRID_CONFIG, section: {**GRID_CONFIG[section], key: value}}
    with pytest.raises(RunsError) as err:
        build_summary(paths, RUN_SCHEMA, expected, config, "results/config.json")
    message = str(err.value)
    assert "ws1_bs128_seed0.json" in message and shown in message and "delete the file and rerun its job" in message


def test_run_outside_the_grid_is_refused(tmp_path):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1])
    with pytest.raises(RunsError, match=r"ws2_bs128_seed1.json \(ws2_bs128_seed1\) is not part of the grid"):
        build_summary(paths, RUN_SCHEMA, [name for name in expected if name != "ws2_bs128_seed1"])


# --------------------------------------------------------------------------- variants


def test_run_that_disagrees_with_its_variants_overrides_is_refused(tmp_path):
    variants = {**FACTORY_VARIANTS, "fp16hook": {"config_overrides": {"comm_hook": "none"}}}
    with pytest.raises(RunsError) as err:
        variant_study(tmp_path, variants=variants)
    message = str(err.value)
    assert str(tmp_path / "fp16hook/ws1_bs128_seed0.json") in message
    assert "config.comm_hook is 'none' but results/config.json has grid.variants.fp16hook.train.comm_hook: 'fp16'" in (
        message
    )
    assert "delete the file and rerun its job" in message


def test_run_outside_a_variant_folder_is_refused(tmp_path):
    paths, expected = write_grid(tmp_path, [1, 2], [128], [0, 1], variants=FACTORY_VARIANTS)
    stray = tmp_path / "old" / "ws1_bs128_seed0.json"
    stray.parent.mkdir()
    stray.write_text(paths[0].read_text())
    with pytest.raises(RunsError, match=r"old/ws1_bs128_seed0.json: its folder 'old' is not one of"):
        build_summary([*paths, stray], RUN_SCHEMA, expected, VARIANT_CONFIG)


def test_a_set_thread_count_is_checked_against_the_run(tmp_path):
    config = {
        **VARIANT_CONFIG,
        "grid": {**VARIANT_CONFIG["grid"], "variants": {"fp32": None, "t1": {"train": {"threads_per_worker": 1}}}},
    }
    variants = {"fp32": {}, "t1": {"threads": 2}}
    with pytest.raises(
        RunsError, match=r"config.threads_per_worker is 2 but .* grid.variants.t1.train.threads_per_worker: 1"
    ):
        variant_study(tmp_path, config, variants)


# --------------------------------------------------------------------------- options recorded with defaults


def test_an_emulated_link_is_compared_with_its_defaults_filled_in(tmp_path):
    """The config may leave latency_us out; the run records the link with it (0)."""
    config = {**GRID_CONFIG, "train": {**GRID_CONFIG["train"], "emulate_network": {"bandwidth_gbit": 1}}}
    link = {"bandwidth_gbit": 1.0, "latency_us": 0.0}
    paths, expected = write_grid(tmp_path / "ok", [1, 2], [128], [0, 1], config_overrides={"emulate_network": link})
    build_summary(paths, RUN_SCHEMA, expected, config)
    other = {"bandwidth_gbit": 1.0, "latency_us": 50.0}
    paths, expected = write_grid(tmp_path / "bad", [1, 2], [128], [0, 1], config_overrides={"emulate_network": other})
    with pytest.raises(RunsError, match=r"config.emulate_network is .*latency_us': 50.0.* train.emulate_network"):
        build_summary(paths, RUN_SCHEMA, expected, config)


# --------------------------------------------------------------------------- the all-reduce timings


def test_bad_comm_file_and_bad_network_are_refused_with_the_fix(tmp_path):
    paths, comm, config = predicted_study(tmp_path)
    comm[0].write_text(json.dumps({"world_size": 2}))
    with pytest.raises(RunsError, match=r"is not a ddpbench.commbench output .* rerun its job"):
        build_summary(paths, RUN_SCHEMA, comm=comm)
    reserved = {
        **load_config(config),
        "predict": {"networks": {"measured": {"bandwidth_gbit": 1, "latency_us": 0}}},
    }
    comm[0].write_text(json.dumps(make_comm(2)))
    with pytest.raises(RunsError, match=r"config predict.networks: .* reserved .* rename it"):
        build_summary(paths, RUN_SCHEMA, config=reserved, comm=comm)
