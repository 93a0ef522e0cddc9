"""The report's plots (ddpbench.plots): what they draw, deterministic standalone SVG, safe to inline.

The summary is built as the report's tests build it (schema-valid run dicts -> ddpbench.summary),
through JSON as the report reads it; the page around the plots is tests/test_report.py's.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import pytest
from predictfactory import PREDICT_CONFIG
from runfactory import write_comm, write_grid

from ddpbench import figures, plots, svg
from ddpbench.summary import build_summary

SCHEMA = Path(__file__).resolve().parents[1] / "workflow/schemas/run.schema.json"
PLOTS = {"speedup", "efficiency", "throughput", "accuracy", "time_breakdown", "step_times", "learning_curves"}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Two batch sizes at W = 1, 2, 4 with all-reduce timings at W = 2 and 4: (summary, {name: plot})."""
    tmp = tmp_path_factory.mktemp("predicted")
    paths, expected = write_grid(tmp / "runs", [1, 2, 4], [64, 128], [0, 1])
    summary, _ = build_summary(paths, SCHEMA, expected, PREDICT_CONFIG, comm=write_comm(tmp / "comm", [2, 4]))
    summary = json.loads(json.dumps(summary, allow_nan=False))
    return summary, {p["name"]: p for p in figures.make_plots(summary)}


def test_prediction_plot_continues_the_measured_speedup_per_network(predicted):
    _, made = predicted
    figure = ET.fromstring(made["prediction"]["svg"])
    texts = {"".join(t.itertext()).strip() for t in figure.iter("{http://www.w3.org/2000/svg}text")}
    for label in (
        "network measured here (predicted), batch 64",
        "10GbE (predicted), batch 128",
        "1GbE (predicted), batch 64",
    ):
        assert label in texts
    assert {"measured here, batch 64", "measured here, batch 128", "1024", "ideal (S = W)"} <= texts
    assert "stroke-dasharray" in ET.tostring(figure, encoding="unicode")  # the predicted curves are dashed


def test_plots_are_standalone_svg_the_same_each_time(predicted):
    summary, made = predicted
    assert set(made) == PLOTS | {"prediction"}
    assert {name: p["section"] for name, p in made.items() if p["section"] != "plots"} == {"prediction": "prediction"}
    wide = {"time_breakdown", "step_times", "learning_curves", "prediction"}
    assert {name for name, p in made.items() if p["wide"]} == wide
    for plot in made.values():
        assert ET.fromstring(plot["svg"]).tag == "{http://www.w3.org/2000/svg}svg"
        assert "<dc:date>" not in plot["svg"] and "<metadata>" not in plot["svg"]
    with matplotlib.rc_context(svg.SVG_STYLE):  # as make_plots builds each figure
        again = svg.svg_text(plots.prediction_plot(summary["rows"], summary["prediction"]))
    assert again == made["prediction"]["svg"]  # same summary, same file: clip-path ids included


def test_inline_svg_drops_the_prolog_and_prefixes_ids():
    document = (
        '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n<!DOCTYPE svg>\n'
        '<svg><defs><clipPath id="p1"><rect/></clipPath></defs>'
        '<g clip-path="url(#p1)"><use xlink:href="#p1"/></g></svg>'
    )
    assert svg.inline_svg(document, "speedup") == (
        '<svg><defs><clipPath id="speedup-p1"><rect/></clipPath></defs>'
        '<g clip-path="url(#speedup-p1)"><use xlink:href="#speedup-p1"/></g></svg>'
    )


def test_amdahl_fits_with_and_without_variants():
    plain = {"64": 0.1, "128": None}  # after JSON: batch sizes as strings
    assert plots.amdahl_for(plain, None, 64) == 0.1 and plots.amdahl_for(plain, None, 32) is None
    by_variant = {"fp32": {128: 0.2}, "bf16": {128: 0.3}}  # before JSON: numbers
    assert plots.amdahl_for(by_variant, "bf16", 128) == 0.3 and plots.amdahl_for(by_variant, "other", 128) is None
    assert plots.amdahl_list(plain) == [
        {"variant": None, "batch_size": "64", "f": 0.1},
        {"variant": None, "batch_size": "128", "f": None},
    ]
    assert [(a["variant"], a["f"]) for a in plots.amdahl_list(by_variant)] == [("fp32", 0.2), ("bf16", 0.3)]


def test_legends_name_only_what_differs_between_lines():
    assert plots.group_label((None, 64), [(None, 64)]) == "measured"
    assert plots.group_label((None, 64), [(None, 64), (None, 128)]) == "batch 64"
    assert plots.group_label(("bf16", 64), [("fp32", 64), ("bf16", 64)]) == "bf16"
    assert plots.group_label(("bf16", 64), [("fp32", 128), ("bf16", 64)]) == "bf16, batch 64"
    row = {"variant": None, "batch_size": 64, "world_size": 2}
    assert plots.row_label(row, [(None, 64)]) == "W = 2"
    assert plots.row_label(row, [(None, 64), (None, 128)]) == "W = 2, batch 64"


def test_step_time_plot_has_a_box_per_setting_and_a_dot_per_rank(predicted):
    summary, made = predicted
    figure = ET.fromstring(made["step_times"]["svg"])
    texts = {"".join(t.itertext()).strip() for t in figure.iter("{http://www.w3.org/2000/svg}text")}
    assert {"1", "2", "4", "batch 64", "batch 128", "step time (ms)"} <= texts
    # Two batch sizes at W = 1, 2, 4: six boxes, and 2 x (1 + 2 + 4) rank medians drawn as markers.
    with matplotlib.rc_context(svg.SVG_STYLE):
        fig = plots.step_time_plot(summary["step_distributions"])
    ax = fig.axes[0]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(ax.patches) == 6 and sum(len(d.get_xdata()) for d in dots) == 14
