"""The timed runs' order (ddpbench.order): rounds by seed, each shuffled by the recorded seed, and the
train rule's priorities that make Snakemake start them so."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from ddpbench.order import describe, priority_function, timed_order

GRID = [f"ws{w}_bs128_seed{s}" for w in (1, 2, 4) for s in (0, 1, 2)]  # Snakemake's expand order


def seed_of(name: str) -> int:
    return int(name.rsplit("seed", 1)[1])


def test_every_setting_of_a_seed_runs_before_the_next_seed():
    order = timed_order(GRID, 0)
    assert sorted(order) == sorted(GRID)
    assert [seed_of(n) for n in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_a_round_is_shuffled_by_its_recorded_seed_the_same_each_time():
    order = timed_order(GRID, 7)
    first_round = [n for n in GRID if n.endswith("seed0")]
    random.Random("7/0").shuffle(first_round)
    assert order[:3] == first_round
    assert timed_order(GRID, 7) == order
    assert {tuple(timed_order(GRID, s)[:3]) for s in range(20)} != {tuple(order[:3])}  # the seed matters


def test_without_a_shuffle_seed_a_round_keeps_the_grid_order():
    assert timed_order(GRID, None)[:3] == ["ws1_bs128_seed0", "ws2_bs128_seed0", "ws4_bs128_seed0"]
    assert "grid.order_seed: null" in describe(None) and "grid.order_seed = 3" in describe(3)


def test_variants_share_the_rounds():
    names = [f"{v}/ws{w}_bs64_seed{s}" for v in ("fp32", "bf16") for w in (1, 2) for s in (0, 1)]
    order = timed_order(names, 0)
    assert {n.split("/")[0] for n in order[:4]} == {"fp32", "bf16"}
    assert all(n.endswith("seed0") for n in order[:4])


def test_the_first_run_of_the_order_has_the_highest_priority():
    order = timed_order(GRID, 0)
    priority = priority_function(order, "ws{world_size}_bs{batch_size}_seed{seed}")

    def wildcards(name: str) -> SimpleNamespace:
        w, rest = name[2:].split("_bs")
        b, s = rest.split("_seed")
        fields = {"world_size": w, "batch_size": b, "seed": s}
        return SimpleNamespace(items=fields.items)

    assert [priority(wildcards(n)) for n in order] == list(range(len(order), 0, -1))


def test_a_misnamed_run_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'ws1_seed0' is not named"):
        timed_order(["ws1_seed0"], 0)
