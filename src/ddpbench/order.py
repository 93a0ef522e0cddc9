"""The order the timed runs go in: rounds, one per seed (every variant, world size and batch size of
the first seed, then of the next), each round shuffled by a recorded seed (grid.order_seed), so that
a drift of the machine (heat, a neighbour, a frequency change) falls on every setting alike instead
of on the last world sizes of the grid.

Snakemake starts ready jobs highest priority first; the train rule takes ``priority`` from here.
The order is a plan: the runs record when they really started, and the summary ranks them by it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ddpbench.runs import EXPECTED_NAME


def timed_order(names: list[str], shuffle_seed: int | None) -> list[str]:
    """``names`` (ws<W>_bs<B>_seed<S>, optionally under <variant>/) in rounds by seed, ascending;
    within a round shuffled by random.Random(f"{shuffle_seed}/{seed}"), or in the given order
    when ``shuffle_seed`` is None."""
    rounds: dict[int, list[str]] = {}
    for name in names:
        match = EXPECTED_NAME.fullmatch(name)
        if not match:
            raise ValueError(f"run {name!r} is not named ws<W>_bs<B>_seed<S> or <variant>/ws<W>_bs<B>_seed<S>")
        rounds.setdefault(int(match["seed"]), []).append(name)
    order = []
    for seed in sorted(rounds):
        members = list(rounds[seed])
        if shuffle_seed is not None:
            random.Random(f"{shuffle_seed}/{seed}").shuffle(members)
        order += members
    return order


def priority_function(order: list[str], run_pattern: str) -> Callable[[object], int]:
    """Snakemake's priority for a train job: the first run of ``order`` highest, the last 1."""
    position = {name: i for i, name in enumerate(order)}

    def priority(wildcards) -> int:
        name = run_pattern.format(**dict(wildcards.items()))
        return len(order) - position.get(name, len(order) - 1)

    return priority


def describe(shuffle_seed: int | None) -> str:
    """The order as the report states it."""
    within = (
        f"shuffled within each round by grid.order_seed = {shuffle_seed}"
        if shuffle_seed is not None
        else "in the grid's order within each round (grid.order_seed: null)"
    )
    return f"rounds by seed (every setting of seed 0, then of seed 1, ...), {within}; started: the runs' start times"
