"""The report's figures drawn from summary.json as matplotlib Figures: the study's (speedup,
efficiency, throughput, accuracy, time breakdown, step times, learning curves), the variants' and the
prediction's. ddpbench.figures chooses, captions and renders them."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ddpbench.predict import MEASURED_NETWORK

PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#4b5563"]
PARTS = [  # (label, colour) of the time breakdown, in stacking order
    ("data", "#60a5fa"),
    ("compute", "#2563eb"),
    ("communication (exposed)", "#f97316"),
    ("other", "#a3a3a3"),
    ("evaluation", "#a78bfa"),
]
SINGLE, WIDE = (5.2, 3.3), (10.4, 3.3)
BATCH_MODE_WORDS = {"per_worker": "batch per worker", "global": "global batch split over the workers"}
# Type of the plot callbacks: errors per group, and additions per group or for the whole axes.
Group = list[dict]
YErr = Callable[[Group], Any]
PerGroup = Callable[[Axes, Group, np.ndarray, np.ndarray, str], None]
Ideal = Callable[[Axes, list[int]], Any]


# --------------------------------------------------------------------------- plots


def by_group(rows: list[dict]) -> dict[tuple[str | None, int], list[dict]]:
    """Rows by (variant, batch size), in summary.json's order (variants as configured), each by world size."""
    groups = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["world_size"]):
        groups[(row.get("variant"), row["batch_size"])].append(row)
    return dict(groups)


def group_label(key: tuple[str | None, int], groups: Iterable[tuple[str | None, int]]) -> str:
    """A line's legend: its variant and batch size, each only where the plot has several."""
    variant, bs = key
    parts = [variant] if len({k[0] for k in groups}) > 1 else []
    parts += [f"batch {bs}"] if len({k[1] for k in groups}) > 1 else []
    return ", ".join(parts) or "measured"


def row_label(row: dict, groups: Iterable[tuple[str | None, int]]) -> str:
    """ "W = 2", with its variant and batch size where the plot has several."""
    label = group_label((row.get("variant"), row["batch_size"]), groups)
    return f"W = {row['world_size']}" + ("" if label == "measured" else f", {label}")


def num(value: float | None) -> float:
    """None (JSON null for NaN) as NaN, so numpy and matplotlib skip it."""
    return math.nan if value is None else float(value)


def world_axis(ax: Axes, sizes: Iterable[int]) -> None:
    """Ticks at the measured world sizes; log2 spacing once the range is wide."""
    sizes = sorted(set(sizes))
    if sizes and sizes[-1] / sizes[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("world size (workers)")


def series(group: list[dict], key: str) -> np.ndarray:
    return np.array([num(r[key]) for r in group])


def ci_errors(group: list[dict], mean: str, low: str, high: str) -> np.ndarray:
    m = series(group, mean)
    return np.nan_to_num(np.vstack([m - series(group, low), series(group, high) - m]), nan=0.0)


def world_size_plot(
    rows: list[dict],
    key: str,
    yerr: YErr,
    ylabel: str,
    title: str,
    scale: float = 1.0,
    from_zero: bool = True,
    per_group: PerGroup | None = None,
    ideal: Ideal | None = None,
) -> Figure:
    """One line per (variant, batch size) of ``key`` against the world size, with error bars.

    ``yerr(group)`` gives the error bars; ``ideal(ax, sizes)`` draws a reference first;
    ``per_group(ax, group, sizes, values, colour)`` adds to each line."""
    fig = Figure(figsize=SINGLE, layout="constrained")
    ax = fig.add_subplot()
    draw_lines(ax, rows, key, yerr, scale, per_group, ideal)
    ax.set_ylabel(ylabel)
    if from_zero:
        ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend()
    return fig


def draw_lines(
    ax: Axes,
    rows: list[dict],
    key: str,
    yerr: YErr,
    scale: float = 1.0,
    per_group: PerGroup | None = None,
    ideal: Ideal | None = None,
) -> None:
    """The lines of world_size_plot on ``ax``: one per (variant, batch size), a colour each."""
    groups = by_group(rows)
    sizes = [r["world_size"] for r in rows]
    if ideal:
        ideal(ax, sorted(set(sizes)))
    for i, (group, g) in enumerate(groups.items()):
        colour = PALETTE[i % len(PALETTE)]
        w, y = series(g, "world_size"), scale * series(g, key)
        ax.errorbar(w, y, yerr=scale * yerr(g), fmt="o-", capsize=3, color=colour, label=group_label(group, groups))
        if per_group:
            per_group(ax, g, w, y, colour)
    world_axis(ax, sizes)


def amdahl_for(amdahl: dict, variant: str | None, bs: int) -> float | None:
    """summary.json's fitted serial fraction: {batch size: f}, or {variant: {batch size: f}} with variants
    (keys are strings after JSON, numbers before)."""
    fits = amdahl.get(variant, {}) if variant else amdahl
    return fits.get(str(bs), fits.get(bs))


def amdahl_list(amdahl: dict) -> list[dict]:
    """The fits as {variant, batch_size, f} rows (variant None without variants)."""
    if amdahl and all(isinstance(fits, dict) for fits in amdahl.values()):
        return [{"variant": v, "batch_size": bs, "f": f} for v, fits in amdahl.items() for bs, f in fits.items()]
    return [{"variant": None, "batch_size": bs, "f": f} for bs, f in amdahl.items()]


def speedup_plot(rows: list[dict], amdahl: dict) -> Figure:
    def fit(ax: Axes, g: Group, w: np.ndarray, y: np.ndarray, colour: str) -> None:
        f = amdahl_for(amdahl, g[0].get("variant"), g[0]["batch_size"])
        if f is not None:
            dense = np.linspace(min(w), max(w), 100)
            ax.plot(dense, 1.0 / (f + (1.0 - f) / dense), ":", color=colour, label=f"Amdahl fit, f = {f:.3f}")

    return world_size_plot(
        rows,
        "speedup_mean",
        lambda g: ci_errors(g, "speedup_mean", "speedup_ci95_low", "speedup_ci95_high"),
        "speedup (steady throughput ÷ W = 1's)",
        "Speedup (geometric mean, 95 % CI across seeds)",
        per_group=fit,
        ideal=lambda ax, sizes: ax.plot(sizes, sizes, "--", color="#9ca3af", label="ideal (S = W)"),
    )


def efficiency_plot(rows: list[dict]) -> Figure:
    return world_size_plot(
        rows,
        "efficiency_mean",
        lambda g: ci_errors(g, "efficiency_mean", "efficiency_ci95_low", "efficiency_ci95_high"),
        "parallel efficiency (%)",
        "Efficiency = speedup / W (95 % CI)",
        scale=100,
        ideal=lambda ax, sizes: ax.axhline(100, ls="--", color="#9ca3af", label="ideal (100 %)"),
    )


def throughput_plot(rows: list[dict]) -> Figure:
    def ideal(ax: Axes, g: Group, w: np.ndarray, y: np.ndarray, colour: str) -> None:
        if g[0]["world_size"] == 1:
            label = "ideal (W × one worker)"
            once = label if label not in ax.get_legend_handles_labels()[1] else "_nolegend_"  # one entry for all
            ax.plot(w, y[0] * w, "--", color=colour, alpha=0.5, label=once)

    return world_size_plot(
        rows,
        "throughput_mean_img_s",
        lambda g: np.nan_to_num(series(g, "throughput_std_img_s")),
        "training images / s",
        "Throughput (total images / total time, ± sd of the runs)",
        per_group=ideal,
    )


def accuracy_plot(rows: list[dict]) -> Figure:
    return world_size_plot(
        rows,
        "test_acc_mean",
        lambda g: np.nan_to_num(series(g, "test_acc_std")),
        "final test accuracy (%)",
        "Test accuracy after the last epoch (± std)",
        from_zero=False,
    )


def breakdown_plot(rows: list[dict]) -> Figure:
    """Mean seconds per run: training time split by the summary's shares, plus evaluation."""
    groups = by_group(rows)
    ordered = [r for g in groups.values() for r in g][::-1]  # barh draws bottom up: first group on top
    labels = [row_label(r, groups) for r in ordered]
    train = series(ordered, "train_time_mean_s")
    comm = np.nan_to_num(series(ordered, "comm_share"))  # untimed (CUDA): inside compute
    parts = [
        series(ordered, "data_share") * train,
        series(ordered, "compute_share") * train,
        comm * train,
        series(ordered, "other_share") * train,
        series(ordered, "eval_time_mean_s"),
    ]
    fig = Figure(figsize=(WIDE[0], 1.5 + 0.42 * len(ordered)), layout="constrained")
    ax = fig.add_subplot()
    left = np.zeros(len(ordered))
    for (label, colour), values in zip(PARTS, parts, strict=True):
        values = np.nan_to_num(values)
        ax.barh(labels, values, left=left, color=colour, label=label, height=0.6)
        left += values
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("seconds per run (mean across seeds)")
    ax.set_title("Where the time goes: training (data, compute, exposed communication, other) + evaluation")
    fig.legend(ncols=len(PARTS), loc="outside lower center")  # "outside": constrained layout makes room
    return fig


def step_time_plot(dists: list[dict]) -> Figure:
    """summary.json's step_distributions: per world size a box of rank 0's steady steps (25th-75th
    percentile, whiskers 5th-95th, the median line) per (variant, batch size), and every rank's
    median step as a dot beside it, so that a slow rank shows."""
    groups = list(dict.fromkeys((d["variant"], d["batch_size"]) for d in dists))
    sizes = sorted({d["world_size"] for d in dists})
    width = 0.8 / len(groups)
    fig = Figure(figsize=WIDE, layout="constrained")
    ax = fig.add_subplot()
    for d in dists:
        gi = groups.index((d["variant"], d["batch_size"]))
        x, colour = sizes.index(d["world_size"]) + (gi - (len(groups) - 1) / 2) * width, PALETTE[gi % len(PALETTE)]
        ms = {k: 1e3 * d[k] for k in ("p5_s", "p25_s", "median_s", "p75_s", "p95_s")}
        box = {"med": ms["median_s"], "q1": ms["p25_s"], "q3": ms["p75_s"], "whislo": ms["p5_s"], "whishi": ms["p95_s"]}
        ax.bxp(
            [box | {"fliers": []}],
            positions=[x],
            widths=width * 0.6,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": colour, "alpha": 0.35, "edgecolor": colour},
            medianprops={"color": colour},
        )
        ranks = 1e3 * np.asarray(d["rank_median_s"])
        ax.plot(np.full(len(ranks), x + width * 0.4), ranks, "o", ms=3, color=colour)
    for gi, group in enumerate(groups):
        ax.plot([], [], "s", color=PALETTE[gi % len(PALETTE)], alpha=0.5, label=group_label(group, groups))
    ax.set_xticks(range(len(sizes)), [str(w) for w in sizes])
    ax.set_xlabel("workers (world size)")
    ax.set_ylabel("step time (ms)")
    ax.set_title("Steady-state step times: rank 0's steps (box 25-75 %, whiskers 5-95 %), each rank's median (dots)")
    ax.legend()
    return fig


def learning_curves_plot(curves: list[dict]) -> Figure:
    """summary.json's mean test accuracy and loss per epoch, one line per (variant, batch size, world
    size): a colour per world size, a line style per (variant, batch size)."""
    fig = Figure(figsize=WIDE, layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    groups = list(dict.fromkeys((c.get("variant"), c["batch_size"]) for c in curves))
    sizes = sorted({c["world_size"] for c in curves})
    for c in curves:  # summary.json's order: variants as configured, then batch and world size
        group, ws = (c.get("variant"), c["batch_size"]), c["world_size"]
        style = dict(
            color=PALETTE[sizes.index(ws) % len(PALETTE)],
            marker="o",
            markersize=3,
            ls=["-", "--", ":", "-."][groups.index(group) % 4],
            label=row_label(c, groups),
        )
        acc_ax.plot(c["epoch"], c["test_acc"], **style)
        loss_ax.plot(c["epoch"], c["test_loss"], **style)
    for ax, title, ylabel in (
        (acc_ax, "Test accuracy per epoch", "test accuracy (%)"),
        (loss_ax, "Test loss per epoch", "test loss (cross-entropy)"),
    ):
        ax.set_title(title + " (mean across seeds)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend()
    return fig


def variant_speed_plot(speed: list[dict]) -> Figure:
    """Throughput against the baseline's next to reaching the target against the baseline's, both as
    speedups (summary.json's variants.speed_vs_accuracy), one line per (variant, batch size) in the
    colours of the other plots; the baseline's line is 1."""
    fig = Figure(figsize=WIDE, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in (
        (axes[0], "throughput_speedup", "Throughput ÷ baseline's (images per second)"),
        (axes[1], "time_to_target_speedup", "Baseline's time to target ÷ variant's"),
    ):
        draw_lines(
            ax,
            speed,
            key,
            lambda g, key=key: ci_errors(g, key, f"{key}_ci95_low", f"{key}_ci95_high"),
        )
        ax.set_ylabel("speedup against the baseline")
        ax.set_title(title + " (95 % CI)")
    axes[0].legend()
    return fig


def network_label(name: str) -> str:
    """A predicted curve's legend: the network measured here is called so."""
    return ("network measured here" if name == MEASURED_NETWORK else name) + " (predicted)"


def draw_predicted(ax: Axes, curve: dict, style: str, colour: str, label: str) -> None:
    """One predicted speedup curve: its bootstrap band shaded, the points up to the extrapolation
    limit in ``style``, the rest faded (extrapolated, not validated)."""
    w = np.asarray(curve["world_sizes"], dtype=float)
    y = np.array([num(v) for v in curve["speedup"]])
    low = np.array([num(v) for v in curve.get("speedup_ci95_low") or [None] * len(w)])
    high = np.array([num(v) for v in curve.get("speedup_ci95_high") or [None] * len(w)])
    if np.isfinite(low).any():
        ax.fill_between(w, low, high, color=colour, alpha=0.12, linewidth=0)
    far = np.asarray(curve.get("extrapolated") or [False] * len(w), dtype=bool)
    near = ~far
    near[np.argmax(far) if far.any() else len(w) - 1] = True  # the faded part starts where the plain one ends
    ax.plot(w[near], y[near], style, color=colour, label=label)
    if far.any():
        ax.plot(w[~near | far], y[~near | far], style, color=colour, alpha=0.3)


def prediction_plot(rows: list[dict], prediction: dict) -> Figure:
    """The measured speedup of the predicted variant (points, 95 % CI) and the predicted speedup per
    network continuing dashed up to predict.max_world_size with its bootstrap band, faded where it is
    extrapolated, log2 axes: one panel per batch mode."""
    fig = Figure(figsize=WIDE, layout="constrained")
    axes = dict(zip(BATCH_MODE_WORDS, fig.subplots(1, 2, sharey=True), strict=True))
    networks = list(prediction["networks"])
    configs = list(dict.fromkeys((c["runs_batch_mode"], c["batch_size"]) for c in prediction["curves"]))
    several = len(configs) > 1
    sizes = [2**k for k in range(int(math.log2(prediction["max_world_size"])) + 1)]
    for ax in axes.values():
        ax.plot(sizes, sizes, ":", color="#9ca3af", label="ideal (S = W)")
    for curve in prediction["curves"]:
        config = (curve["runs_batch_mode"], curve["batch_size"])
        draw_predicted(
            axes[curve["batch_mode"]],
            curve,
            ["--", "-.", ":"][configs.index(config) % 3],
            PALETTE[networks.index(curve["network"]) % len(PALETTE)],
            network_label(curve["network"]) + (f", batch {curve['batch_size']}" if several else ""),
        )
    if any(any(c.get("extrapolated") or []) for c in prediction["curves"]):
        for ax in axes.values():
            ax.plot([], [], "--", color="#6b7280", alpha=0.3, label="extrapolated, not validated")
    for mode, bs in configs:
        g = [r for r in rows if r.get("variant") == prediction["variant"] and r["batch_size"] == bs]
        errors = ci_errors(g, "speedup_mean", "speedup_ci95_low", "speedup_ci95_high")
        label = "measured here" + (f", batch {bs}" if several else "")
        axes[mode].errorbar(
            series(g, "world_size"),
            series(g, "speedup_mean"),
            yerr=errors,
            fmt="o-",
            capsize=3,
            color="#111827",
            label=label,
            zorder=3,
        )
    for mode, ax in axes.items():
        world_axis(ax, sizes)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_title(f"Speedup, {BATCH_MODE_WORDS[mode]}")
        ax.legend()
    axes["per_worker"].set_ylabel("speedup against one worker")
    return fig
