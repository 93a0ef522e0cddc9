"""Result bundles (ddpbench.bundle) and the comparison of machines and versions (ddpbench.compare,
ddpbench.history): what a bundle holds, every way a bad one is refused, the comparison's statistics
against scipy, and the page and CSV through the command line."""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import RUN_SCHEMA
from runfactory import write_grid
from scipy import stats as sp

from ddpbench import bundle as bundle_mod
from ddpbench.bundle import BundleError, load_bundle
from ddpbench.compare import CompareError, comparison
from ddpbench.compare import main as compare_main
from ddpbench.comparepage import render as compare_page
from ddpbench.summary import main as summary_main


def shift_days(paths, days):
    """Move the runs' timestamps ``days`` later (a study made on another day)."""
    for path in paths:
        run = json.loads(path.read_text())
        for key, stamp in run["timestamps"].items():
            run["timestamps"][key] = (pd.Timestamp(stamp) + pd.Timedelta(days=days)).isoformat(timespec="milliseconds")
        path.write_text(json.dumps(run))


def make_study(
    folder, seeds=(0, 1, 2), world_sizes=(1, 2), hostname="node-a", epochs=3, days=0, variants=None, **run_kwargs
):
    """A finished study's results/ (runfactory runs, the summary CLI) and its bundle's path; its runs
    ``days`` after runfactory's; ``variants``: {name: make_run keyword arguments}."""
    results = folder / "results"
    paths, expected = write_grid(
        results / "runs", world_sizes, [128], seeds, variants=variants, hostname=hostname, epochs=epochs, **run_kwargs
    )
    shift_days(paths, days)
    grid = {"order_seed": 0, **({"variants": {name: {} for name in variants}} if variants else {})}
    (results / "config.json").write_text(json.dumps({"grid": grid}))
    args = ["--runs", *map(str, paths), "--schema", str(RUN_SCHEMA), "--expect", *expected]
    summary = results / "summary.json"
    assert summary_main([*args, "--csv", str(results / "summary.csv"), "--json", str(summary)]) == 0
    out = folder / f"{folder.name}.tar.gz"
    bundle_args = ["--root", str(results), "--runs", *map(str, paths), "--summary", str(summary)]
    bundle_args += ["--config", str(results / "config.json"), "--schema", str(RUN_SCHEMA), "--out", str(out)]
    assert bundle_mod.main(bundle_args) == 0
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Three machines of the same study: 'fast' (1.5 times as fast), 'base' and 'same' (a second
    study that timed alike, its runs a hair apart)."""
    root = tmp_path_factory.mktemp("studies")
    return {
        "base": make_study(root / "base"),
        "fast": make_study(root / "fast", hostname="node-b", throughput_factor=1.5),
        "same": make_study(root / "same", hostname="node-c", throughput_factor=1.001),
    }


def rewrite(path, out, change):
    """A copy of the bundle at ``path`` with ``change(members)`` applied to its {name: bytes}."""
    with tarfile.open(path, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    change(members)
    out.write_bytes(bundle_mod.tar_bytes(members))
    return out


# --------------------------------------------------------------------------- the bundle


def test_a_bundle_holds_the_study_and_a_manifest_of_its_hashes(studies):
    bundle = load_bundle(studies["base"])
    manifest = bundle.manifest
    assert manifest["format"] == "ddpbench-bundle" and manifest["format_version"] == 1
    with tarfile.open(studies["base"]) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        assert all(m.mtime == 0 and m.uid == 0 and m.isfile() for m in tar)
        for name in names[1:]:
            assert bundle_mod.sha256(tar.extractfile(name).read()) == manifest["members"][name]
    assert {"summary.json", "summary.csv", "config.json", "environment.json", "run.schema.json"} <= set(names)
    assert sorted(n for n in names if n.startswith("runs/")) == sorted(
        f"runs/ws{w}_bs128_seed{s}.json" for w in (1, 2) for s in (0, 1, 2)
    )
    machine = manifest["machine"]
    assert machine["hosts"] == ["node-a"] and machine["gpu_count"] == 0
    assert {"cpu_model", "torch", "torchvision", "python", "git_commit", "git_dirty"} <= set(machine)
    assert not any(str(studies["base"].parent) in name for name in names)  # nothing names this machine's paths
    assert len(bundle.runs) == 6 and bundle.summary["rows"]


def test_the_same_results_make_the_same_bundle(studies, tmp_path):
    again = rewrite(studies["base"], tmp_path / "again.tar.gz", lambda members: None)
    assert again.read_bytes() == studies["base"].read_bytes()


def drop_manifest_member(members):
    del members["summary.csv"]


def change_a_run(members):
    members["runs/ws1_bs128_seed0.json"] = members["runs/ws1_bs128_seed0.json"].replace(b'"seed": 0', b'"seed": 0 ')


def future_version(members):
    manifest = json.loads(members["manifest.json"])
    members["manifest.json"] = json.dumps({**manifest, "format_version": 99}).encode()


@pytest.mark.parametrize(
    "change, message",
    [
        (change_a_run, "runs/ws1_bs128_seed0.json does not match its sha256"),
        (drop_manifest_member, "members and manifest disagree on summary.csv"),
        (future_version, "bundle format version 99; this ddpbench reads version 1"),
        (lambda m: m.pop("manifest.json"), "not a ddpbench bundle (no readable manifest.json)"),
    ],
)
def test_a_tampered_or_foreign_bundle_is_refused_naming_it(studies, tmp_path, change, message):
    bad = rewrite(studies["base"], tmp_path / "bad.tar.gz", change)
    with pytest.raises(BundleError) as err:
        load_bundle(bad)
    assert str(bad) in str(err.value) and message in str(err.value)


def test_a_truncated_corrupted_or_non_bundle_file_is_refused(studies, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(studies["base"].read_bytes()[:2000])
    text = tmp_path / "notes.tar.gz"
    text.write_text("not an archive")
    flipped = tmp_path / "flipped.tar.gz"  # one byte of the deflate stream changed
    payload = bytearray(studies["base"].read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    flipped.write_bytes(bytes(payload))
    for path in (cut, text):
        with pytest.raises(BundleError, match="cannot read it as a gzip tar"):
            load_bundle(path)
    with pytest.raises(BundleError) as err:  # the inflate fails, or a member no longer matches
        load_bundle(flipped)
    assert str(err.value).startswith(str(flipped))


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_a_member_that_could_land_outside_is_refused(tmp_path, kind):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo({"parent": "../evil.json", "absolute": "/tmp/evil.json", "symlink": "link"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    with pytest.raises(BundleError, match="refusing to read it"):
        load_bundle(path)
    assert not (tmp_path.parent / "evil.json").exists()


# --------------------------------------------------------------------------- the statistics


def runs_of(bundle_path, world_size=1):
    runs = load_bundle(bundle_path).runs
    return {
        r["config"]["seed"]: r["totals"]["steady_throughput_img_s"]
        for r in runs
        if r["config"]["world_size"] == world_size
    }


def test_machines_are_compared_paired_by_seed_holm_corrected_and_marked(studies):
    result = comparison([load_bundle(studies[n]) for n in ("base", "fast", "same")])
    rows = {(r["machine"], r["world_size"]): r for r in result["rows"]}
    fast, base = runs_of(studies["fast"]), runs_of(studies["base"])
    logs = np.log([fast[s] / base[s] for s in (0, 1, 2)])
    row = rows[("fast", 1)]
    assert row["test"] == "paired" and row["n_pairs"] == 3
    assert row["throughput_ratio"] == pytest.approx(math.exp(logs.mean()))
    assert row["throughput_ratio"] == pytest.approx(1.5, rel=1e-3)
    p = sp.ttest_rel(np.log([fast[s] for s in (0, 1, 2)]), np.log([base[s] for s in (0, 1, 2)])).pvalue
    assert row["throughput_p"] == pytest.approx(p)
    every_p = [r[f"{q}_p"] for r in result["rows"] for q in ("throughput", "test_acc") if r[f"{q}_p"] is not None]
    assert result["method"]["n_tests"] == len(every_p) == 8  # 2 machines x 2 world sizes x 2 quantities
    rank = sorted(every_p).index(row["throughput_p"])
    assert row["throughput_p_holm"] >= min(1.0, (len(every_p) - rank) * row["throughput_p"]) - 1e-12
    assert row["throughput_marked"] == "higher" and rows[("fast", 2)]["throughput_marked"] == "higher"
    assert rows[("same", 1)]["throughput_marked"] == "" and rows[("same", 2)]["throughput_marked"] == ""
    assert rows[("base", 1)]["throughput_ratio"] is None  # the reference itself
    assert (
        rows[("fast", 1)]["throughput_mean_img_s"]
        == load_bundle(studies["fast"]).summary["rows"][0]["throughput_mean_img_s"]
    )
    hosts = next(r for r in result["machine_table"] if r["field"] == "hosts")
    assert hosts["values"] == ["node-a", "node-b", "node-c"] and hosts["differs"]
    assert not next(r for r in result["machine_table"] if r["field"] == "torch")["differs"]


def test_unmatched_seeds_are_compared_unpaired(studies, tmp_path):
    other = make_study(tmp_path / "other", seeds=(5, 6, 7), hostname="node-d", throughput_factor=0.5)
    result = comparison([load_bundle(studies["base"]), load_bundle(other)])
    row = next(r for r in result["rows"] if r["machine"] == "other" and r["world_size"] == 1)
    mine, theirs = runs_of(other), runs_of(studies["base"])
    welch = sp.ttest_ind(np.log(list(mine.values())), np.log(list(theirs.values())), equal_var=False)
    assert row["test"] == "unpaired" and row["throughput_p"] == pytest.approx(welch.pvalue)
    assert row["throughput_marked"] == "lower"


def test_left_out_bundles_and_settings_only_some_ran_are_named(studies, tmp_path):
    epochs = make_study(tmp_path / "epochs", epochs=2)
    wider = make_study(tmp_path / "wider", world_sizes=(1, 2, 4), hostname="node-e")
    copy = tmp_path / "copy.tar.gz"
    copy.write_bytes(studies["base"].read_bytes())
    result = comparison([load_bundle(p) for p in (studies["base"], copy, epochs, wider)])
    reasons = {Path(item["bundle"]).name: item["reason"] for item in result["left_out"]}
    assert reasons["copy.tar.gz"] == f"a duplicate of {studies['base']} (the same study)"
    assert reasons["epochs.tar.gz"].startswith(f"not comparable with {studies['base']}: epochs: 2 against 3")
    assert [m["label"] for m in result["machines"]] == ["base", "wider"]
    assert result["partial_settings"] == [
        {"variant": "", "batch_size": 128, "world_size": 4, "in": ["wider"], "missing_from": ["base"]}
    ]
    with pytest.raises(CompareError, match="fewer than two comparable bundles: .*copy.tar.gz: a duplicate of"):
        comparison([load_bundle(studies["base"]), load_bundle(copy)])


def test_a_studys_baseline_variant_meets_a_study_without_variants(studies, tmp_path):
    recipes = make_study(
        tmp_path / "recipes", hostname="node-f", variants={"plain": {}, "faster": {"throughput_factor": 2}}
    )
    result = comparison([load_bundle(studies["base"]), load_bundle(recipes)])
    rows = {(r["machine"], r["variant"], r["world_size"]): r for r in result["rows"]}
    plain = rows[("recipes", None, 1)]
    assert plain["variant_name"] == "plain" and plain["test"] == "paired" and plain["n_runs"] == 3
    assert plain["throughput_mean_img_s"] == next(
        r["throughput_mean_img_s"]
        for r in load_bundle(recipes).summary["rows"]
        if r["variant"] == "plain" and r["world_size"] == 1
    )
    assert ("recipes", "faster", 1) in rows and ("base", "faster", 1) not in rows
    assert {(p["variant"], p["world_size"]) for p in result["partial_settings"]} == {("faster", 1), ("faster", 2)}
    html = compare_page(result)
    assert "recipes <span" in html and "(plain)" in html


def test_bundles_of_one_file_name_are_told_apart_by_their_folders(studies, tmp_path):
    # As the workflow leaves them: every study's results/bundle.tar.gz.
    paths = []
    for host in ("laptop", "server"):
        path = tmp_path / host / "results" / "bundle.tar.gz"
        path.parent.mkdir(parents=True)
        path.write_bytes(studies["base" if host == "laptop" else "fast"].read_bytes())
        paths.append(path)
    result = comparison([load_bundle(p) for p in paths])
    assert [m["label"] for m in result["machines"]] == ["laptop/bundle", "server/bundle"]
    with pytest.raises(CompareError, match="names 2 of the bundles: give its path"):
        comparison([load_bundle(p) for p in paths], reference="bundle.tar.gz")


def test_a_setting_the_reference_did_not_run_is_not_called_the_reference(studies, tmp_path):
    wider = make_study(tmp_path / "wider", world_sizes=(1, 2, 4), hostname="node-e")
    result = comparison([load_bundle(studies["base"]), load_bundle(wider)])
    html = compare_page(result)
    row = html.split('<tr data-machine="wider" data-world-size="4">', 1)[1].split("</tr>", 1)[0]
    assert "the reference did not run it" in row and ">reference<" not in row
    assert 'data-variant="None"' not in html
    # Options that vary with the world size are compared at the world sizes both ran.
    threads = next(r for r in result["machine_table"] if r["field"] == "train.threads_per_worker")
    assert not threads["differs"], threads


def test_a_bundle_without_what_compare_reads_is_named(studies, tmp_path):
    def drop_totals(members):
        name = "runs/ws1_bs128_seed0.json"
        run = json.loads(members[name])
        del run["totals"]["steady_throughput_img_s"]
        members[name] = json.dumps(run).encode()
        schema = json.loads(members["run.schema.json"])
        schema["$defs"] = {}  # a permissive schema shipped along with it
        schema.pop("required", None)
        schema["properties"] = {}
        members["run.schema.json"] = json.dumps(schema).encode()
        manifest = json.loads(members["manifest.json"])
        manifest["members"] |= {n: bundle_mod.sha256(members[n]) for n in (name, "run.schema.json")}
        members["manifest.json"] = json.dumps(manifest).encode()

    edited = rewrite(studies["base"], tmp_path / "edited.tar.gz", drop_totals)
    with pytest.raises(BundleError, match="steady_throughput_img_s.*another ddpbench version, or edited"):
        load_bundle(edited)


def test_the_reference_can_be_named(studies):
    result = comparison([load_bundle(studies[n]) for n in ("base", "fast")], reference="fast.tar.gz")
    assert result["reference"] == "fast"
    row = next(r for r in result["rows"] if r["machine"] == "base" and r["world_size"] == 1)
    assert row["throughput_ratio"] == pytest.approx(1 / 1.5, rel=1e-3) and row["throughput_marked"] == "lower"
    with pytest.raises(CompareError, match="compare.reference 'nope' is none of the bundles"):
        comparison([load_bundle(studies[n]) for n in ("base", "fast")], reference="nope")


def test_history_flags_the_step_and_not_the_noise(tmp_path):
    # One machine over four versions: the third is 30 % slower (a regression), the others alike.
    paths = [
        make_study(tmp_path / f"v{i}", hostname="node-a", throughput_factor=f, days=i)
        for i, f in enumerate((1.0, 1.002, 0.7, 0.701))
    ]
    result = comparison([load_bundle(p) for p in reversed(paths)], history=True)  # ordered by time, not as given
    history = result["history"]
    assert [o["machine"] for o in history["order"]] == ["v0", "v1", "v2", "v3"]
    series = next(s for s in history["series"] if s["world_size"] == 1)
    assert [step["verdict"] for step in series["steps"]] == ["", "regression", ""]
    assert series["steps"][1]["throughput_ratio"] == pytest.approx(0.7 / 1.002, rel=1e-3)
    assert "Holm-corrected" in history["method"] and history["plot_svg"].startswith("<?xml")


def test_the_cli_writes_the_page_and_the_csv_with_hostile_text_escaped(studies, tmp_path):
    hostile = make_study(tmp_path / "hostile", hostname="<script>alert(1)</script>", throughput_factor=1.5)
    out = tmp_path / "compare.html"
    assert compare_main([str(studies["base"]), str(hostile), "-o", str(out), "--history"]) == 0
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    cell = re.search(r'<tr data-machine="hostile" data-world-size="1">.*?data-marked="([^"]*)"', html, re.S)
    assert cell and cell[1] == "higher"
    table = pd.read_csv(tmp_path / "compare.csv")
    assert list(table.machine) == ["base", "hostile", "base", "hostile"]
    assert table.loc[1, "throughput_ratio"] == pytest.approx(1.5, rel=1e-3) and table.loc[1, "test"] == "paired"
    assert '<section id="history">' in html and "http" not in html.split("<svg", 1)[0].replace("http-equiv", "")


def test_the_cli_names_a_bad_bundle_in_one_line(studies, tmp_path, capsys):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    assert compare_main([str(studies["base"]), str(bad), "-o", str(tmp_path / "c.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and not (tmp_path / "c.html").exists()
    assert compare_main([str(studies["base"]), "-o", str(tmp_path / "c.html")]) == 1
    assert "compare needs at least two bundles" in capsys.readouterr().err
