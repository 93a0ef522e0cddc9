"""ddpbench.commbench: the all-reduce timings the scaling prediction is fitted to."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from ddpbench import commbench
from ddpbench.allreduce import fit_collective
from ddpbench.commtimes import comm_points
from ddpbench.scaling import Colocation


def test_sizes_are_whole_float32_elements():
    assert commbench.parse_bytes_list("8,1024, 4194304") == [8, 1024, 4194304]
    with pytest.raises(argparse.ArgumentTypeError, match=r"\[6, 2\] are not positive multiples of 4"):
        commbench.parse_bytes_list("8,6,2")
    assert commbench.DEFAULT_SIZES[0] == 8 and commbench.DEFAULT_SIZES[-1] == 64 * 2**20


def run_commbench(ranks: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    return subprocess.run(
        [*cmd, "-m", "ddpbench.commbench", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def group_launch(tmp_path_factory) -> list[dict]:
    """One launch of three ranks timing world sizes 2 and 3, each in a group of its first ranks, with
    the model's buckets and its step: as the workflow's commbench rule launches it (one launch, every
    world size). Both tests below read it: each launch is python, torch and torchrun starting."""
    tmp = tmp_path_factory.mktemp("commbench")
    outs = [tmp / "ws2.json", tmp / "ws3.json"]
    args = [
        *("--world-sizes", "2,3", "--out", *map(str, outs)),
        *("--sizes", "8,4096,4194304", "--buckets", "65536", "--model", "simple_cnn"),
        *("--reps", "5", "--budget-s", "0.3", "--timeout", "60", "--step-batch", "8"),
    ]
    done = run_commbench(3, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(out.read_text()) for out in outs]


@pytest.mark.slow  # torchrun, three ranks
def test_two_ranks_time_the_sweep_and_the_models_buckets(group_launch):
    result = group_launch[0]
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["environment"]["world_size"] == 2 and result["environment"]["cpu_model"]
    assert result["environment"]["gloo_socket_ifname"] == "lo"  # one node: loopback
    assert [p["bytes"] for p in result["sweep"]] == [8, 4096, 4194304]
    bucket_bytes = [p["bytes"] for p in result["buckets"]]
    # The given bucket, then SimpleCNN's own DDP buckets: together all of its float32 gradients.
    assert bucket_bytes[0] == 65536 and sum(bucket_bytes[1:]) == 4 * 1_147_914
    for point in result["sweep"] + result["buckets"]:
        assert 3 <= point["reps"] <= 5
        assert 0 < point["min_s"] <= point["median_s"] <= point["max_s"]
    small, large = result["sweep"][0]["median_s"], result["sweep"][-1]["median_s"]
    assert large > small  # 4 MiB takes longer than 8 bytes
    fit = fit_collective(*comm_points([result]))
    assert fit.alpha_s >= 0 and fit.bandwidth_bytes_s > 0
    # The model's step without communication, each rank alone in turn and both at once, four rounds of blocks of
    # 3 steps; each rank's together against its own alone, their geometric mean the slowdown:
    compute = result["compute"]
    assert (compute["batch"], compute["threads"], compute["steps_alone"], compute["steps_together"]) == (8, 1, 24, 12)
    assert compute["ranks_per_node"] == 2 and compute["alone_ranks"] == [0, 1]  # the group's, not the three launched
    ratios = compute["slowdown_by_rank"]
    assert compute["slowdown"] == pytest.approx(math.sqrt(ratios[0] * ratios[1]))
    assert 0 < compute["rank_wait_s"] < compute["together_median_s"]
    colocation = Colocation.from_comm([result])
    wait = compute["rank_wait_s"] / compute["together_median_s"]
    assert colocation.measured == ((2, max(1.0, compute["slowdown"]), wait),)


@pytest.mark.slow  # torchrun, three ranks
def test_one_launch_times_each_world_size_in_a_group_of_its_first_ranks(group_launch):
    buckets = [p["bytes"] for p in group_launch[0]["buckets"]]
    for world_size, result in zip((2, 3), group_launch, strict=True):
        assert result["world_size"] == result["environment"]["world_size"] == world_size
        assert result["environment"]["launched_ranks"] == 3
        assert [p["bytes"] for p in result["sweep"]] == [8, 4096, 4194304]
        assert [p["bytes"] for p in result["buckets"]] == buckets
        assert result["compute"]["ranks_per_node"] == world_size


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--world-sizes", "2,3", "--out", "a", "b"], "launch at least 3 ranks, not 2"),
        (["--world-sizes", "2", "--out", "a", "b"], "give one --out per world size: 2 files for --world-sizes [2]"),
    ],
)
def test_world_sizes_are_checked_before_any_timing(monkeypatch, capsys, argv, message):
    """One --out per world size, and no world size beyond the ranks launched (torchrun's WORLD_SIZE):
    said by the argument parser, before the process group or any timing."""
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun launched two ranks
    with pytest.raises(SystemExit) as exited:
        commbench.parse_args(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_the_ranks_timed_alone_spread_from_the_first_to_the_last():
    assert [commbench.alone_ranks(n) for n in (1, 2, 3, 8, 64)] == [
        [0],
        [0, 1],
        [0, 1, 2],
        [0, 2, 5, 7],
        [0, 21, 42, 63],
    ]
