"""Machines compared through the Snakemake CLI: three studies of the same synthetic grid bundle
their results (results/bundle.tar.gz, part of `all`), and `snakemake compare` puts them side by
side. The known answer: at world size 1 a rank of two threads trains faster than a rank of one
(threads_per_worker 2 against 1), and a second one-thread study is not marked against the first.
Seven seeds each for the two that differ, of 16 steps each: on a noisy two-core VM a run's
throughput drifts by 10-15 % from one run to the next, and Holm corrects the table's four tests.
Four seeds of 8 steps left a 1.4x difference short of significance (a CI run on a Xeon: raw p about
0.04, so p_holm 0.18); five of 16 steps, a 1.34x one (an EPYC: per seed 1.13x to 1.57x, raw p
0.014, p_holm 0.057). Seven seeds of that spread give p_holm about 0.01."""

from __future__ import annotations

import pandas as pd
import pytest
from workflowcopy import copy_repo, job_counts, snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # a 1.33x throughput difference is its known answer

BASE = {
    "data": {"source": "synthetic", "synthetic": {"train_size": 2048, "test_size": 128}},
    "grid": {"world_sizes": [1], "seeds": [0, 1, 2, 3, 4, 5, 6]},
    "train": {"epochs": 1, "threads_per_worker": 1},
}
STUDIES = {
    "one_thread": BASE,
    "two_threads": {**BASE, "train": {**BASE["train"], "threads_per_worker": 2}},
    "one_thread_again": {**BASE, "grid": {**BASE["grid"], "seeds": [0, 1, 2]}},
}


def failed(result) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("machines")
    out = {}
    for name, config in STUDIES.items():
        workdir = copy_repo(root / name)
        config_file = write_config(workdir, "study.yaml", config)
        result = snakemake(workdir, "results/bundle.tar.gz", "--configfile", config_file)
        assert result.returncode == 0, failed(result)
        assert "html_report" not in job_counts(result.stdout + result.stderr)  # the bundle needs no page
        out[name] = workdir / "results/bundle.tar.gz"
    return root, out


def test_snakemake_compare_marks_the_faster_rank_and_not_the_same_setting(bundles):
    root, paths = bundles
    workdir = root / "one_thread"
    named = {}
    for name, path in paths.items():  # each machine's bundle under its name, as a user collects them
        named[name] = workdir / f"{name}.tar.gz"
        named[name].write_bytes(path.read_bytes())
    compare = {"compare": {"bundles": [f"{name}.tar.gz" for name in STUDIES]}}
    config = write_config(workdir, "compare.yaml", {**BASE, **compare})
    result = snakemake(workdir, "compare", "--configfile", config)
    assert result.returncode == 0, failed(result)
    counts = job_counts(result.stdout + result.stderr)
    assert counts.get("compare") == 1 and "train" not in counts and "aggregate" not in counts, counts
    table = pd.read_csv(workdir / "results/compare.csv").set_index("machine")
    assert list(table.index) == list(STUDIES)
    fast = table.loc["two_threads"]
    print(table[["throughput_ratio", "throughput_ratio_ci95_low", "throughput_ratio_ci95_high", "throughput_p_holm"]])
    assert fast.test == "paired" and fast.n_pairs == 7
    assert fast.throughput_ratio > 1 and fast.throughput_ratio_ci95_low > 1 and fast.throughput_marked == "higher"
    again = table.loc["one_thread_again"]
    assert pd.isna(again.throughput_marked)  # not marked: an empty cell in the CSV
    html = (workdir / "results/compare.html").read_text()
    cell = html.split('<tr data-machine="two_threads" data-world-size="1">', 1)[1].split("</tr>", 1)[0]
    assert 'data-marked="higher"' in cell
    threads = html.split('data-field="train.threads_per_worker"', 1)[1].split("</tr>", 1)[0]
    assert "differs" in threads  # the machine table shows what differs
    again_run = snakemake(workdir, "compare", "-n", "--configfile", config)
    assert "Nothing to be done" in again_run.stdout + again_run.stderr, failed(again_run)
