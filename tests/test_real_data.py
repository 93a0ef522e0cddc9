"""Slow but real: the CIFAR-10 archive built from ../shared/data, downloaded by the workflow from
a loopback HTTP server with its md5, converted, and trained on in a short grid."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import SHARED_DATA
from workflowcopy import copy_repo, snakemake, write_config

BUILDER = SHARED_DATA / "build_cifar10_archive.py"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BUILDER.exists(), reason=f"{BUILDER} not found: the shared CIFAR-10 images are needed"),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    subprocess.run(
        [sys.executable, str(BUILDER), str(out)], check=True, capture_output=True, timeout=600, cwd=SHARED_DATA
    )
    return out, hashlib.md5(out.read_bytes()).hexdigest()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(archive):
    handler = functools.partial(QuietHandler, directory=str(archive[0].parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{archive[0].name}"
    httpd.shutdown()
    httpd.server_close()


def test_short_grid_on_real_cifar10(tmp_path, archive, server):
    copy_repo(tmp_path)
    config = write_config(
        tmp_path,
        "real.yaml",
        {
            "data": {"source": "cifar10", "url": server, "md5": archive[1]},
            "grid": {"world_sizes": [1, 2], "seeds": [0]},
            # One thread a rank: the other worker's test shares the 2 cores, where a rank of two
            # threads waits on its descheduled thread at every parallel region (the W = 1 run's
            # epoch took 110 s that way, where alone it takes about 12).
            "train": {"epochs": 1, "max_train_samples": 8192, "threads_per_worker": 1},
        },
    )
    result = snakemake(tmp_path, "--configfile", config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert hashlib.md5((tmp_path / "resources/cifar-10-python.tar.gz").read_bytes()).hexdigest() == archive[1]
    meta = json.loads((tmp_path / "resources/cifar10/meta.json").read_text())
    assert meta["counts"] == {"train": 50000, "test": 10000} and meta["archive_md5"] == archive[1]
    for ws in (1, 2):
        run = json.loads((tmp_path / f"results/runs/ws{ws}_bs128_seed0.json").read_text())
        assert run["dataset"]["source"] == "cifar10" and run["dataset"]["test_samples"] == 10000
        assert run["totals"]["final_test_acc"] > 25.0  # one epoch on 8,192 images; chance is 10 %
    summary = json.loads((tmp_path / "results/summary.json").read_text())
    assert [row["world_size"] for row in summary["rows"]] == [1, 2]


def test_wrong_md5_stops_before_training(tmp_path, server):
    copy_repo(tmp_path)
    config = write_config(
        tmp_path, "wrong.yaml", {"data": {"url": server, "md5": "0" * 32}, "grid": {"world_sizes": [1], "seeds": [0]}}
    )
    result = snakemake(tmp_path, "--configfile", config)
    assert result.returncode != 0
    log = (tmp_path / "logs/data/download_cifar10.log").read_text()
    assert "checksum mismatch" in log and "0" * 32 in log and server in log
    assert not (tmp_path / "resources/cifar-10-python.tar.gz").exists()
    assert not (tmp_path / "results/runs").exists()
