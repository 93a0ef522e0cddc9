"""The `snakemake` command line, with its imports paid once: for the many short Snakemake calls
(dry runs, configs refused before any job) that the fast test tier makes.

Run as a script, this file is a small server: it imports snakemake.cli (most of a dry run's two
seconds), then for each request read from stdin forks a child that does what the `snakemake`
console script does (``snakemake.cli:main`` with the arguments, in the request's directory, its
output in two files) and answers with the child's exit status. Each child starts from the same
state, the freshly imported module, as a new `snakemake` process would, and exits through the
interpreter's own shutdown. The server imports nothing of ddpbench: the workflow under test imports
its own copy, as it does from the console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path


def _child(request: dict) -> None:
    """In the forked child: become `snakemake ARGS` in the request's directory. Never returns."""
    os.chdir(request["cwd"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if request.get("timeout"):
        import signal

        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(request["timeout"]))
    sys.argv = [request["argv0"], *request["args"]]
    from snakemake.cli import main
    from snakemake.workflow import Workflow

    # The one piece of state Snakemake takes from the directory it is imported in (the log's "Run directory").
    Workflow._rundir = os.getcwd()

    try:
        main(request["args"])
    except SystemExit:
        raise
    except BaseException:  # as the console script: the traceback, and status 1
        import traceback

        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)


# Imported by every `snakemake` call here, the Snakefile's included (jsonschema and yaml, for
# ddpbench.plan): what each child would otherwise import again. Nothing of ddpbench.
PRELOAD = (
    "snakemake.cli",
    "snakemake.profiles",
    "snakemake.report.html_reporter",
    "snakemake.storage",
    "smart_open",
    "jsonschema",
    "yaml",
)


def serve() -> None:
    import importlib

    import snakemake.cli

    for name in PRELOAD:  # the cost every child shares
        importlib.import_module(name)
    # And the plugin registries (singletons: every installed executor, storage, report, logger and
    # scheduler plugin, found by scanning sys.path), which building the argument parser collects.
    snakemake.cli.get_argument_parser()

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)  # ends in SystemExit, which unwinds to the interpreter's shutdown
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


class SnakemakeCLI:
    """The client: ``run(args, cwd)`` returns what ``subprocess.run(["snakemake", *args], cwd=cwd)``
    would (its output as text), from one long-lived server process."""

    def __init__(self, python: str, argv0: str, env: dict, scratch: Path):
        self.argv0, self.scratch = argv0, scratch
        self.calls = 0
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [python, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        with self.lock:
            self.calls += 1
            out, err = self.scratch / f"{self.calls}.out", self.scratch / f"{self.calls}.err"
            request = {"cwd": str(cwd), "argv0": self.argv0, "args": list(args), "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps({**request, "timeout": timeout}) + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
            if not answer:
                raise RuntimeError(f"the snakemake server ended (status {self.proc.poll()})")
            code = json.loads(answer)["returncode"]
            return subprocess.CompletedProcess(["snakemake", *args], code, out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    serve()
