"""Which figures the report shows, with their captions and sections: ``make_plots`` draws each
(ddpbench.plots) as deterministic SVG; ``ddpbench.report`` lays them out."""

from __future__ import annotations

import matplotlib

from ddpbench.plots import (
    accuracy_plot,
    amdahl_list,
    breakdown_plot,
    efficiency_plot,
    learning_curves_plot,
    prediction_plot,
    speedup_plot,
    step_time_plot,
    throughput_plot,
    variant_speed_plot,
)
from ddpbench.svg import SVG_STYLE, svg_text

SECTIONS = {"variant_speed": "variants", "prediction": "prediction"}  # plots shown outside the Plots section


def make_plots(summary: dict) -> list[dict]:
    """Each plot: name (its file and id), caption, whether it spans the page, and its SVG."""
    rows, amdahl = summary["rows"], summary.get("amdahl_serial_fraction") or {}
    specs = [
        (
            "speedup",
            False,
            "Speedup of the steady-state throughput against one worker (geometric mean over the seeds, 95 % "
            f"interval of the mean log speedup, none below 3 seeds), ideal line and {amdahl_caption(summary)}.",
            lambda: speedup_plot(rows, amdahl),
        ),
        (
            "efficiency",
            False,
            "Parallel efficiency: speedup divided by the number of workers.",
            lambda: efficiency_plot(rows),
        ),
        ("throughput", False, "Training images per second over all workers.", lambda: throughput_plot(rows)),
        (
            "accuracy",
            False,
            "Final test accuracy: larger world sizes train with a larger global batch.",
            lambda: accuracy_plot(rows),
        ),
        (
            "time_breakdown",
            True,
            "Mean time per run split into data loading, compute, exposed communication, "
            "other training time, and evaluation.",
            lambda: breakdown_plot(rows),
        ),
        (
            "step_times",
            True,
            "Rank 0's step times after the warm-up, pooled over the seeds, and every rank's median step: the "
            "spread within a run and the skew between ranks that the speedup's interval does not show.",
            lambda: step_time_plot(summary["step_distributions"]),
        ),
        (
            "learning_curves",
            True,
            "Test accuracy and loss after each epoch, one line per world size.",
            lambda: learning_curves_plot(summary["learning_curves"]),
        ),
    ]
    plots = []
    for name, wide, caption, build in specs + variant_specs(summary["variants"]) + prediction_specs(summary):
        if name == "learning_curves" and not summary["learning_curves"]:
            continue
        with matplotlib.rc_context(SVG_STYLE):  # style applies while the figure is built, too
            svg = svg_text(build())
        section = SECTIONS.get(name, "plots")
        plots.append({"name": name, "wide": wide, "caption": caption, "svg": svg, "section": section})
    return plots


def amdahl_caption(summary: dict) -> str:
    """What the speedup plot says of its Amdahl fit: the fitted serial fractions, or why there is none."""
    fits = ", ".join(
        f"f = {a['f']:.3f} at " + (f"{a['variant']}, " if a["variant"] else "") + f"batch {a['batch_size']}"
        for a in amdahl_list(summary.get("amdahl_serial_fraction") or {})
        if a["f"] is not None
    )
    laws = (summary.get("statistics") or {}).get("scaling_laws")
    if laws:
        return f"Amdahl fit ({fits + '; ' if fits else ''}none where {laws['reason']})"
    return f"Amdahl fit (fitted serial fraction {fits or 'not available: one world size'})"


def variant_specs(variants: dict | None) -> list[tuple]:
    """The Variants section's plot, when the study has variants."""
    if not variants:
        return []
    baseline = variants["baseline"]
    caption = (
        f"Each variant against the baseline ({baseline}, at 1) at the same world size and batch size, paired by "
        "seed: geometric mean with the 95 % interval of the mean log ratio (none below 3 pairs). "
        "Left: images per second; right: how much sooner it reaches the target accuracy. A variant above 1 on the "
        "left but not on the right trains faster per image but needs more epochs to reach the target."
    )
    return [("variant_speed", True, caption, lambda: variant_speed_plot(variants["speed_vs_accuracy"]))]


def prediction_specs(summary: dict) -> list[tuple]:
    """The "Beyond this machine" section's plot, when summary.json holds a prediction."""
    prediction = summary["prediction"]
    if not prediction:
        return []
    caption = (
        "Measured speedup (points, 95 % CI) and the scaling model's prediction per network, dashed, up to "
        f"{prediction['max_world_size']} workers (log2 axes), shaded by its 95 % bootstrap band; faded beyond "
        f"{prediction['extrapolation_factor']}x the largest measured world size: extrapolated, not validated. "
        "Left: every worker keeps the batch the runs used; right: that batch is split over the workers. Each added "
        "worker is assumed to bring its own cores or GPU; the predicted speedup is against the model's one worker."
    )
    return [("prediction", True, caption, lambda: prediction_plot(summary["rows"], prediction))]
