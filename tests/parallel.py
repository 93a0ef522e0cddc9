"""The suite runs two tests at a time (pytest-xdist: pyproject's addopts ``-n 2 --dist loadscope``,
so a module's tests, and its module-scoped set-up, stay on one worker). What that needs:

- a test whose assertions rest on timings (marked ``alone``) has the machine to itself: it waits
  for the other worker's test (or collection) to end, and the other waits for it (``machine_share``);
- each worker's timed launches queue on a timing lock of their own (``DDPBENCH_TIMING_LOCK_FILE``),
  not on the host's, so that two workers' workflows run side by side. Their timings then share
  the cores, which only ``alone`` tests may rely on not happening;
- a session's costly set-up is made once for every worker (``once_per_run``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from ddpbench.launch import open_lock_file

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... in a worker; None without xdist


def run_root(basetemp: Path) -> Path:
    """The folder every worker of this run shares: the parent of the workers' own basetemps."""
    return basetemp.parent if WORKER else basetemp


@contextlib.contextmanager
def flocked(path: Path, mode: int) -> Iterator[None]:
    """``path`` flocked in ``mode``, opened as ddpbench.launch opens a timing lock (so that a test
    can also hold the host's, which may be another user's file in /tmp)."""
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def machine_share(root: Path, alone: bool) -> Iterator[None]:
    """A share of the machine for one test, across the run's workers: shared by default, the whole
    machine when ``alone``. Every test passes the turnstile to take its share, and one that wants
    the machine alone waits in it for the shared holders to end, so that no new one starts
    meanwhile (flock alone would let the other worker's next tests overtake it for as long as
    they keep coming)."""
    if WORKER is None:  # one test at a time already
        yield
        return
    with contextlib.ExitStack() as held:
        with flocked(root / "machine.turnstile", fcntl.LOCK_EX):
            held.enter_context(flocked(root / "machine.share", fcntl.LOCK_EX if alone else fcntl.LOCK_SH))
        yield


def own_timing_lock(basetemp: Path) -> None:
    """Point this worker's timed launches (``ddpbench.launch --timing-lock``) at a lock of its own."""
    if WORKER is not None:
        os.environ["DDPBENCH_TIMING_LOCK_FILE"] = str(basetemp / "timing.lock")


def once_per_run(
    basetemp: Path, name: str, build: Callable[[Path], tuple[Path, subprocess.CompletedProcess]]
) -> tuple[Path, subprocess.CompletedProcess]:
    """``build(folder)`` done once for all of the run's workers: the first to come builds it in the
    shared folder while the others wait, and each gets the folder and the build's CompletedProcess."""
    root = run_root(basetemp)
    record = root / f"{name}.json"
    with flocked(root / f"{name}.lock", fcntl.LOCK_EX):
        if not record.exists():
            path, result = build(root / name / "workflow")
            done = {"path": str(path), "args": result.args, "returncode": result.returncode}
            record.write_text(json.dumps(done | {"stdout": result.stdout, "stderr": result.stderr}))
        done = json.loads(record.read_text())
    result = subprocess.CompletedProcess(done["args"], done["returncode"], done["stdout"], done["stderr"])
    return Path(done["path"]), result
