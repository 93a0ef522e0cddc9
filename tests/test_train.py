"""The training engine through torchrun: real gloo process groups on this machine."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import RUN_SCHEMA, child_env, run, torchrun_cmd

EPOCH_LINE = re.compile(
    r"^Epoch \[(\d+)/(\d+)\] \| Loss: [\d.]+ \| Train Acc: [\d.]+% \| Test Acc: ([\d.]+)% \| Time: [\d.]+s$", re.M
)


def test_two_rank_run_writes_a_valid_result(synthetic_cache, tmp_path):
    out = tmp_path / "run.json"
    result = run(torchrun_cmd(2, "--data", str(synthetic_cache), "--out", str(out), "--epochs", "3", "--seed", "1"))
    assert result.returncode == 0, result.stdout + result.stderr
    run_json = json.loads(out.read_text())
    jsonschema.validate(run_json, json.loads(RUN_SCHEMA.read_text()))
    assert [m[0] for m in EPOCH_LINE.findall(result.stdout)] == ["1", "2", "3"]  # rank 0 only: once per epoch
    cfg, totals = run_json["config"], run_json["totals"]
    assert cfg["world_size"] == 2 and cfg["backend"] == "gloo" and cfg["threads_per_worker"] == 1
    assert cfg["allreduce"] == "backend"  # the default: DDP's own all-reduce through gloo
    assert cfg["global_batch_size"] == 256 and run_json["model"]["parameters"] == 1_147_914
    assert totals["final_test_acc"] > 30.0  # ten classes: chance is 10 %
    assert all(e["images"] == 2048 and e["steps"] == 8 for e in run_json["epochs"])
    assert run_json["dataset"]["test_samples"] == 512
    assert len(run_json["ranks"]) == 2 and run_json["environment"]["gloo_socket_ifname"] == "lo"
    assert run_json["environment"]["heap_retained"] is True  # glibc (Linux): see the next test
    assert totals["comm_exposed_time_s"] > 0 and totals["data_time_s"] > 0
    assert totals["train_time_s"] <= totals["train_loop_s"] <= totals["process_start_to_end_s"]


def test_shared_memory_allreduce_matches_gloo_bit_for_bit(synthetic_cache, tmp_path):
    """At two ranks both transports compute a/2 + b/2 per element, so training is identical;
    and the shared segment leaves nothing behind in /dev/shm."""
    before = set(Path("/dev/shm").glob("ddpbench-grads-*"))
    epochs = {}
    for allreduce in ("backend", "shared_memory"):
        out = tmp_path / f"{allreduce}.json"
        result = run(
            torchrun_cmd(
                2,
                "--data",
                str(synthetic_cache),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--allreduce",
                allreduce,
                "--quiet",
            )
        )
        assert result.returncode == 0, result.stdout + result.stderr
        run_json = json.loads(out.read_text())
        assert run_json["config"]["allreduce"] == allreduce
        epochs[allreduce] = [(e["train_loss"], e["test_loss"], e["test_acc"]) for e in run_json["epochs"]]
        assert run_json["totals"]["comm_exposed_time_s"] > 0
    assert epochs["shared_memory"] == epochs["backend"]
    assert set(Path("/dev/shm").glob("ddpbench-grads-*")) == before


def test_ddp_settings_shape_the_buckets_and_the_bytes_sent(synthetic_cache, tmp_path):
    """bucket_cap_mb changes the buckets DDP builds; the fp16 hook halves the bytes each step sends."""
    ddp = {}
    for name, options in {
        "default": [],
        "small_buckets": ["--bucket-cap-mb", "1"],
        "fp16": ["--comm-hook", "fp16", "--static-graph", "true"],
    }.items():
        out = tmp_path / f"{name}.json"
        result = run(
            torchrun_cmd(
                2,
                "--data",
                str(synthetic_cache),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--max-train-samples",
                "1024",
                "--quiet",
                *options,
            )
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        run_json = json.loads(out.read_text())
        ddp[name] = run_json["ddp"]
        assert run_json["config"]["allreduce"] == "backend"
    gradient_bytes = 1_147_914 * 4
    assert sum(ddp["default"]["bucket_bytes"]) == gradient_bytes == sum(ddp["small_buckets"]["bucket_bytes"])
    assert ddp["small_buckets"]["buckets"] > ddp["default"]["buckets"]
    assert ddp["default"]["allreduce_payload_bytes_per_step"] == gradient_bytes
    assert ddp["fp16"]["allreduce_payload_bytes_per_step"] == gradient_bytes // 2
    assert ddp["fp16"]["ring_bytes_sent_per_rank_per_step"] == gradient_bytes // 2  # 2 (W - 1) / W = 1 at W = 2


@pytest.mark.parametrize("damage", ["truncated", "same_size_noise"])
def test_a_damaged_cache_stops_the_run_naming_the_file(synthetic_cache, tmp_path, damage):
    """A cut-off copy, or the same bytes count of noise (which would train silently to chance):
    the run fails before training, naming the file and how to rebuild the cache."""
    import shutil

    cache = shutil.copytree(synthetic_cache, tmp_path / "cache")
    images = cache / "train_images.npy"
    size = images.stat().st_size
    with open(images, "r+b") as fh:
        if damage == "truncated":
            fh.truncate(size // 2)
        else:
            fh.seek(size // 2)
            fh.write(os.urandom(size - size // 2))
    out = tmp_path / "run.json"
    result = run(torchrun_cmd(2, "--data", str(cache), "--out", str(out), "--epochs", "1", "--quiet"))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and not out.exists()
    assert "train_images.npy" in output and "--forcerun synthetic_cache" in output, output[-3000:]
    assert ("size" if damage == "truncated" else "sha256") in output


def test_shared_memory_without_room_is_a_clear_error(tmp_path):
    from ddpbench.comm import SharedMemoryError, _create_segment

    with pytest.raises(SharedMemoryError, match=r"cannot reserve .* MiB in .*set train.allreduce: backend"):
        _create_segment(str(tmp_path), 1 << 62)  # 4 EiB: no file system has room
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "device, one_node, requested, expected",
    [
        ("cpu", True, "auto", "shared_memory"),
        ("cpu", False, "auto", "backend"),  # two nodes: gloo between them
        ("cuda", True, "auto", "backend"),  # nccl
        ("cpu", True, "backend", "backend"),
        ("cpu", False, "shared_memory", "spans several; use allreduce: backend"),
        ("cuda", True, "shared_memory", "sums CPU gradients; on cuda use allreduce: backend"),
    ],
)
def test_gradient_allreduce_choice(device, one_node, requested, expected):
    from ddpbench.train import gradient_allreduce

    if expected in ("shared_memory", "backend"):
        assert gradient_allreduce(requested, device, 2, one_node) == expected
        assert gradient_allreduce(requested, device, 1, True) == "none"
    else:
        with pytest.raises(ValueError, match=expected):
            gradient_allreduce(requested, device, 2, one_node)


FAULTS_PER_REALLOCATION = """
import resource, sys, torch
from ddpbench.distributed import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # warm-up: the first allocations fault in either case, until glibc's heap settles
    torch.empty(16 << 20).fill_(1.0)
before = faults()
for _ in range(20):  # a batch-512 step's first activation: 64 MiB, allocated, written and freed
    torch.empty(16 << 20).fill_(1.0)
print((faults() - before) / 20)
"""


@pytest.mark.parametrize("heap", ["system", "retain"])
def test_retained_heap_reuses_freed_memory_without_page_faults(heap):
    """Why CPU steps are faster with a retained heap: a freed 64 MiB block comes back without the
    kernel faulting in (and zeroing) its 16,384 pages again. (glibc adapts its threshold up to 32 MiB
    on its own, so smaller blocks are spared only some of the time.)"""
    result = run([sys.executable, "-c", FAULTS_PER_REALLOCATION, heap])
    assert result.returncode == 0, result.stderr
    faults = float(result.stdout)
    if heap == "retain":
        assert faults < 10
    else:  # glibc's default, for contrast: every reallocation is fresh pages
        assert faults > 1000


def test_same_seed_same_result_and_quiet(synthetic_cache, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        result = run(
            torchrun_cmd(
                1,
                "--data",
                str(synthetic_cache),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--max-train-samples",
                "512",
                "--quiet",
            )
        )
        assert result.returncode == 0, result.stderr
        assert "Epoch" not in result.stdout
        outs.append(json.loads(out.read_text())["epochs"][0])
    assert outs[0]["train_loss"] == outs[1]["train_loss"] and outs[0]["test_acc"] == outs[1]["test_acc"]
    assert outs[0]["images"] == 512


def test_verbose_lines_name_rank_and_pid(synthetic_cache, tmp_path):
    result = run(
        torchrun_cmd(2, "--data", str(synthetic_cache), "--epochs", "1", "--max-train-samples", "256", "--verbose")
    )
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert re.search(rf"^\d{{4}}-\d\d-\d\d [\d:,]+ rank {rank} pid \d+ ", result.stdout, re.M)


def test_bad_global_batch_is_a_clear_error(synthetic_cache, tmp_path):
    out = tmp_path / "run.json"
    result = run(
        torchrun_cmd(
            2, "--data", str(synthetic_cache), "--out", str(out), "--batch-size", "127", "--batch-size-mode", "global"
        )
    )
    assert result.returncode != 0
    assert "not divisible by world size 2" in result.stdout + result.stderr
    assert not out.exists()


def _start_long_run(cache: Path, out: Path, timeout_s: int, allreduce: str) -> subprocess.Popen:
    cmd = torchrun_cmd(
        2,
        "--data",
        str(cache),
        "--out",
        str(out),
        "--epochs",
        "200",
        "--timeout",
        str(timeout_s),
        "--allreduce",
        allreduce,
    )
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())


def _worker_pids(launcher: subprocess.Popen) -> list[int]:
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def _wait_for_first_epoch(proc: subprocess.Popen) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch [1/"):
            return "".join(seen)
    raise AssertionError("run ended before its first epoch:\n" + "".join(seen))


@pytest.mark.parametrize("allreduce", ["shared_memory", "backend"])
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_failed_or_hung_rank_ends_the_launch(synthetic_cache, tmp_path, how, allreduce):
    """A rank that dies (SIGKILL) or hangs (SIGSTOP) ends the launch non-zero within the bound,
    whichever way gradients are summed."""
    out, bound = tmp_path / "run.json", 15
    proc = _start_long_run(synthetic_cache, out, timeout_s=bound, allreduce=allreduce)
    try:
        _wait_for_first_epoch(proc)
        workers = _worker_pids(proc)
        assert len(workers) == 2
        t0 = time.monotonic()
        os.kill(workers[1], signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        output, _ = proc.communicate(timeout=bound + 60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert elapsed < bound + 45, f"took {elapsed:.0f}s"
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    if how == "killed":  # torchrun's summary names the failed rank and its signal
        assert re.search(r"rank\s*:\s*1", output) and "SIGKILL" in output, output[-3000:]
    else:  # the peers' collective timed out, and the error names the rank that stopped responding
        assert "rank 1 (pid" in output and "stopped responding" in output, output[-3000:]
