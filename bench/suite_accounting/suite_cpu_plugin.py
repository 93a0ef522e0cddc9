"""Per-test accounting for bench/suite_cpu.py (``pytest -p suite_cpu_plugin``): each test's wall
seconds, its worker's CPU seconds and those of the processes it started and reaped (SLURM jobs run
under slurmd, so theirs are not here), its module, worker and whether it is marked ``alone``; one
JSON line per test to $SUITE_CPU_TESTS. Inside the suite's own wrappers (trylast), so a test's
wait for its share of the machine (tests/parallel.py) is not counted as its wall time."""

import json
import os
import resource
import time

import pytest


def cpu_s_self_and_reaped() -> float:
    """This process's CPU seconds and those of the children it has reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("SUITE_CPU_TESTS")
    if not path:  # loaded without bench/suite_cpu.py: record nothing, change nothing
        return (yield)
    cpu_before, t0 = cpu_s_self_and_reaped(), time.monotonic()
    try:
        return (yield)
    finally:
        line = {
            "test": item.nodeid,
            "module": item.nodeid.split("::")[0],
            "wall_s": time.monotonic() - t0,
            "cpu_s": cpu_s_self_and_reaped() - cpu_before,
            "worker": os.environ.get("PYTEST_XDIST_WORKER", ""),
            "alone": item.get_closest_marker("alone") is not None,
        }
        with open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
