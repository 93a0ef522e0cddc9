"""Two workflows on one host, through the `snakemake` CLI: their timed runs queue on the host-wide
timing lock (ddpbench.launch --timing-lock) and never overlap, and each run records its wait."""

from __future__ import annotations

import fcntl
import json
import time
from datetime import datetime

import pytest
from parallel import flocked
from workflowcopy import GRID, copy_repo, copy_study, snakemake, start_snakemake, write_config

from ddpbench.launch import host_timing_lock

WAITING = "waiting for the timing lock"  # what a launch logs while another holds the lock


@pytest.mark.slow
def test_two_workflows_on_one_host_time_their_runs_one_after_the_other(tmp_path):
    """Two copies of the workflow started at once, one timed run each, while the host's lock is
    held by the test (so that both queue, however loaded the machine: unheld, one short run could end before
    the other workflow reached its own): once it is free the runs go one at a time, and each
    records how long it waited. One world size, so that no all-reduce timing (the commbench job,
    which takes the lock too but records no run) does the waiting."""
    grid = {**GRID, "grid": {"world_sizes": [1], "seeds": [0]}, "train": {**GRID["train"], "threads_per_worker": 1}}
    first = copy_repo(tmp_path / "first")
    config = write_config(first, "grid.yaml", grid)
    # The host's peak (the other job that takes the lock) measured before, as in a user's second study.
    peak = snakemake(first, "results/peak.json", "--configfile", config)  # (--configfile takes several)
    assert peak.returncode == 0, peak.stdout[-3000:] + peak.stderr[-3000:]
    copies = [first, copy_study(first, tmp_path / "second")]
    logs = [workdir / "logs/train/ws1_bs128_seed0.log" for workdir in copies]
    host_lock = host_timing_lock()  # a worker's own (tests/parallel.py), else the host's
    procs = []
    try:
        with flocked(host_lock, fcntl.LOCK_EX):  # as another workflow's timed run would hold it
            for workdir in copies:
                procs.append(start_snakemake(workdir, config))
            deadline = time.monotonic() + 300
            while not all(log.exists() and WAITING in log.read_text() for log in logs):
                ended = [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
                assert not ended and time.monotonic() < deadline, f"the runs did not queue: {ended}"
                time.sleep(0.2)
            time.sleep(1.5)  # every run has waited a while: the time it records is the lock's, not a clock's
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for proc in procs:  # a failed wait leaves no workflow training on into the next tests
            if proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=60)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    runs = [json.loads(path.read_text()) for w in copies for path in sorted((w / "results/runs").glob("*.json"))]
    assert len(runs) == 2
    earlier, later = sorted(runs, key=lambda r: r["timestamps"]["started_utc"])
    assert earlier["timestamps"]["finished_utc"] <= later["timestamps"]["started_utc"]  # never overlapping
    assert all(r["environment"]["timing_lock"]["path"] == str(host_lock) for r in runs)
    waits = [r["environment"]["timing_lock"]["wait_s"] for r in (earlier, later)]
    assert waits[0] > 1.5  # both queued behind the test's hold, and the second behind the first's run too:
    assert waits[1] > 1.5 + _seconds(earlier["timestamps"]), waits
    assert WAITING in logs[0].read_text() and WAITING in logs[1].read_text()


def _seconds(timestamps: dict) -> float:
    """How long a run took, from its record's UTC timestamps."""
    start, end = (datetime.fromisoformat(timestamps[key]) for key in ("started_utc", "finished_utc"))
    return (end - start).total_seconds()
