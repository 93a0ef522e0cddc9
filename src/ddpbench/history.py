"""One machine over time (compare.history): the bundles in the order their runs started, and per
setting (variant, batch size, world size) a step between consecutive bundles flagged as a
regression or an improvement where the change is larger than the run-to-run noise and a test says
so. The method, named on the page: each pair of consecutive bundles is compared as two machines are
(ddpbench.comparison.against_reference: paired by seed where enough seeds match, else Welch's
t-test of the log throughputs), every step's test Holm-corrected together, and a step flagged
where the corrected p-value is below ALPHA and the throughput ratio is further from 1 than both
report.min_effect's throughput share and the setting's run-to-run noise (the median over the
bundles of the coefficient of variation of its runs' throughputs). A series plot shows each
setting's throughput per bundle with its 95 % interval, flagged steps marked."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ddpbench.comparison import ALPHA, MIN_EFFECT, SETTING, against_reference
from ddpbench.stats import geometric_mean_interval, holm
from ddpbench.svg import svg_text

STEP_COLOURS = {True: "#b91c1c", False: "#15803d"}  # a regression red, an improvement green
STEP_VERDICTS = ("regression", "improvement")
METHOD = (
    "consecutive bundles (ordered by their runs' first start) compared as two machines are: paired t-test of the "
    "log throughputs where at least 3 seeds match, else Welch's t-test of the logs; every step's p-value "
    f"Holm-corrected together; a step is flagged where the corrected p-value is below {ALPHA} and the throughput "
    "ratio is further from 1 than both report.min_effect's throughput share and the setting's run-to-run noise "
    "(the median over bundles of the coefficient of variation of its runs' throughputs)"
)


def point(label: str, group: pd.DataFrame) -> dict:
    """One bundle's throughput in one setting: the geometric mean of its runs, with the t interval
    of their mean log (exponentiated); and the runs' coefficient of variation."""
    values = group.throughput_img_s.to_numpy(float)
    estimate = geometric_mean_interval(values)
    cv = float(np.std(values, ddof=1) / np.mean(values)) if len(values) > 1 else math.nan
    return {"machine": label, "throughput": estimate.value, "low": estimate.low, "high": estimate.high, "cv": cv}


def setting_series(key: tuple, setting: pd.DataFrame, order: list[str]) -> dict:
    present = [label for label in order if label in set(setting.machine)]
    points = [point(label, setting[setting.machine == label]) for label in present]
    noise = float(np.nanmedian([p["cv"] for p in points])) if any(math.isfinite(p["cv"]) for p in points) else 0.0
    steps = []
    for before, after in zip(present, present[1:], strict=False):
        test = against_reference(setting[setting.machine == after], setting[setting.machine == before])
        steps.append({"before": before, "after": after, **test})
    return dict(zip(SETTING, key, strict=True)) | {"points": points, "noise_cv": noise, "steps": steps}


def flag_steps(series: list[dict], min_effect: float) -> None:
    """Holm across every step of every setting, then each step's verdict ('' when none)."""
    steps = [step for s in series for step in s["steps"]]
    adjusted = holm([step["throughput_p"] for step in steps])
    i = 0
    for s in series:
        threshold = max(math.log1p(min_effect), math.log1p(s["noise_cv"]) if math.isfinite(s["noise_cv"]) else 0.0)
        for step in s["steps"]:
            step["throughput_p_holm"] = float(adjusted[i])
            i += 1
            ratio = step["throughput_ratio"]
            big = math.isfinite(ratio) and ratio > 0 and abs(math.log(ratio)) > threshold
            significant = step["throughput_p_holm"] < ALPHA
            if math.isnan(step["throughput_p"]):
                step["verdict"] = "untested"  # fewer than MIN_INTERVAL_N runs on a side
            else:
                step["verdict"] = ("improvement" if ratio > 1 else "regression") if big and significant else ""


def history_plot(series: list[dict], order: list[str]) -> Figure:
    """Throughput per bundle (1 = the earliest), one line per setting, flagged steps marked."""
    fig = Figure(figsize=(7.2, 3.6))
    ax = fig.subplots()
    position = {label: i + 1 for i, label in enumerate(order)}
    for s in series:
        x = [position[p["machine"]] for p in s["points"]]
        y = np.array([p["throughput"] for p in s["points"]], dtype=float)
        low = np.array([p["low"] for p in s["points"]], dtype=float)
        high = np.array([p["high"] for p in s["points"]], dtype=float)
        errors = np.nan_to_num(np.vstack([y - low, high - y]), nan=0.0)
        label = f"{s['variant'] or 'baseline'}, bs {s['batch_size']}, W = {s['world_size']}"
        ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=label)
        flagged = [(position[st["after"]], st["verdict"]) for st in s["steps"] if st["verdict"] in STEP_VERDICTS]
        for xf, verdict in flagged:
            yf = y[x.index(xf)]
            regression = verdict == "regression"
            ax.plot([xf], [yf], marker="v" if regression else "^", markersize=11, color=STEP_COLOURS[regression])
    ax.set_xticks(range(1, len(order) + 1))
    ax.set_xlabel("bundle, in the order its runs started (the table names each)")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("Throughput per bundle, flagged steps marked")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def history_section(machines: list, runs: pd.DataFrame, min_effect: float = MIN_EFFECT["throughput"]) -> dict:
    """The bundles' order, each setting's series and steps, the method and the plot's SVG."""
    order = [m.label for m in sorted(machines, key=lambda m: m.bundle.manifest["started_utc"])]
    series = [setting_series(key, setting, order) for key, setting in runs.groupby(SETTING, sort=True)]
    flag_steps(series, min_effect)
    return {
        "order": [{"position": i + 1, "machine": label} for i, label in enumerate(order)],
        "series": series,
        "method": METHOD,
        "plot_svg": svg_text(history_plot(series, order)),
    }
