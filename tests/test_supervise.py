"""ddpbench.supervise, piece by piece and fast: /proc, waiting without reaping, grace-then-kill,
parent-death signals, the subreaper, signal handlers and the output relay. The launchers'
behaviour as a whole (kill -9 of Snakemake, Ctrl-C) is in test_launch.py and test_emulated_run.py."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import child_env

from ddpbench import supervise

PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids are below it: no process has it


def test_proc_stat_and_pid_exists():
    state, parent, start = supervise.proc_stat(os.getpid())
    assert state == "R" and parent == os.getppid() and start > 0
    assert supervise.proc_stat(PID_MAX) is None
    assert supervise.pid_exists(os.getpid()) and not supervise.pid_exists(PID_MAX)
    assert supervise.ancestors()[0] == os.getppid()


def test_wait_unreaped_leaves_the_pid_taken():
    for script, returncode in [("exit 3", 3), ("kill -9 $$", -9)]:
        proc = subprocess.Popen(["bash", "-c", script])
        assert supervise.wait_unreaped(proc.pid, 10) == returncode
        assert supervise.proc_stat(proc.pid)[0] == "Z"  # exited, not reaped: the pid is not free for reuse
        assert proc.wait() == returncode
        assert supervise.exit_code(returncode) == (3 if returncode == 3 else 137)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert supervise.wait_unreaped(sleeper.pid, 0.1) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_end_processes_kills_what_ignores_sigterm():
    ignores = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(30)"
    )
    stubborn = subprocess.Popen([sys.executable, "-c", ignores], stdout=subprocess.PIPE)
    obeys = subprocess.Popen(["sleep", "30"])
    stubborn.stdout.readline()  # its handler is in place
    t0 = time.monotonic()
    supervise.end_processes([obeys, stubborn], grace_s=0.5)
    assert (obeys.returncode, stubborn.returncode) == (-signal.SIGTERM, -signal.SIGKILL)
    assert 0.5 <= time.monotonic() - t0 < 5


# A "launcher" that starts a child with dies_with_this_process, and a rank that leaves its parent
# behind in its own session; it prints both pids, then is SIGKILLed (by itself) or ends them all.
LAUNCHER = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    from ddpbench import supervise
    supervise.become_subreaper()
    child = subprocess.Popen(["sleep", "60"], preexec_fn=supervise.dies_with_this_process())
    orphaner = subprocess.Popen(["bash", "-c", "setsid sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True)
    orphan = int(orphaner.stdout.readline())
    orphaner.wait()
    print(child.pid, orphan, supervise.proc_stat(orphan)[1] == os.getpid(), flush=True)
    if sys.argv[1] == "kill -9":
        os.kill(os.getpid(), signal.SIGKILL)
    print(supervise.kill_descendants(5), supervise.descendants(os.getpid()), flush=True)
    """
)


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while (info := supervise.proc_stat(pid)) is not None and info[0] not in "ZX":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("end", ["kill -9", "kill_descendants"])
def test_children_end_with_their_launcher(end):
    """A child started with dies_with_this_process dies with a SIGKILLed launcher; an orphan in its
    own session is the subreaper's, and kill_descendants ends and reaps it."""
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, end], stdout=subprocess.PIPE, text=True, env=child_env())
    child, orphan, adopted = proc.stdout.readline().split()
    try:
        assert adopted == "True"
        if end == "kill -9":
            assert _gone(int(child))
        else:
            assert proc.stdout.readline().strip() == "[] []"
            assert _gone(int(child)) and _gone(int(orphan))
    finally:
        for pid in (int(child), int(orphan)):
            supervise.signal_all([pid], signal.SIGKILL)
        proc.wait(timeout=10)


def test_watched_process_must_be_an_ancestor():
    assert supervise.WatchedProcess(os.getppid()).gone() is None
    sibling = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(supervise.NotAnAncestorError):
            supervise.WatchedProcess(sibling.pid)
    finally:
        sibling.kill()
        sibling.wait()


def test_exit_on_signals_raises_and_restores():
    received: list[int] = []
    previous = supervise.exit_on_signals([signal.SIGHUP], received)
    try:
        with pytest.raises(SystemExit) as exited:
            signal.raise_signal(signal.SIGHUP)
        assert (exited.value.code, received) == (128 + signal.SIGHUP, [signal.SIGHUP])
    finally:
        supervise.restore_signals(previous)
    assert signal.getsignal(signal.SIGHUP) == previous[signal.SIGHUP]


def test_relay_prefixes_lines_and_reads_past_a_closed_sink():
    sink, lock = io.BytesIO(), threading.Lock()
    supervise._relay(io.BytesIO(b"one\ntwo\n"), sink, b"[node 1] ", lock)
    assert sink.getvalue() == b"[node 1] one\n[node 1] two\n"
    stream = io.BytesIO(b"lost\n" * 3)
    sink.close()  # our own output has gone: the child's pipe is still drained
    supervise._relay(stream, sink, b"", lock)
    assert stream.closed


def test_exit_finished_keeps_the_exit_code_the_atexit_handlers_and_the_buffered_output():
    """What a finished rank relies on when it skips the interpreter's teardown: its code reaches
    torchrun, what it registered to do at exit runs, and output still in a buffer is not lost."""
    script = textwrap.dedent(
        """
        import atexit, logging, sys
        from ddpbench.supervise import exit_finished
        logging.basicConfig(stream=sys.stderr)
        atexit.register(lambda: print("at exit", end=""))
        sys.stdout.write("buffered, ")
        logging.getLogger("rank").warning("logged")
        exit_finished(3)
        print("never")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=60)
    assert done.returncode == 3
    assert done.stdout == "buffered, at exit"
    assert "logged" in done.stderr
