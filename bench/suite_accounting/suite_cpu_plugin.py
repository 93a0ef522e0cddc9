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


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_protocol(item, nextitem):
    own0, children0 = _cpu()
    t0 = time.monotonic()
    try:
        return (yield)
    finally:
        own1, children1 = _cpu()
        line = {
            "test": item.nodeid,
            "module": item.nodeid.split("::")[0],
            "wall_s": time.monotonic() - t0,
            "cpu_s": own1 - own0 + children1 - children0,
            "worker": os.environ.get("PYTEST_XDIST_WORKER", ""),
            "alone": item.get_closest_marker("alone") is not None,
        }
        with open(os.environ["SUITE_CPU_TESTS"], "a") as fh:
            fh.write(json.dumps(line) + "\n")
