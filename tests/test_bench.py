"""The benchmark harness (bench/run.py) measures every figure and ratio it promises, end to end
on a tiny synthetic dataset (its numbers mean nothing here; their presence and relations do)."""

import importlib.util
import json
import math
import sys

import pytest
from conftest import REPO, child_env, needs_cxx, run

from ddpbench.cpus import cores_available


@pytest.mark.slow
def test_bench_run_writes_every_figure_and_ratio(tmp_path, synthetic_cache):
    cores = cores_available()
    w = 2 if cores >= 2 else 1  # at most two ranks, whatever the machine's size
    t = max(1, cores // w)
    out = tmp_path / "bench.json"
    result = run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--data",
            str(synthetic_cache),
            "--reps",
            "1",
            "--epochs",
            "2",
            "--max-train-samples",
            "256",  # 4 steps an epoch: the emulated bf16 step of an AVX2 CPU is 10 times fp32's
            "--bound-steps",
            "3",
            "--bound-warmup",
            "1",
            "--batch-size",
            "64",
            "--max-world-size",
            str(w),
            "--bf16",
            "on",
            "--out",
            str(out),
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bench = json.loads(out.read_text())
    figures = {
        f"compute_bound_{cores}t_bf16",
        "engine_ws1_bf16",
        f"compute_bound_{cores}t",
        f"compute_bound_{cores}t_contiguous",
        "engine_ws1",
        "per_sample_dataloader_ws1",
        "study_pipeline_ws1",
    }
    if w > 1:
        figures |= {
            f"compute_bound_{t}t_x{w}_at_once",
            f"compute_bound_{t}t_x{w}_synchronised",
            f"engine_ws{w}",
            f"engine_ws{w}_shared_memory",
            f"allreduce_ws{w}",
            f"allreduce_shared_memory_ws{w}",
        }
    assert figures <= set(bench["figures"])

    def median(name):
        fig = bench["figures"][name]
        return fig.get("images_per_s", fig.get("median_s", fig))["median"]

    assert all(median(name) > 0 for name in figures)
    engine = bench["figures"]["engine_ws1"]
    assert engine["launch_to_first_step_s"]["median"] > 0 and engine["peak_rss_bytes_total"]["median"] > 0
    ratios = bench["ratios_of_medians"]
    assert all(math.isfinite(v) for v in ratios.values())
    assert ratios["ws1_vs_compute_bound"] == pytest.approx(median("engine_ws1") / median(f"compute_bound_{cores}t"))
    assert ratios["ws1_bf16_vs_ws1_fp32"] == pytest.approx(median("engine_ws1_bf16") / median("engine_ws1"))
    assert ratios["ws1_bf16_vs_bf16_compute_bound"] == pytest.approx(
        median("engine_ws1_bf16") / median(f"compute_bound_{cores}t_bf16")
    )
    assert ratios["ws1_vs_study_pipeline"] == pytest.approx(median("engine_ws1") / median("study_pipeline_ws1"))
    # Model FLOP utilisation against the matrix-product peak of the same threads, fp32 and bf16.
    flops = bench["settings"]["model_flops_per_image"]
    for suffix in ("", "_bf16"):
        bound = bench["figures"][f"compute_bound_{cores}t{suffix}"]
        gemm = bound["gemm_flops_s"]["median"]
        assert ratios[f"engine_ws1{suffix}_mfu"] == pytest.approx(median(f"engine_ws1{suffix}") * flops / gemm)
        assert 0 < ratios[f"compute_bound_{cores}t{suffix}_mfu"] < 1.5
    if w > 1:
        assert ratios[f"ws{w}_vs_{w}x_compute_bound_{t}t"] == pytest.approx(
            median(f"engine_ws{w}") / (w * median(f"compute_bound_{t}t"))
        )
        assert ratios[f"ws{w}_vs_compute_bound_{t}t_x{w}_synchronised"] == pytest.approx(
            median(f"engine_ws{w}") / median(f"compute_bound_{t}t_x{w}_synchronised")
        )
        # The default measures DDP's own all-reduce; ddpbench's shared-memory exchange is the comparison.
        assert ratios[f"ws{w}_shared_memory_vs_backend_allreduce"] == pytest.approx(
            median(f"engine_ws{w}_shared_memory") / median(f"engine_ws{w}")
        )
        assert f"rss_increase_ws1_to_ws{w}_over_dataset" in ratios
    assert "ratios of medians:" in result.stdout  # the printed table


@pytest.mark.slow  # torchrun launches and inductor's builds
@needs_cxx
def test_compile_precision_bench_pairs_every_setting_with_fp32_eager(tmp_path, synthetic_cache):
    """bench/compile_precision.py: per setting the engine, its compute bound, their ratio and MFU,
    and the ratio to fp32 eager of the same round (its own is 1 in every round)."""
    out = tmp_path / "compile.json"
    args = ["--data", str(synthetic_cache), "--reps", "1", "--epochs", "2", "--max-train-samples", "256"]
    args += ["--bound-steps", "3", "--bound-warmup", "1", "--batch-size", "64", "--precisions", "fp32"]
    env = child_env() | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = run([sys.executable, str(REPO / "bench" / "compile_precision.py"), *args, "--out", str(out)], env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bench = json.loads(out.read_text())
    assert set(bench["ratios"]) == {"fp32_none", "fp32_default"}
    eager, compiled = bench["figures"]["engine_fp32_none"], bench["figures"]["engine_fp32_default"]
    assert "compile_s" not in eager and compiled["compile_s"]["median"] > 0  # None for eager runs: left out
    assert bench["ratios"]["fp32_none"]["engine_vs_fp32_eager"]["median"] == 1.0
    ratio = bench["ratios"]["fp32_default"]["engine_vs_fp32_eager"]["median"]
    assert ratio == pytest.approx(compiled["images_per_s"]["median"] / eager["images_per_s"]["median"])
    bound = bench["figures"]["bound_fp32_default"]
    mfu = bench["ratios"]["fp32_default"]["bound_mfu"]["median"]
    flops = bench["settings"]["model_flops_per_image"]
    assert mfu == pytest.approx(bound["images_per_s"]["median"] * flops / bound["gemm_flops_s"]["median"])
    assert "fp32_default" in result.stdout and "vs fp32 eager" in result.stdout  # the printed table


def bench_script(name: str):
    """A bench/ script imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_accounting_sums_modules_and_processes_and_bounds_the_wall_time():
    """bench/suite_cpu.py on known records: the sums per module and per kind of process, the fixed
    cost of the imports, and the floor (alone tests' wall + the rest's CPU over the cores)."""
    suite = bench_script("suite_cpu")
    tests = [
        {"module": "tests/test_a.py", "wall_s": 100.0, "cpu_s": 110.0, "alone": True},
        {"module": "tests/test_b.py", "wall_s": 50.0, "cpu_s": 40.0, "alone": False},
        {"module": "tests/test_b.py", "wall_s": 30.0, "cpu_s": 20.0, "alone": False},
    ]
    agent = {"argv": ["/v/lib/python3.11/site-packages/torch/distributed/run.py", "--standalone"], "cpu_s": 3.0}
    rank = {"argv": ["/repo/src/ddpbench/train.py", "--data"], "cpu_s": 9.0, "torch": True, "dynamo": True}
    processes = [
        agent | {"torch": True, "dynamo": False},
        rank,
        rank,
        {
            "argv": ["/v/lib/python3.11/site-packages/snakemake/__main__.py"],
            "cpu_s": 2.0,
            "torch": False,
            "dynamo": False,
        },
        {"argv": ["/v/bin/snakemake", "--cores"], "cpu_s": 1.5, "torch": False, "dynamo": False},
        {"argv": ["/v/lib/python3.11/site-packages/pytest/__main__.py"], "cpu_s": 1.0, "torch": True, "dynamo": False},
    ]
    s = suite.summarise(tests, processes, cores=2, costs={"torch": 2.5, "torch_and_dynamo": 4.5})
    assert s["modules"]["tests/test_b.py"] == {"tests": 2, "wall_s": 80.0, "cpu_s": 60.0}
    assert list(s["modules"]) == ["tests/test_a.py", "tests/test_b.py"]  # the costliest first
    kinds = s["process_kinds"]
    assert list(kinds) == ["training rank (ddpbench.train)", "snakemake", "torchrun agent", "python -m pytest"]
    assert kinds["training rank (ddpbench.train)"] == {
        "processes": 2,
        "cpu_s": 18.0,
        "imported_torch": 2,
        "imported_dynamo": 2,
    }
    assert kinds["snakemake"]["processes"] == 2 and kinds["snakemake"]["cpu_s"] == 3.5
    assert s["processes_importing_torch"] == 4 and s["processes_importing_dynamo"] == 2
    assert s["import_fixed_cpu_s"] == 4 * 2.5 + 2 * 2.0
    assert s["tests_cpu_s"] == 170.0 and s["processes_cpu_s"] == 25.5
    assert s["floor_s"] == 100.0 + (170.0 - 110.0) / 2  # the alone test has the machine; the rest share 2 cores


@pytest.mark.parametrize(
    "argv, kind",
    [
        (["/v/bin/torchrun", "--standalone"], "torchrun agent"),
        (["/repo/src/ddpbench/commbench.py", "--world-sizes"], "commbench rank (ddpbench.commbench)"),
        (["-c"], "python -c (pytest-xdist workers, snippets)"),
        (["/repo/bench/compute_bound.py", "--threads"], "compute_bound.py"),
        (["/repo/bench/run.py"], "run.py"),  # bench/run.py, not torch's distributed run.py
        ([], "(none)"),
    ],
)
def test_suite_accounting_names_each_kind_of_process(argv, kind):
    assert bench_script("suite_cpu").process_kind(argv) == kind


def test_suite_accounting_skips_a_torn_record_and_counts_it(tmp_path):
    """A process killed while writing its line loses that line, not the run's records."""
    records = tmp_path / "processes.jsonl"
    records.write_text('{"cpu_s": 1.0}\n{"cpu_s": 2\n{"cpu_s": 3.0}\n')
    suite = bench_script("suite_cpu")
    assert suite.read_records(records) == ([{"cpu_s": 1.0}, {"cpu_s": 3.0}], 1)
    assert suite.read_records(tmp_path / "none.jsonl") == ([], 0)


@pytest.mark.slow  # a pytest inside the test, and two pythons that import torch
def test_suite_accounting_records_every_test_and_the_processes_they_start(tmp_path):
    """The accounting end to end on one module: a record per test, and one per Python process its
    tests started (test_options starts a Python that must not import torch)."""
    out = tmp_path / "suite.json"
    pytest_args = ["-n", "0", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner"), "tests/test_options.py"]
    env = {k: v for k, v in child_env().items() if not k.startswith("PYTEST_")}  # not a worker of this run
    result = run(
        [
            sys.executable,
            str(REPO / "bench" / "suite_cpu.py"),
            "--import-reps",
            "1",
            "--out",
            str(out),
            "--",
            *pytest_args,
        ],
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bench = json.loads(out.read_text())
    assert bench["pytest"]["exit_code"] == 0 and " passed" in bench["pytest"]["last_line"]
    tests = bench["tests"]
    assert {t["module"] for t in tests} == {"tests/test_options.py"} and len(tests) >= 5
    assert all(t["wall_s"] > 0 and t["cpu_s"] >= 0 and t["alone"] is False for t in tests)
    by_test = {p["test"].split("::")[-1]: p for p in bench["processes"] if p["test"]}
    plain = by_test["test_the_options_module_does_not_import_torch"]  # python -c "import ddpbench.options"
    assert plain["argv"][0] == "-c" and plain["torch"] is False and plain["cpu_s"] > 0
    entry = by_test["test_help_lists_every_option_with_its_default"]  # python -m ddpbench.train --help
    assert entry["argv"][1] == "--help" and entry["torch"] is True
    summary = bench["summary"]
    assert summary["process_kinds"]["training rank (ddpbench.train)"]["imported_torch"] >= 1
    assert bench["import_cpu_s"]["torch"] > 0 and bench["import_cpu_s"]["torch_and_dynamo"] > 0
    assert bench["unreadable_records"] == {"tests": 0, "processes": 0}
    # One test at a time: the run cannot beat its own work packed perfectly on the cores.
    assert 0 < summary["floor_s"] <= bench["pytest"]["wall_s"] and "floor (" in result.stdout
    cpu_of_test = {t["test"].split("::")[-1]: t["cpu_s"] for t in tests}
    assert plain["cpu_s"] <= cpu_of_test["test_the_options_module_does_not_import_torch"]  # reaped: counted
