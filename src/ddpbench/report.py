"""Render the scaling study as one self-contained HTML file: tables, inline SVG plots, no scripts.

    python -m ddpbench.report --summary results/summary.json --config results/config.json \
        --logs-dir logs/train --out results/report.html [--plots-dir results/plots]

It only renders: every number, curve and fact comes from summary.json (python -m ddpbench.summary);
the workflow config is shown as it is, and the logs folder gives the links.
The page opens from disk with no network: CSS is inline, plots are matplotlib SVG inserted as
markup, and every other value goes through jinja2's autoescaping.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import jinja2
import yaml

from ddpbench.figures import make_plots
from ddpbench.io import atomic_write_text
from ddpbench.plots import BATCH_MODE_WORDS, amdahl_list, by_group
from ddpbench.runs import VARIANT_NAME, load_config, run_name
from ddpbench.svg import inline_svg

TEMPLATE = "report.html.j2"
# Predicted efficiency is tabled at these world sizes (those up to predict.max_world_size).
TABLED_WORLD_SIZES = (8, 64, 256, 1024)
# Network names reach the prediction plot's legend: held, like variant names, to plain text.
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_. -]*")
# What the page reads from summary.json; an older summary lacks some of it.
SUMMARY_KEYS = (
    "generated_utc",
    "definitions",
    "rows",
    "runs",
    "missing_runs",
    "amdahl_serial_fraction",
    "headlines",
    "learning_curves",
    "machine",
    "method",
    "overlaps",
    "period",
    "shared_run_config",
    "resource_model",
    "variants",
    "prediction",
    "prediction_reason",
    "speedup_unpaired",
    "statistics",
    "utilisation",
)
# --------------------------------------------------------------------------- inputs


class ReportError(ValueError):
    pass


def load_summary(path: Path) -> dict:
    """summary.json as aggregation wrote it; one without the report's keys is refused."""
    summary = json.loads(Path(path).read_text())
    lacking = [key for key in SUMMARY_KEYS if key not in summary]
    if lacking:
        raise ReportError(
            f"{path} lacks {', '.join(lacking)}: it was written by an older ddpbench; "
            "rerun python -m ddpbench.summary (with snakemake: delete the file and run snakemake again)"
        )
    bad = [name for name in (summary["variants"] or {}).get("names", []) if not VARIANT_NAME.fullmatch(name)]
    if bad:
        raise ReportError(f"{path}: variant name {bad[0]!r} is not a safe name; rerun python -m ddpbench.summary")
    networks = [name for name in (summary["prediction"] or {}).get("networks", {}) if not NETWORK_NAME.fullmatch(name)]
    if networks:
        raise ReportError(
            f"{path}: network name {networks[0]!r} is not a safe name (letters, digits, '_', '.', '-', spaces); "
            "rename it in predict.networks and rerun python -m ddpbench.summary"
        )
    return summary


def full_name(d: dict) -> str:
    """The run's name as its files are named: <variant>/ws<W>_bs<B>_seed<S> with variants."""
    return run_name(int(d["world_size"]), int(d["batch_size"]), int(d["seed"]), d.get("variant"))


def log_link(logs_dir: Path | None, out: Path, name: str) -> str | None:
    """Relative to the report's folder, so the pair can be moved or archived together."""
    if logs_dir is None:
        return None
    target = Path(logs_dir) / f"{name}.log"
    return Path(os.path.relpath(target.resolve(), out.resolve().parent)).as_posix()


def run_rows(summary: dict, logs_dir: Path | None, out: Path) -> list[dict]:
    """summary.json's per-run rows with their log links."""
    return [
        {
            **r,
            "name": full_name(r),
            "hosts": r["hostnames"].replace(",", ", "),
            "log": log_link(logs_dir, out, full_name(r)),
        }
        for r in summary["runs"]
    ]


def missing_rows(summary: dict, logs_dir: Path | None, out: Path) -> list[dict]:
    return [
        {"variant": None, **m, "name": full_name(m), "log": log_link(logs_dir, out, full_name(m))}
        for m in summary["missing_runs"]
    ]


# --------------------------------------------------------------------------- rendering


def fmt(value: object, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def when(stamp: str | None) -> str:
    """ISO-8601 UTC stamp (utc_now) as "2026-01-31 12:00:00 UTC"."""
    return "–" if not stamp else stamp.replace("T", " ").replace("+00:00", " UTC")


def listing(values: list, spec: str = "") -> str:
    """summary.json's lists of distinct values (a field where runs differed has several) as text."""
    return ", ".join(format(v, spec) for v in values) if values else "–"


def raw(value: object) -> str:
    """Exact machine-readable value for data-value attributes; repr round-trips a float."""
    return "" if value is None else repr(value)


def shows_scaling_laws(summary: dict) -> bool:
    """Whether the study tables show Karp-Flatt and the Amdahl fit: not when every variant held the
    cores fixed (summary.json's statistics.scaling_laws names those left out, and why)."""
    laws = summary["statistics"]["scaling_laws"]
    names = (summary["variants"] or {}).get("names") or [None]
    return not laws or not set(names) <= set(laws["left_out"])


def study_tables(rows: list[dict]) -> list[dict]:
    """The scaling tables: one per (variant, batch size), its rows by world size."""
    return [{"variant": v, "batch_size": bs, "rows": g} for (v, bs), g in by_group(rows).items()]


def prediction_table(prediction: Mapping | None) -> dict | None:
    """Predicted efficiency at TABLED_WORLD_SIZES (those predicted), one row per curve of summary.json's
    prediction (batch configuration, network, batch mode); a world size a curve lacks is None."""
    if not prediction:
        return None
    sizes = [w for w in TABLED_WORLD_SIZES if w <= prediction["max_world_size"]]
    rows = []
    for curve in prediction["curves"]:
        at = {
            w: {
                "world_size": w,
                "value": curve["efficiency"][i],
                "low": curve["efficiency_ci95_low"][i],
                "high": curve["efficiency_ci95_high"][i],
                "extrapolated": curve["extrapolated"][i],
                "exceeds": curve["global_batch_exceeds_train_set"][i],
            }
            for i, w in enumerate(curve["world_sizes"])
        }
        empty = {"value": None, "low": None, "high": None, "extrapolated": False, "exceeds": False}
        rows.append({**curve, "cells": [at.get(w, {"world_size": w, **empty}) for w in sizes]})
    return {"world_sizes": sizes, "rows": rows, "several_batches": len({r["batch_size"] for r in rows}) > 1}


@functools.cache  # one per process: compiling the templates took 0.4 s of each page
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ddpbench", "templates"),
        autoescape=True,  # every value is text unless this module marks it (the SVG) safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["raw"] = raw
    env.filters["when"] = when
    env.filters["listing"] = listing
    return env


def render(
    summary: dict,
    config: dict | None = None,
    logs_dir: Path | None = None,
    out: Path = Path("report.html"),
    plots: list[dict] | None = None,
) -> str:
    """The page for summary.json's content; ``config`` (the workflow's) is shown when given."""
    plots = make_plots(summary) if plots is None else plots
    shown_config = config if config is not None else summary["shared_run_config"]
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            summary=summary,
            tables=study_tables(summary["rows"]),
            amdahl=amdahl_list(summary.get("amdahl_serial_fraction") or {}),
            stats=summary["statistics"],
            laws=shows_scaling_laws(summary),
            config_source="workflow config"
            if config is not None
            else "options shared by every run (no --config given)",
            config_text=yaml.safe_dump(shown_config, sort_keys=False, default_flow_style=False, allow_unicode=True),
            runs=run_rows(summary, logs_dir, out),
            missing=missing_rows(summary, logs_dir, out),
            facts=summary["method"],
            plots=[{**p, "markup": inline_svg(p["svg"], p["name"])} for p in plots],
            prediction=summary["prediction"],
            prediction_table=prediction_table(summary["prediction"]),
            batch_mode_words=BATCH_MODE_WORDS,
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpbench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--summary", type=Path, required=True, help="summary.json from python -m ddpbench.summary")
    p.add_argument("--config", type=Path, help="the workflow's resolved config (YAML or JSON) to show")
    p.add_argument(
        "--logs-dir", type=Path, help="folder of ws<W>_bs<B>_seed<S>.log (with variants <variant>/...) files to link to"
    )
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.add_argument("--plots-dir", type=Path, help="also write each plot as <name>.svg here")
    args = p.parse_args(argv)
    try:
        summary = load_summary(args.summary)
        config = load_config(args.config)
    except (ReportError, OSError, ValueError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    plots = make_plots(summary)
    atomic_write_text(args.out, render(summary, config, args.logs_dir, args.out, plots))
    if args.plots_dir is not None:
        for plot in plots:
            atomic_write_text(args.plots_dir / f"{plot['name']}.svg", plot["svg"])
    print(f"wrote {args.out}" + (f" and {len(plots)} plots in {args.plots_dir}" if args.plots_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
