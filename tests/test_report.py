"""The HTML report: its numbers are summary.json's, user text is escaped, a partial grid still reports.
(What the plots draw: tests/test_plots.py.)

Inputs are built here (schema-valid run dicts -> ddpbench.summary -> summary.json), not copied from a
real run, so the tests run anywhere; the schema check keeps the fixture honest. The report reads
nothing but summary.json (and the config it shows).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest
from predictfactory import PREDICT_CONFIG
from runfactory import make_run, write_comm, write_grid

from ddpbench import report
from ddpbench.summary import build_summary as aggregate

SCHEMA = Path(__file__).resolve().parents[1] / "workflow/schemas/run.schema.json"
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PLOTS = {"speedup", "efficiency", "throughput", "accuracy", "time_breakdown", "step_times", "learning_curves"}
# Cells shown in other units than summary.json's: percentages of a relative error, milliseconds.
SCALES = {
    "step_time_rel_error": 100,
    "speedup_rel_error": 100,
    "measured_step_time_s": 1000,
    "predicted_step_time_s": 1000,
    "warmup_share_first_epoch": 100,
    "step_cv_within_run": 100,
    "throughput_cv_between_runs": 100,
}


def summary_json(paths, expected) -> dict:
    """summary.json's content as the report reads it: through JSON (string keys, NaN as null)."""
    summary, _ = aggregate(paths, SCHEMA, expected)
    return json.loads(json.dumps(summary, allow_nan=False))


def build_report(tmp: Path, skip=((4, 128, 1),), plots=None, **run_kwargs) -> tuple[str, dict, Path]:
    """A two-batch-size grid with one missing run: (html, summary, report path). ``plots=[]`` leaves
    them out, for a test of the text: drawing them is 1.5 s of a page, and test_plots checks them."""
    paths, expected = write_grid(tmp / "results/runs", [1, 2, 4], [64, 128], [0, 1], skip=skip, **run_kwargs)
    summary = summary_json(paths, expected)
    out = tmp / "results/report.html"
    html = report.render(summary, None, tmp / "logs/train", out, plots=plots)
    out.write_text(html)
    return html, summary, out


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return build_report(tmp_path_factory.mktemp("grid"))


@pytest.fixture(scope="module")
def xss(tmp_path_factory):
    """Through the CLI, with a hostile hostname, model name and config value."""
    tmp = tmp_path_factory.mktemp("xss")
    paths, expected = write_grid(tmp / "runs", [1, 2], [128], [0, 1], hostname=f"host{XSS}", model=f"cnn{XSS}")
    summary, _ = aggregate(paths, SCHEMA, expected)
    (tmp / "summary.json").write_text(json.dumps(summary))
    (tmp / "config.yaml").write_text(f"train:\n  note: '{XSS}'\n  epochs: 3\ngrid:\n  seeds: [0, 1]\n")
    out = tmp / "report.html"
    rc = report.main(
        [
            "--summary",
            str(tmp / "summary.json"),
            "--config",
            str(tmp / "config.yaml"),
            "--out",
            str(out),
            "--plots-dir",
            str(tmp / "plots"),
        ]
    )
    assert rc == 0
    return out.read_text(), summary, tmp


# --------------------------------------------------------------------------- reading the HTML back


class Cells(HTMLParser):
    """Every data-col element with its value and shown text, grouped by the enclosing <tr> (or
    <div>/<li> with data- keys) and by the table class."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []  # {"table": cls, "attrs": tr attrs, "cells": {col: [(value, text)]}}
        self.table = None
        self.open_cell = None
        self.text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs.get("class")
        elif tag == "tr":
            self.rows.append({"table": self.table, "attrs": attrs, "cells": {}})
        elif tag == "span" and "data-col" in attrs:
            self.open_cell = (attrs["data-col"], attrs["data-value"])
            self.text = []

    def handle_data(self, data):
        if self.open_cell:
            self.text.append(data)

    def handle_endtag(self, tag):
        if tag == "span" and self.open_cell:
            col, value = self.open_cell
            if self.rows and self.table:
                self.rows[-1]["cells"].setdefault(col, []).append((value, "".join(self.text)))
            self.open_cell = None
        elif tag == "table":
            self.table = None


def parse(html: str) -> list[dict]:
    parser = Cells()
    parser.feed(html)
    return parser.rows


def assert_shown(col: str, value, text: str) -> None:
    """The shown text is the value, rounded as displayed (efficiencies as percentages)."""
    if value is None:
        assert text == "–", (col, text)
        return
    base = col.removesuffix("_ci95_low").removesuffix("_ci95_high")
    scale = 100 if col.startswith("efficiency") else SCALES.get(base, 1)
    decimals = len(text.split(".")[1]) if "." in text else 0
    assert abs(float(text) - value * scale) <= 0.5 * 10**-decimals + 1e-9, (col, value, text)


def check_cells(cells: dict, expected: dict) -> int:
    checked = 0
    for col, found in cells.items():
        for value, text in found:
            want = expected[col]
            assert (value == "") == (want is None), (col, value, want)
            if want is not None:
                assert float(value) == want, (col, value, want)  # repr round-trips: exact
            assert_shown(col, want, text)
            checked += 1
    return checked


# --------------------------------------------------------------------------- tests


def test_fixture_runs_match_the_run_schema():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    for ws, bs, seed in [(1, 64, 0), (2, 128, 1), (4, 128, 0)]:
        validator.validate(make_run(ws, bs, seed))


def test_study_table_numbers_equal_summary(grid):
    html, summary, _ = grid
    study = {
        (int(r["attrs"]["data-world-size"]), int(r["attrs"]["data-batch-size"])): r["cells"]
        for r in parse(html)
        if r["table"] == "study" and "data-world-size" in r["attrs"]
    }
    expected = {(r["world_size"], r["batch_size"]): r for r in summary["rows"]}
    assert study.keys() == expected.keys()
    for key, cells in study.items():
        for col in (
            "world_size",
            "n_seeds",
            "train_time_mean_s",
            "train_time_std_s",
            "speedup_mean",
            "efficiency_mean",
            "test_acc_mean",
            "throughput_mean_img_s",
            "time_to_target_mean_s",
        ):
            assert col in cells, (key, col)
        # Two seeds: values, no t(1) interval, and the cores were fixed: no Karp-Flatt.
        assert "speedup_ci95_low" not in cells and "karp_flatt" not in cells
        assert check_cells(cells, expected[key]) >= 10
    assert html.count('<table class="study"') == 2  # one per batch size
    study = section(html, "study")
    assert "n = 2: no interval" in study and "n = 1: no interval" in study  # W = 4, batch 128 has one seed
    assert "geometric mean [95 % CI] n" in study and "Karp–Flatt<span" not in study


def test_with_the_cores_fixed_karp_flatt_and_amdahl_are_not_shown_and_the_page_says_why(grid):
    html, summary, _ = grid
    assert summary["statistics"]["scaling_laws"]["left_out"] == [None]
    why = re.search(r'<p id="no-scaling-laws">(.*?)</p>', html, re.S)
    assert why and "already used every core" in why[1]
    assert 'data-col="amdahl_serial_fraction"' not in html and 'data-col="karp_flatt"' not in html
    assert "Amdahl fit, f =" not in html  # no fitted line in the speedup plot's legend


def test_headline_and_amdahl_equal_summary(grid):
    html, summary, _ = grid
    rows = [r for r in summary["rows"] if r["batch_size"] == 128]
    best = max(rows, key=lambda r: r["speedup_mean"])
    largest, base = rows[-1], rows[0]
    section = html[html.index('<div class="cards" data-batch-size="128"') :]
    section = section[: section.index("</div>\n  </div>")]
    values = dict(re.findall(r'data-col="(\w+)" data-value="([^"]*)"', section))
    assert float(values["best_speedup"]) == best["speedup_mean"]
    assert int(values["best_ws"]) == best["world_size"]
    assert float(values["efficiency_largest"]) == largest["efficiency_mean"]
    # Paired by seed: W = 4 has only seed 0 at batch 128, so the change is seed 0's, -4 points (the means of
    # all seeds at each end would say -4.5), with n = 1 and no interval.
    h = next(h for h in summary["headlines"] if h["batch_size"] == 128)
    assert float(values["acc_change"]) == h["acc_change"] == pytest.approx(-4.0)
    assert largest["test_acc_mean"] - base["test_acc_mean"] == pytest.approx(-4.5)
    assert "n = 1: no interval" in section and "paired by seed" in section
    assert "acc_change_ci95_low" not in values and "best_speedup_ci95_low" not in values  # two seeds at most


def test_runs_table_and_missing_run_listed(grid):
    html, summary, _ = grid
    runs = {
        r["attrs"]["data-run"]: r["cells"] for r in parse(html) if r["table"] == "runs" and "data-run" in r["attrs"]
    }
    expected = {f"ws{r['world_size']}_bs{r['batch_size']}_seed{r['seed']}": r for r in summary["runs"]}
    assert runs.keys() == expected.keys() and len(runs) == 11
    for name, cells in runs.items():
        check_cells(cells, expected[name])  # start-up too: summary.json has it per run
    assert summary["missing_runs"] == [{"world_size": 4, "batch_size": 128, "seed": 1}]
    missing = html[html.index('<ul class="missing-runs">') :]
    assert '<li data-run="ws4_bs128_seed1">' in missing[: missing.index("</ul>")]
    assert 'id="no-missing"' not in html


def test_log_links_are_relative_to_the_report(grid):
    html, _, out = grid
    assert 'href="../logs/train/ws1_bs64_seed0.log"' in html
    assert 'href="../logs/train/ws4_bs128_seed1.log"' in html  # the missing run's log may say why
    assert (out.parent / "../logs/train/ws1_bs64_seed0.log").resolve() == out.parents[
        1
    ] / "logs/train/ws1_bs64_seed0.log"


def test_every_plot_is_inline_svg_and_nothing_external(grid):
    html, _, _ = grid
    figures = re.findall(r'<figure id="plot-(\w+)"[^>]*>\s*<svg\b', html)
    assert set(figures) == PLOTS and html.count("<svg") == len(PLOTS)
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert not re.search(r"<(script|link|img|iframe|object)\b|@import|\bsrc=|url\(\s*['\"]?(https?:|//)", html, re.I)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "inline SVGs must not share element ids"


def test_hostile_text_is_escaped(xss):
    html, _, _ = xss
    assert "<script" not in html.lower()
    assert html.count(XSS_ESCAPED) >= 3  # hostname (machine, runs table), model name, config value
    assert f"host{XSS_ESCAPED}" in html and f"cnn{XSS_ESCAPED}" in html
    assert "note: &#39;" + XSS_ESCAPED in html or "note: " + XSS_ESCAPED in html


def test_cli_writes_plots_and_reports_no_missing_runs(xss):
    html, _, tmp = xss
    assert 'id="no-missing"' in html
    assert "workflow config" in html
    svgs = sorted(p.stem for p in (tmp / "plots").glob("*.svg"))
    assert set(svgs) == PLOTS
    for name in svgs:
        root = ET.parse(tmp / "plots" / f"{name}.svg").getroot()  # standalone, well-formed SVG
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_runs_without_config_show_the_options_they_share(grid):
    html, _, _ = grid
    config = html[html.index('<pre class="config">') :]
    config = config[: config.index("</pre>")]
    assert "model: simple_cnn" in config and "epochs: 3" in config
    assert "seed:" not in config and "world_size:" not in config  # these vary by design
    method = html[html.index('<section id="method">') :]
    assert "loader: <code>resident</code>" in method  # what the data share of the time plot measured
    assert "gradients summed through <code>shared_memory</code>" in method  # and what its communication did


def test_runs_that_overlapped_on_a_host_are_named(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0, 1])
    html = report.render(summary_json(paths, expected), None, None, tmp_path / "r.html", plots=[])
    assert "no two runs overlapped in time on the same host" in html
    shared = json.loads(paths[3].read_text())
    shared["timestamps"] = dict(json.loads(paths[0].read_text())["timestamps"])  # same minute as ws1 seed 0
    paths[3].write_text(json.dumps(shared))
    html = report.render(summary_json(paths, expected), None, None, tmp_path / "r.html", plots=[])
    assert "ws1_bs128_seed0 and ws2_bs128_seed1 on node-a" in html


def test_timing_lock_wait_is_shown_per_run_and_in_the_method(tmp_path):
    html, summary, _ = build_report(tmp_path, lock_wait=1.25, plots=[])
    runs = [r["cells"] for r in parse(html) if r["table"] == "runs" and "data-run" in r["attrs"]]
    assert [cells["lock_wait_s"] for cells in runs] == [[("1.25", "1.25")]] * len(summary["runs"])
    method = html[html.index('<section id="method">') :]
    assert "host-wide timing lock\n    <code>/tmp/ddpbench-timing.lock</code>" in method
    assert 'data-col="lock_wait_total_s" data-value="13.75">13.8</span> s' in method  # 11 runs x 1.25 s


def test_no_lock_column_without_a_timing_lock(grid):
    html, _, _ = grid
    assert "Lock wait" not in html and "took the host-wide timing lock" not in html


def test_cli_refuses_a_summary_without_the_report_keys(tmp_path, capsys):
    old = tmp_path / "summary.json"
    old.write_text(
        json.dumps(
            {
                "rows": [],
                "runs": [],
                "missing_runs": [],
                "amdahl_serial_fraction": {},
                "definitions": {},
                "generated_utc": "2025-01-01T00:00:00+00:00",
            }
        )
    )
    assert report.main(["--summary", str(old), "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "lacks headlines, learning_curves" in err and "rerun python -m ddpbench.summary" in err
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- variants and the resource model

VARIANTS = {
    "fp32": {},
    "fp16hook": {"throughput_factor": 1.25, "config_overrides": {"comm_hook": "fp16"}},
    "bf16": {"throughput_factor": 1.9, "acc_offset": -0.5, "config_overrides": {"precision": "bf16"}},
}
VARIANT_CONFIG = {
    "grid": {
        "variants": {
            "fp32": None,
            "fp16hook": {"train": {"comm_hook": "fp16"}},
            "bf16": {"train": {"precision": "bf16"}},
        }
    },
    "train": {"epochs": 3},
}


def build_variant_report(tmp: Path) -> tuple[str, dict, Path]:
    """Three variants x world sizes 1, 2, 4 x three seeds, one run missing, through the report's CLI:
    (html, summary, report path)."""
    paths, expected = write_grid(
        tmp / "results/runs", [1, 2, 4], [128], [0, 1, 2], skip={("bf16", 4, 128, 2)}, variants=VARIANTS
    )
    summary, _ = aggregate(paths, SCHEMA, expected, VARIANT_CONFIG)
    (tmp / "results/summary.json").write_text(json.dumps(summary))
    (tmp / "results/config.json").write_text(json.dumps(VARIANT_CONFIG))
    out = tmp / "results/report.html"
    args = ["--summary", str(tmp / "results/summary.json"), "--config", str(tmp / "results/config.json")]
    assert report.main([*args, "--logs-dir", str(tmp / "logs/train"), "--out", str(out)]) == 0
    return out.read_text(), json.loads((tmp / "results/summary.json").read_text()), out


@pytest.fixture(scope="module")
def variant_grid(tmp_path_factory):
    html, summary, _ = build_variant_report(tmp_path_factory.mktemp("variants"))
    return html, summary


def variant_table(html: str) -> dict:
    """The Variants table's rows: (variant, world size) -> (tr attributes, cells), and which cells are marked."""
    section = html[html.index('<section id="variants">') : html.index('<section id="plots">')]
    rows = {
        (r["attrs"]["data-variant"], int(r["attrs"]["data-world-size"])): r["cells"]
        for r in parse(section)
        if r["table"] == "variants" and "data-world-size" in r["attrs"]
    }
    marked = set()
    for match in re.finditer(r'<tr data-variant="(\w+)" data-world-size="(\d+)"[^>]*>(.*?)</tr>', section, re.S):
        for cell in re.findall(r'<td class="marked">.*?data-col="(\w+)"', match[3], re.S):
            marked.add((match[1], int(match[2]), cell))
    return rows, marked


def test_variant_table_numbers_equal_summary_and_marks_intervals_that_exclude_no_change(variant_grid):
    html, summary = variant_grid
    rows, marked = variant_table(html)
    expected = {(r["variant"], r["world_size"]): r for r in summary["rows"]}
    assert rows.keys() == expected.keys() and len(rows) == 9
    for key, cells in rows.items():
        # 4 keys and counts, 3 x (estimate, low, high), and a corrected p-value per tested cell (none for the
        # baseline; bf16 at W = 4 has two pairs: no interval and no test).
        tested = sum(expected[key][f"{name}_p_holm"] is not None for name in NAMES)
        with_interval = sum(expected[key][f"{name}_ci95_low"] is not None for name in NAMES)
        assert check_cells(cells, expected[key]) == 4 + 2 * with_interval + 3 + tested
    should = {
        (r["variant"], r["world_size"], f"{name}_vs_baseline")
        for r in summary["rows"]
        for name in NAMES
        if r[f"{name}_marked"]
    }
    assert marked == should
    assert ("bf16", 2, "test_acc_diff_vs_baseline") in marked  # half a point less on every seed
    assert ("bf16", 2, "throughput_ratio_vs_baseline") in marked  # 1.9x the throughput
    assert not any(v == "fp32" for v, _, _ in marked)  # the baseline against itself: 1 and 0
    assert not any(v == "bf16" and w == 4 for v, w, _ in marked)  # n = 2: no test
    legend = re.sub(r"\s+", " ", html[html.index('<p class="muted legend">') :])
    assert "the Holm-corrected p-value of the cell's paired test is below 0.05" in legend
    assert "throughput 2 %, time to target 2 %, accuracy 0.5 points" in legend
    assert "An interval that excludes 1 (or 0) is not that" in legend and "the seeds agree" not in legend
    variants = section(html, "variants")
    assert "paired t-test of the log ratios" in variants and "Holm" in variants and "n = 2: no interval" in variants


NAMES = ("throughput_ratio", "time_to_target_ratio", "test_acc_diff")


def test_study_tables_of_three_seeds_show_the_intervals_with_their_n(variant_grid):
    html, summary = variant_grid
    rows = {
        (r["attrs"]["data-variant"], int(r["attrs"]["data-world-size"])): r["cells"]
        for r in parse(section(html, "study"))
        if r["table"] == "study" and "data-world-size" in r["attrs"]
    }
    expected = {(r["variant"], r["world_size"]): r for r in summary["rows"]}
    for key, cells in rows.items():
        check_cells(cells, expected[key])
    assert "speedup_ci95_low" in rows[("bf16", 2)] and "test_acc_ci95_high" in rows[("fp32", 4)]
    assert "speedup_ci95_low" not in rows[("bf16", 4)]  # two seeds
    assert "[" in section(html, "study") and "] n = 3" in section(html, "study")


def test_variant_report_has_a_table_and_a_line_per_variant(variant_grid):
    html, summary = variant_grid
    assert html.count('<table class="study"') == 3  # one per variant (one batch size)
    assert re.search(r'<table class="study" data-batch-size="128" data-variant="bf16">', html)
    figures = re.findall(r'<figure id="plot-(\w+)"[^>]*>\s*<svg\b', html)
    assert set(figures) == PLOTS | {"variant_speed"}
    variants = html[html.index('<section id="variants">') : html.index('<section id="plots">')]
    assert '<figure id="plot-variant_speed"' in variants
    for name in ("speedup", "throughput", "accuracy", "variant_speed"):
        figure = html[html.index(f'<figure id="plot-{name}"') :]
        legend = figure[: figure.index("</figure>")]
        assert all(f">{v}<" in legend for v in ("fp32", "fp16hook", "bf16")), name  # one line per variant
    overrides = variants[variants.index('<table class="overrides">') :]
    assert "<code>train.precision: bf16</code>" in overrides and "(baseline)" in overrides
    assert 'href="../logs/train/bf16/ws1_bs128_seed0.log"' in html
    assert '<li data-run="bf16/ws4_bs128_seed2"><code>bf16/ws4_bs128_seed2</code>: variant bf16, world size 4' in html


def test_no_variants_section_without_variants(grid):
    html, summary, _ = grid
    assert summary["variants"] is None
    assert 'id="variants"' not in html and "plot-variant_speed" not in html and "data-variant" not in html


def headline(html: str) -> str:
    return html[html.index('<section id="headline">') : html.index('<section id="study">')]


def resource_paragraph(html: str) -> str:
    text = html[html.index('<p class="resource-model"') :]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text[: text.index("</p>")])).strip()


def test_headline_says_cores_were_fixed(grid):
    html, summary, _ = grid
    assert summary["resource_model"]["kind"] == "cores_fixed"
    h = next(h for h in summary["headlines"] if h["batch_size"] == 128)
    text = resource_paragraph(html)
    assert text.startswith("Resource model: cores fixed. Every world size used the same 8 cores in all")
    assert "W = 1: 1 × 8, W = 2: 2 × 4, W = 4: 4 × 2" in text
    assert (
        f"{100 * h['efficiency_largest']:.0f} % at 4 workers means the 4 ranks of 2 thread(s) together ran "
        f"{h['speedup_largest']:.2f}× as fast as one 8-thread process, not that DDP lost "
        f"{100 * (1 - h['efficiency_largest']):.0f} % of the work"
    ) in text
    assert "· same cores" in headline(html) and "classic scaling efficiency" not in headline(html)


def test_headline_says_cores_per_worker_were_fixed(tmp_path):
    html, summary, _ = build_report(tmp_path, threads=2, plots=[])
    assert summary["resource_model"]["kind"] == "cores_per_worker_fixed"
    text = resource_paragraph(html)
    assert text.startswith(
        "Resource model: cores per worker fixed. Every rank had the same threads at every world size"
    )
    assert "W = 1: 1 × 2, W = 2: 2 × 2, W = 4: 4 × 2" in text and "Efficiency is classic scaling efficiency" in text
    h = summary["headlines"][0]
    assert f"means they ran {h['speedup_largest']:.2f}× as fast as one worker with the same 2 thread(s)" in text
    assert "· same cores" not in headline(html) and "not that DDP lost" not in headline(html)


# --------------------------------------------------------------------------- beyond this machine: the prediction


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Two batch sizes at W = 1, 2, 4 with all-reduce timings at W = 2 and 4, through both CLIs:
    (html, summary, folder)."""
    tmp = tmp_path_factory.mktemp("predicted")
    paths, expected = write_grid(tmp / "runs", [1, 2, 4], [64, 128], [0, 1])
    comm = write_comm(tmp / "comm", [2, 4])
    summary, _ = aggregate(paths, SCHEMA, expected, PREDICT_CONFIG, comm=comm)
    (tmp / "summary.json").write_text(json.dumps(summary))
    out = tmp / "report.html"
    assert (
        report.main(["--summary", str(tmp / "summary.json"), "--out", str(out), "--plots-dir", str(tmp / "plots")]) == 0
    )
    return out.read_text(), json.loads((tmp / "summary.json").read_text()), tmp


def section(html: str, name: str) -> str:
    part = html[html.index(f'<section id="{name}">') :]
    return part[: part.index("</section>")]


def test_predicted_efficiency_table_equals_summary(predicted):
    html, summary, _ = predicted
    curves = {(c["batch_size"], c["network"], c["batch_mode"]): c for c in summary["prediction"]["curves"]}
    table = {
        (int(r["attrs"]["data-batch-size"]), r["attrs"]["data-network"], r["attrs"]["data-batch-mode"]): r["cells"]
        for r in parse(html)
        if r["table"] == "prediction-efficiency" and "data-network" in r["attrs"]
    }
    assert table.keys() == curves.keys() and len(table) == 2 * 3 * 2  # batch sizes x networks x batch modes
    for key, cells in table.items():
        curve = curves[key]
        expected = {}
        for suffix, values in (
            ("", "efficiency"),
            ("_ci95_low", "efficiency_ci95_low"),
            ("_ci95_high", "efficiency_ci95_high"),
        ):
            at = dict(zip(curve["world_sizes"], curve[values], strict=True))
            expected |= {f"efficiency_at_{w}{suffix}": at.get(w) for w in (8, 64, 256, 1024) if suffix == "" or w in at}
        assert set(cells) == set(expected)
        assert check_cells(cells, expected) == len(expected)
    per_worker = table[(128, "1GbE", "per_worker")]
    assert all(value for ((value, _),) in per_worker.values())  # every size predicted per worker
    assert table[(64, "1GbE", "global")]["efficiency_at_256"] == [("", "–")]  # batch 64 over 256 workers: none


def test_validation_and_fitted_parameters_equal_summary(predicted):
    html, summary, _ = predicted
    prediction = summary["prediction"]
    rows = [r for r in parse(html) if r["table"] == "prediction-validation" and "data-held-out" in r["attrs"]]
    cases = {(c["batch_size"], c["held_out"]): c for c in prediction["validation"]}
    shown = {(int(r["attrs"]["data-batch-size"]), int(r["attrs"]["data-held-out"])): r["cells"] for r in rows}
    assert shown.keys() == cases.keys() and len(shown) == 2 * 3  # each of W = 1, 2, 4 left out, per batch size
    for key, cells in shown.items():
        assert check_cells(cells, cases[key]) == len(cells) >= 7  # with the bootstrap intervals
    # The grid shares 8 cores among the ranks: every case changes the threads per rank, and says so.
    assert all(c["fit_threads_per_worker"] != c["held_out_threads_per_worker"] for c in prediction["validation"])
    assert 'id="validation-threads-differ"' in section(html, "prediction")
    fitted = section(html, "prediction")
    values = dict(
        re.findall(
            r'<p>Fitted to .*?data-col="alpha_us" data-value="([^"]*)"'
            r'.*?data-col="bandwidth_gbit" data-value="([^"]*)"',
            fitted,
            re.S,
        )
    )
    ((alpha_us, bandwidth_gbit),) = values.items()
    assert float(alpha_us) == prediction["collective"]["alpha_s"] * 1e6
    assert float(bandwidth_gbit) == prediction["collective"]["bandwidth_gbit"]
    assert prediction["formula"] in fitted
    for assumption in prediction["assumptions"]:
        assert assumption.replace("'", "&#39;") in fitted
    networks = {
        r["attrs"]["data-network"]: r["cells"]
        for r in parse(html)
        if r["table"] == "prediction-networks" and "data-network" in r["attrs"]
    }
    assert set(networks) == {"measured", "10GbE", "1GbE"}
    assert float(networks["1GbE"]["bandwidth_gbit"][0][0]) == pytest.approx(1.0)  # 1 Gbit/s caps the 8 measured
    assert float(networks["1GbE"]["alpha_us"][0][0]) == pytest.approx(100.0)  # 50 measured + 50 of the network


def test_no_threads_warning_when_every_rank_keeps_its_threads(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0, 1], threads=1)
    summary, _ = aggregate(paths, SCHEMA, expected, PREDICT_CONFIG, comm=write_comm(tmp_path / "comm", [2]))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report.html"
    assert report.main(["--summary", str(tmp_path / "summary.json"), "--out", str(out)]) == 0
    part = section(out.read_text(), "prediction")
    assert 'id="prediction-validation"' in part and 'id="validation-threads-differ"' not in part


def test_prediction_plot_is_shown_in_its_section(predicted):
    html, _, _ = predicted
    figure = section(html, "prediction")
    assert '<figure id="plot-prediction" class="wide">' in figure and figure.count("<svg") == 1


def test_without_timings_the_section_says_why(grid):
    html, summary, _ = grid
    assert summary["prediction"] is None
    part = section(html, "prediction")
    assert 'id="no-prediction"' in part and "no all-reduce timings" in part and "<svg" not in part


def test_a_network_name_that_is_not_plain_text_is_refused(predicted, tmp_path, capsys):
    _, summary, _ = predicted
    networks = summary["prediction"]["networks"]
    summary["prediction"]["networks"] = {**networks, "$\\alpha$<b>": networks["1GbE"]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert report.main(["--summary", str(tmp_path / "summary.json"), "--out", str(tmp_path / "r.html")]) == 1
    assert "network name" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- few seeds, missing runs, never reached


def test_variants_with_two_seeds_and_one_thread_render_without_an_inverted_interval(tmp_path):
    """The reported bug: variants, W = 1, 2, 4, 8, seeds 0 and 1, one thread per worker gave bf16 at W = 1 a
    time-to-target speedup of 1.47 with the interval [0.39, -0.84], and the report crashed on a negative
    error bar. Two pairs now give the value and no interval, and every interval lies around its value."""
    paths, expected = write_grid(tmp_path / "runs", [1, 2, 4, 8], [128], [0, 1], variants=VARIANTS, threads=1)
    summary = json.loads(json.dumps(aggregate(paths, SCHEMA, expected, VARIANT_CONFIG)[0], allow_nan=False))
    for s in summary["variants"]["speed_vs_accuracy"]:
        for key in ("throughput_speedup", "time_to_target_speedup"):
            low, value, high = s[f"{key}_ci95_low"], s[key], s[f"{key}_ci95_high"]
            assert low is None and high is None and value is not None  # n = 2
    html = report.render(summary, VARIANT_CONFIG, None, tmp_path / "report.html")
    assert "n = 2: no interval" in section(html, "variants") and '<figure id="plot-variant_speed"' in html


def test_one_seed_reports_values_with_n_1(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0], variants=VARIANTS)
    summary = json.loads(json.dumps(aggregate(paths, SCHEMA, expected, VARIANT_CONFIG)[0], allow_nan=False))
    html = report.render(summary, VARIANT_CONFIG, None, tmp_path / "report.html")
    assert "n = 1: no interval" in section(html, "study") and "n = 1: no interval" in section(html, "variants")
    assert "nan" not in re.sub(r"<svg.*?</svg>", "", html, flags=re.S).lower()


def test_time_to_target_shows_k_of_n_reached_and_a_seed_without_its_one_worker_run_is_named(tmp_path):
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0, 1, 2], skip={(1, 128, 2)})
    for path in paths:
        run = json.loads(path.read_text())
        if (run["config"]["world_size"], run["config"]["seed"]) == (2, 0):
            run["totals"]["time_to_target_s"] = None
            path.write_text(json.dumps(run))
    summary = summary_json(paths, expected)
    html = report.render(summary, None, None, tmp_path / "report.html")
    rows = {
        int(r["attrs"]["data-world-size"]): r["cells"]
        for r in parse(section(html, "study"))
        if r["table"] == "study" and "data-world-size" in r["attrs"]
    }
    assert "time_to_target_mean_s" in rows[1]  # both runs at W = 1 reached the target
    assert rows[2]["n_reached_target"] == [("2", "2")] and "time_to_target_mean_s" not in rows[2]
    assert "2</span> of 3 reached" in section(html, "study")
    unpaired = re.search(r'<p class="missing" id="speedup-unpaired">(.*?)</p>', html, re.S)
    assert unpaired and "<code>ws2_bs128_seed2</code>" in unpaired[1]


def test_the_default_studys_report_carries_no_validation_from_held_out_data(tmp_path):
    """The default study on two cores: W = 1 and 2, all-reduce timed at W = 2 only. Predicting W = 2
    could only fit W = 2's own timings: the report says it is not validated, names the study that can
    check the model, and shows no error; the predicted speedup at W = 1 is 1."""
    paths, expected = write_grid(tmp_path / "runs", [1, 2], [128], [0, 1, 2])
    summary, _ = aggregate(paths, SCHEMA, expected, PREDICT_CONFIG, comm=write_comm(tmp_path / "comm", [2]))
    html = report.render(json.loads(json.dumps(summary)), out=tmp_path / "report.html", plots=[])
    part = section(html, "prediction")
    assert "not validated on this study" in part and "examples/prediction-check.yaml" in part
    assert 'class="prediction-validation"' not in part and "step_time_rel_error" not in part
    curve = summary["prediction"]["curves"][0]
    assert curve["world_sizes"][0] == 1 and curve["speedup"][0] == pytest.approx(1.0)


def test_a_compiled_variant_shows_its_compile_time_and_an_eager_study_has_no_such_column(tmp_path, variant_grid):
    variants = {
        "eager": {},
        "compiled": {"throughput_factor": 1.3, "config_overrides": {"compile": "default"}, "compile_s": 30.0},
    }
    paths, expected = write_grid(tmp_path / "results/runs", [1, 2], [128], [0, 1, 2], variants=variants)
    config = {
        "grid": {"variants": {"eager": None, "compiled": {"train": {"compile": "default"}}}},
        "train": {"epochs": 3},
    }
    summary, _ = aggregate(paths, SCHEMA, expected, config)
    rows = {(r["variant"], r["world_size"]): r for r in summary["rows"]}
    assert rows["compiled", 2]["compile_mean_s"] == pytest.approx(30.0)
    assert rows["eager", 1]["compile_mean_s"] is None
    table = section(report.render(summary, config, plots=[]), "variants")
    assert "Compile<span" in table
    assert re.search(r'data-col="compile_mean_s" data-value="30(\.0)?">30\.0<', table)
    assert "Compile<span" not in section(variant_grid[0], "variants")  # eager variants: no compile column
