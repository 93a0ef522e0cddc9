"""Per-process accounting for bench/suite_cpu.py: every Python process started with this folder on
PYTHONPATH appends one JSON line at exit to $SUITE_CPU_PROCESSES (its command, CPU seconds, wall
seconds since start, whether it imported torch and torch._dynamo, and the test that started it).
A process killed by a signal, or one that ends through os._exit, writes nothing; nor does a Python
started with -I or -E, or with a PYTHONPATH of its own."""

import atexit
import importlib
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
        "argv": [arg[:200] for arg in sys.argv[:4]],
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": time.monotonic() - _STARTED,
        "torch": "torch" in sys.modules,
        "dynamo": "torch._dynamo" in sys.modules,
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
    }
    try:  # one short write in append mode, so that lines from many processes do not interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:  # the run's records are gone (a straggler after the suite): say nothing on stderr
        pass


def _chain_next_sitecustomize() -> None:
    """Import the sitecustomize this one shadows (Debian's, a coverage set-up), as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved, module = list(sys.path), sys.modules.pop("sitecustomize", None)
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if module is not None:
            sys.modules["sitecustomize"] = module


atexit.register(_record)
_chain_next_sitecustomize()
