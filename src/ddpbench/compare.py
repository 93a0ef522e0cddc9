"""Machines (or versions, or settings) side by side, from their studies' bundles (ddpbench.bundle).

    python -m ddpbench.compare A.tar.gz B.tar.gz [C.tar.gz ...] -o compare.html [--csv compare.csv]
        [--reference B.tar.gz] [--history]

One row per (setting, world size, machine), a setting being a variant and batch size of studies
that trained the same model on the same data for the same epochs: each machine's throughput,
speedup, efficiency, accuracy and time to target as its own summary has them, and its throughput
ratio and accuracy difference against the reference machine (the first bundle unless named),
paired by seed where at least three seeds match and unpaired (Welch) otherwise, every test of the
table Holm-corrected together and a cell marked where the corrected test and the minimum effect
(report.min_effect) agree. Each machine's predicted efficiency at 64 and 1,024 workers
comes from its bundle where it has a prediction. Bundles of another model, data or epochs are
named with the reason; a bundle of a study already given (the same study id) is named as its
duplicate; settings that only some machines ran are listed. With --history the bundles are one
machine over time (ddpbench.history).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ddpbench.bundle import Bundle, BundleError, load_bundle
from ddpbench.comparison import ALPHA, MIN_EFFECT, QUANTITIES, SETTING, against_reference, large_enough
from ddpbench.history import history_section
from ddpbench.io import atomic_write_text
from ddpbench.runtable import records, run_row
from ddpbench.stats import (
    CORRECTION,
    DIFFERENCE_TEST,
    MIN_INTERVAL_N,
    RATIO_TEST,
    WELCH_DIFFERENCE_TEST,
    WELCH_RATIO_TEST,
    holm,
)

PREDICTED_AT = (64, 1024)
# Run options that are the run itself, not a setting of the machine or the study.
PER_RUN_OPTIONS = {"seed", "out", "data", "world_size", "batch_size", "per_rank_batch_size", "global_batch_size"}
PER_RUN_OPTIONS |= {"lr_effective", "nnodes", "max_train_samples"}


# What against_reference adds to a row of a machine that is not the reference.
AGAINST_COLUMNS = (
    ["test", "n_pairs"]
    + [
        f"{name}_{kind}{suffix}"
        for name, _, ratio, _ in QUANTITIES
        for kind in ["ratio" if ratio else "diff"]
        for suffix in ("", "_ci95_low", "_ci95_high")
    ]
    + [f"{name}_p" for name, *_ in QUANTITIES]
)


class CompareError(ValueError):
    pass


@dataclass
class Machine:
    label: str
    bundle: Bundle


# --------------------------------------------------------------------------- which bundles compare


def data_fingerprint(run: dict) -> str:
    """The data a run trained on: its source, sample counts and (where recorded) its files' hashes."""
    data = run["dataset"]
    text = f"{data['source']}, {data['train_samples_used']} + {data['test_samples']} images"
    files = data.get("files") or {}
    if files:
        digest = hashlib.sha256("".join(f["sha256"] for _, f in sorted(files.items())).encode()).hexdigest()
        text += f" (files {digest[:12]})"
    return text


def study_facts(bundle: Bundle) -> dict[str, str]:
    """What must agree for two studies to be compared: model, data and epochs (each as text)."""
    facts = {
        "model": {f"{run['model']['name']} ({run['model']['parameters']:,} parameters)" for run in bundle.runs},
        "data": {data_fingerprint(run) for run in bundle.runs},
        "epochs": {str(run["config"]["epochs"]) for run in bundle.runs},
    }
    return {key: "; ".join(sorted(values)) for key, values in facts.items()}


def choose_reference(bundles: list[Bundle], reference: str | None) -> int:
    if reference is None:
        return 0
    found = [i for i, b in enumerate(bundles) if reference in (str(b.path), b.path.name, b.name)]
    if len(found) > 1:
        raise CompareError(f"compare.reference {reference!r} names {len(found)} of the bundles: give its path")
    if not found:
        raise CompareError(f"compare.reference {reference!r} is none of the bundles; name one (its path or file)")
    return found[0]


def select(bundles: list[Bundle], reference: str | None) -> tuple[list[Machine], list[dict]]:
    """The machines to compare (the reference first) and the bundles left out, each with its reason."""
    if len(bundles) < 2:
        raise CompareError("compare needs at least two bundles (compare.bundles, or two files on the command line)")
    ref = bundles[choose_reference(bundles, reference)]
    ordered = [ref, *(b for b in bundles if b is not ref)]
    seen: dict[str, Bundle] = {}
    kept, left_out = [], []
    ref_facts = study_facts(ref)
    for bundle in ordered:
        if bundle.study_id in seen:
            left_out.append(
                {"bundle": str(bundle.path), "reason": f"a duplicate of {seen[bundle.study_id].path} (the same study)"}
            )
            continue
        seen[bundle.study_id] = bundle
        differ = [
            f"{key}: {value} against {ref_facts[key]}"
            for key, value in study_facts(bundle).items()
            if value != ref_facts[key]
        ]
        if differ:
            reason = f"not comparable with {ref.path}: " + "; ".join(differ)
            left_out.append({"bundle": str(bundle.path), "reason": reason})
        else:
            kept.append(bundle)
    if len(kept) < 2:
        reasons = "; ".join(f"{d['bundle']}: {d['reason']}" for d in left_out)
        raise CompareError(f"fewer than two comparable bundles: {reasons}")
    labels = unique_labels([b.path for b in kept])
    return [Machine(label, bundle) for label, bundle in zip(labels, kept, strict=True)], left_out


def unique_labels(paths: list[Path]) -> list[str]:
    """Each bundle's file name without .tar.gz; where names collide (every study writes
    results/bundle.tar.gz), as many parent folders as tell them apart, results/ left out."""

    def label(path: Path, depth: int) -> str:
        parts = [p for p in Path(path).resolve().parent.parts[1:] if p != "results"][-depth:] if depth else []
        return "/".join([*parts, Path(path).name.removesuffix(".gz").removesuffix(".tar")])

    depth = 0
    while len({label(p, depth) for p in paths}) < len(paths) and depth < 32:
        depth += 1
    labels = [label(p, depth) for p in paths]
    return [f"{name} ({i + 1})" if labels.count(name) > 1 else name for i, name in enumerate(labels)]


# --------------------------------------------------------------------------- the tables


def runs_frame(machines: list[Machine]) -> pd.DataFrame:
    """One row per run of every machine. A study's baseline variant is its main setting, "": it
    meets a study without variants, or another study's baseline of another name (the machine
    table shows where their options differ)."""
    rows = []
    for m in machines:
        for run in m.bundle.runs:
            row = {"machine": m.label, **run_row(run), "variant_name": run["_variant"]}
            row["variant"] = "" if run["_variant"] == m.bundle.baseline else run["_variant"]
            rows.append(row)
    df = pd.DataFrame(rows)
    df["time_to_target_s"] = df.time_to_target_s.astype(float)
    return df


def summary_row(machine: Machine, variant: str, batch_size: int, world_size: int) -> dict:
    variant = variant or machine.bundle.baseline  # the setting's name in this machine's own study
    for row in machine.bundle.summary["rows"]:
        if ((row["variant"] or ""), row["batch_size"], row["world_size"]) == (variant, batch_size, world_size):
            return row
    return {}


def predicted_efficiency(machine: Machine, variant: str, batch_size: int) -> dict:
    """The bundle's predicted efficiency at PREDICTED_AT for this setting (its own network, its runs'
    batch mode); None where it made no prediction for it."""
    prediction = machine.bundle.summary.get("prediction") or {}
    out = {f"predicted_efficiency_at_{w}": None for w in PREDICTED_AT}
    if variant:  # the prediction is the baseline's
        return out
    for curve in prediction.get("curves") or []:
        own = curve["network"] == "measured" and curve["batch_mode"] == curve["runs_batch_mode"]
        if own and curve["batch_size"] == batch_size:
            for w in PREDICTED_AT:
                if w in curve["world_sizes"]:
                    out[f"predicted_efficiency_at_{w}"] = curve["efficiency"][curve["world_sizes"].index(w)]
    return out


def own_figures(machine: Machine, group: pd.DataFrame) -> dict:
    """One machine's figures for one setting, as its own summary has them."""
    variant, batch_size, world_size = (group[k].iloc[0] for k in SETTING)
    row = summary_row(machine, variant, batch_size, world_size)
    keys = ("throughput_mean_img_s", "speedup_mean", "speedup_ci95_low", "speedup_ci95_high", "efficiency_mean")
    keys += ("efficiency_ci95_low", "efficiency_ci95_high", "test_acc_mean", "test_acc_ci95_low", "test_acc_ci95_high")
    keys += ("time_to_target_mean_s", "n_reached_target", "threads_per_worker")
    return {
        "variant_name": group.variant_name.iloc[0],
        "n_runs": len(group),
        "seeds": sorted(int(s) for s in group.seed),
        **{key: row.get(key) for key in keys},
        **predicted_efficiency(machine, variant, batch_size),
    }


def compare_table(machines: list[Machine], runs: pd.DataFrame, min_effect: dict | None = None) -> pd.DataFrame:
    """The comparison's rows: one per setting, world size and machine (the reference's first)."""
    min_effect = {**MIN_EFFECT, **(min_effect or {})}
    reference = machines[0].label
    rows = []
    for key, setting in runs.groupby(SETTING, sort=True):
        ref = setting[setting.machine == reference]
        for machine in machines:
            group = setting[setting.machine == machine.label]
            if group.empty:
                continue
            row = dict(zip(SETTING, key, strict=True)) | {"machine": machine.label, "reference": reference}
            row |= own_figures(machine, group)
            if machine.label != reference and not ref.empty:
                row |= against_reference(group, ref)
            rows.append(row)
    table = pd.DataFrame(rows)
    for column in AGAINST_COLUMNS:  # none where no machine shares a setting with the reference
        if column not in table:
            table[column] = None if column == "test" else math.nan
    return mark(table, min_effect)


def mark(table: pd.DataFrame, min_effect: dict) -> pd.DataFrame:
    """Holm's correction across every test of the table, and each cell's mark and direction."""
    columns = [f"{name}_p" for name, *_ in QUANTITIES]
    p = table[columns].to_numpy(float)
    adjusted = holm(p.ravel()).reshape(p.shape)
    for i, (name, _, ratio, key) in enumerate(QUANTITIES):
        effect = table[f"{name}_{'ratio' if ratio else 'diff'}"].astype(float)
        table[f"{name}_p_holm"] = adjusted[:, i]
        marked = (table[f"{name}_p_holm"] < ALPHA) & large_enough(effect, ratio, min_effect[key])
        up = effect > 1 if ratio else effect > 0
        table[f"{name}_marked"] = np.where(marked, np.where(up, "higher", "lower"), "")
    return table


def partial_settings(runs: pd.DataFrame, machines: list[Machine]) -> list[dict]:
    """The settings (and world sizes) that only some of the machines ran."""
    labels = [m.label for m in machines]
    out = []
    for key, group in runs.groupby(SETTING, sort=True):
        present = [m for m in labels if m in set(group.machine)]
        if len(present) < len(labels):
            missing = [m for m in labels if m not in present]
            out.append(dict(zip(SETTING, key, strict=True)) | {"in": present, "missing_from": missing})
    return out


def option_values(runs: list[dict], key: str, world_sizes: set[int]) -> str:
    """A run option as the machine table shows it: its values over the runs at the world sizes
    every machine ran, by world size where they differ between them (threads per rank with auto)."""
    by_ws: dict[int, set[str]] = {}
    for run in runs:
        if run["config"]["world_size"] in world_sizes and key in run["config"]:
            by_ws.setdefault(run["config"]["world_size"], set()).add(repr(run["config"][key]))
    if not by_ws:
        return "–"
    texts = {w: ", ".join(sorted(v)) for w, v in sorted(by_ws.items())}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"W = {w}: {t}" for w, t in texts.items())


def machine_table(machines: list[Machine]) -> list[dict]:
    """One row per identity field and per run option that is not the run itself: each machine's value
    ("–" where it records none), and whether they differ (the page highlights those)."""

    def shown(value) -> str:
        return ", ".join(map(str, value)) if isinstance(value, list) else ("–" if value is None else str(value))

    keys = sorted({k for m in machines for k in m.bundle.manifest["machine"]})
    rows = [(key, [shown(m.bundle.manifest["machine"].get(key)) for m in machines]) for key in keys]
    common = set.intersection(*({r["config"]["world_size"] for r in m.bundle.runs} for m in machines))
    options = sorted({k for m in machines for run in m.bundle.runs for k in run["config"]} - PER_RUN_OPTIONS)
    rows += [(f"train.{key}", [option_values(m.bundle.runs, key, common) for m in machines]) for key in options]
    return [{"field": key, "values": values, "differs": len(set(values)) > 1} for key, values in rows]


def method(n_tests: int, min_effect: dict) -> dict:
    return {
        "paired_ratio_test": RATIO_TEST,
        "paired_difference_test": DIFFERENCE_TEST,
        "unpaired_ratio_test": WELCH_RATIO_TEST,
        "unpaired_difference_test": WELCH_DIFFERENCE_TEST,
        "pairing": f"by seed where at least {MIN_INTERVAL_N} seeds match the reference's, otherwise unpaired",
        "correction": CORRECTION,
        "alpha": ALPHA,
        "min_effect": min_effect,
        "n_tests": n_tests,
    }


def comparison(
    bundles: list[Bundle], reference: str | None = None, history: bool = False, effect: dict | None = None
) -> dict:
    """Everything the page and the CSV show."""
    effect = {**MIN_EFFECT, **(effect or {})}
    machines, left_out = select(bundles, reference)
    runs = runs_frame(machines)
    table = compare_table(machines, runs, effect)
    n_tests = int(np.count_nonzero(~np.isnan(table[[f"{n}_p" for n, *_ in QUANTITIES]].to_numpy(float))))
    return {
        "reference": machines[0].label,
        "machines": [
            {"label": m.label, "study_id": m.bundle.study_id, "started_utc": m.bundle.manifest["started_utc"]}
            for m in machines
        ],
        "machine_table": machine_table(machines),
        "left_out": left_out,
        "rows": records(table),
        "partial_settings": partial_settings(runs, machines),
        "method": method(n_tests, effect),
        "history": history_section(machines, runs, effect["throughput"]) if history else None,
    }


def csv_text(result: dict) -> str:
    table = pd.DataFrame(result["rows"])
    table["seeds"] = table.seeds.map(lambda s: " ".join(map(str, s)))
    return table.to_csv(index=False)


def main(argv: list[str] | None = None) -> int:
    from ddpbench.comparepage import render

    p = argparse.ArgumentParser(prog="python -m ddpbench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", type=Path, nargs="*", help="bundle.tar.gz files of the studies (two or more)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the HTML page to write")
    p.add_argument("--csv", type=Path, help="the table as CSV (default: beside --out, .csv)")
    p.add_argument("--reference", help="the bundle the others are compared with (default: the first)")
    p.add_argument("--history", action="store_true", help="the bundles are one machine over time: find steps")
    throughput, points = MIN_EFFECT["throughput"], MIN_EFFECT["accuracy_points"]
    p.add_argument("--min-effect-throughput", type=float, default=throughput, help="marked from 1 + this, or 1 / it")
    p.add_argument("--min-effect-accuracy", type=float, default=points, help="marked from this many points")
    args = p.parse_args(argv)
    effect = {"throughput": args.min_effect_throughput, "accuracy_points": args.min_effect_accuracy}
    try:
        result = comparison([load_bundle(path) for path in args.bundles], args.reference, args.history, effect)
    except (BundleError, CompareError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        atomic_write_text(args.csv or args.out.with_suffix(".csv"), csv_text(result))
        atomic_write_text(args.out, render(result))
    except OSError as err:
        print(f"error: cannot write the comparison: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} and {args.csv or args.out.with_suffix('.csv')}: {len(result['machines'])} machines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
