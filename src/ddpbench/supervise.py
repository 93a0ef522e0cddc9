"""Process supervision for ddpbench's launchers (ddpbench.launch, ddpbench.netem) and its ranks
(ddpbench.distributed): what keeps a launch from outliving whoever started it, and a killed launch
from leaving processes behind. No torch here: the launchers import it, once per job.

* Parent-death signals: a child started with ``dies_with_this_process()`` gets SIGTERM when this
  process dies, however it dies (SIGKILL included); ``die_with_parent`` does the same for this
  process itself.
* A subreaper (``become_subreaper``): descendants orphaned by a child (a rank in its own session)
  are reparented to this process, not to init, so ``kill_descendants`` can end and reap them.
* Watching a pid: ``WatchedProcess`` tells a process from a later one given the same pid (by its
  start time), ``proc_stat`` reads what /proc says of a pid, ``pid_exists`` whether it is there.
* Waiting without reaping (``wait_unreaped``): a child not yet reaped keeps its pid, so a signal
  sent to that pid cannot reach a stranger that was given it.
* Grace-then-kill (``end_processes``), signal handlers installed and restored
  (``handle_signals``, ``exit_on_signals``), and children's output relayed line by line
  (``relay_output``).
* Ending a finished torch process (``exit_finished``) without the interpreter's teardown.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, NoReturn

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36  # from <linux/prctl.h>


def _prctl(option: int, value: int) -> int:
    return ctypes.CDLL(None, use_errno=True).prctl(option, value)


# --------------------------------------------------------------------------- parent-death signals, subreaper


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; kept across exec)."""
    _prctl(PR_SET_PDEATHSIG, sig)


def dies_with_this_process(then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for Popen: the child gets SIGTERM when this process dies, however it dies,
    and exits at once if this process died before that took effect; ``then`` runs after, in the
    child (say, to set its CPUs). Start no threads before forking with it: preexec_fn and threads
    do not mix."""
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)
        if then is not None:
            then()

    return preexec


def become_subreaper() -> None:
    """Descendants that lose their parent are reparented to this process, not to init."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def exit_finished(code: int | None) -> NoReturn:
    """End a process whose work is done and written: its atexit handlers run and its output is
    flushed, but not the interpreter's teardown. A torch process spends 1.5-2.5 s freeing its modules
    and tensors there, which its torchrun agent, and so every launch, would wait for; nothing
    measured includes it. Call it only after success: a failure keeps the normal path (tracebacks,
    torchrun's error file). ``code`` is as sys.exit's: None is 0 (torchrun's @record returns None
    for a SystemExit(0), such as --help's)."""
    atexit._run_exitfuncs()  # what the process registered to do at exit (logging, torch's pools)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing to flush into
            stream.flush()
    os._exit(0 if code is None else code)


# --------------------------------------------------------------------------- /proc: watching a pid


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name before ")" may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def pid_exists(pid: int) -> bool:
    """Whether a process (a zombie included) has this pid, whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ancestors() -> list[int]:
    """This process's parent, its parent's parent, ... up to (not including) pid 0."""
    chain, pid = [], os.getppid()
    while pid > 0 and pid not in chain:
        chain.append(pid)
        info = proc_stat(pid)
        pid = info[1] if info else 0
    return chain


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := proc_stat(int(entry))) is not None:
            children.setdefault(info[1], []).append(int(entry))
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


class NotAnAncestorError(ValueError):
    """The pid to watch is not an ancestor of this process (it has ended already, or is wrong)."""


class WatchedProcess:
    """The ancestor whose death ends a launch (Snakemake), by pid and start time, so that a later
    process given the same pid is not it.

    The launcher's parent (the job's shell) is watched too: if it is killed while Snakemake lives
    on, Snakemake counts the job as failed, and the launch must not go on to write its output."""

    def __init__(self, pid: int):
        self.parent = os.getppid()
        if pid not in ancestors():
            raise NotAnAncestorError(pid)
        self.pid = pid
        self.start_ticks = proc_stat(pid)[2]

    def gone(self) -> str | None:
        """Why the launch has lost the process that started it, or None while it has not."""
        info = proc_stat(self.pid)
        if info is None or info[0] in "ZX" or info[2] != self.start_ticks:
            return f"the watched process {self.pid} (Snakemake) has ended"
        if os.getppid() != self.parent:
            return f"the launcher's parent {self.parent} (the job's shell) has ended"
        return None


# --------------------------------------------------------------------------- waiting, ending, reaping


def exit_code(returncode: int) -> int:
    """A child's Popen returncode as a shell's exit code: 128 + the signal for one that a signal ended."""
    return 128 - returncode if returncode < 0 else returncode


def wait_unreaped(pid: int, timeout: float) -> int | None:
    """Wait up to ``timeout`` s for child ``pid`` to exit, leaving it unreaped (its pid cannot be
    reused meanwhile); its returncode as Popen has it (-N: signal N), or None while it runs."""
    deadline = time.monotonic() + timeout
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def signal_all(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids``, passing over those that have ended meanwhile."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_descendants(timeout_s: float) -> list[int]:
    """SIGKILL every descendant of this process and reap them (a subreaper's orphans included);
    those still there after ``timeout_s`` are returned (uninterruptible sleep?), else []."""
    deadline = time.monotonic() + timeout_s
    while pids := descendants(os.getpid()):
        signal_all(pids, signal.SIGKILL)
        reap_children()
        if time.monotonic() > deadline:
            return pids
        time.sleep(0.05)
    reap_children()
    return []


def reap_children() -> None:
    """Reap every child that has exited, without waiting for those that have not."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_processes(procs: Iterable[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM each process still running (a torchrun agent then ends its ranks), SIGKILL those left
    after ``grace_s``; every one is reaped."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- signals


def handle_signals(signals: Iterable[int], handler: Any) -> dict[int, Any]:
    """Install ``handler`` (a function, SIG_IGN or SIG_DFL) for each of ``signals``; the handlers
    they had, for ``restore_signals``."""
    return {sig: signal.signal(sig, handler) for sig in signals}


def restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def exit_on_signals(signals: Iterable[int], received: list[int] | None = None) -> dict[int, Any]:
    """Turn each of ``signals`` into SystemExit(128 + the signal), noted in ``received``, so that
    ``finally`` blocks and context managers' exits run (clean-up that a default SIGTERM skips);
    the previous handlers."""

    def leave(signum: int, frame: object) -> None:
        if received is not None:
            received.append(signum)
        raise SystemExit(128 + signum)

    return handle_signals(signals, leave)


# --------------------------------------------------------------------------- relaying children's output


def relay_output(procs: Sequence[subprocess.Popen], prefixes: Sequence[bytes]) -> None:
    """Copy each process's stdout and stderr (pipes, in bytes) to ours, line by line, each line
    after its process's prefix, from daemon threads: lines of different processes never mix."""
    lock = threading.Lock()
    for proc, prefix in zip(procs, prefixes, strict=True):
        for stream, sink in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
            threading.Thread(target=_relay, args=(stream, sink, prefix, lock), daemon=True).start()


def _relay(stream: IO[bytes], sink: IO[bytes], prefix: bytes, lock: threading.Lock) -> None:
    """Reads to the end even where our own output has gone, so that no child blocks on a full pipe."""
    for line in iter(stream.readline, b""):
        with lock, contextlib.suppress(OSError, ValueError):
            sink.write(prefix + line)
            sink.flush()
    stream.close()
