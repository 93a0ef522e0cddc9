"""Per-process accounting for bench/suite_cpu.py: every Python process started with this folder on
PYTHONPATH appends one JSON line at exit to $SUITE_CPU_PROCESSES (its command, CPU seconds, wall
seconds since start, whether it imported torch and torch._dynamo, and the test that started it).
A process killed by a signal, or one that ends through os._exit, writes nothing."""

import atexit
import json
import os
import resource
import sys
import time

_STARTED = time.monotonic()


def _record() -> None:
    path = os.environ.get("SUITE_CPU_PROCESSES")
    if not path:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = {
        "argv": list(sys.argv[:4]),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": time.monotonic() - _STARTED,
        "torch": "torch" in sys.modules,
        "dynamo": "torch._dynamo" in sys.modules,
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
    }
    with open(path, "a") as fh:  # one short line in append mode: lines from processes do not interleave
        fh.write(json.dumps(line) + "\n")


atexit.register(_record)
