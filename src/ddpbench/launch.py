"""Run a training launch (torchrun) so that it never outlives the Snakemake that started it,
and so that timed launches on one host never run at the same time:

    python -m ddpbench.launch --watch-pid "$DDPBENCH_SNAKEMAKE_PID" --timing-lock \\
        -- torchrun --standalone --nproc-per-node 2 -m ddpbench.train ...

``--watch-pid``: the process whose death ends the launch. Snakemake runs a job's shell from a
worker thread of its own process, so the job's bash outlives a killed Snakemake (kill -9, an
OOM kill, a lost SSH session) and so would torchrun and its ranks. The launcher checks every
half second that the process is still the one it was (pid and start time, so a reused pid
cannot fool it) and that its own parent (the job's shell) is still there, and otherwise stops
the launch: SIGTERM to torchrun, SIGKILL to whatever is left after ``--grace-s``. It is a
child subreaper, so ranks orphaned by torchrun (each runs in its own session) stay its
descendants and are ended and reaped before it exits; torchrun in turn gets SIGTERM if the
launcher itself is killed.

``--timing-lock``: an exclusive flock taken before torchrun starts and held until every
process of the launch has ended, so launches from any workflow on the host queue one after
another. Without a value, the file is ``$DDPBENCH_TIMING_LOCK_FILE``, else /tmp/ddpbench-timing.lock:
the workflow passes none, so that variable is how a host whose users do not share /tmp gives them
one lock. The child gets ``DDPBENCH_TIMING_LOCK`` (the path), ``DDPBENCH_TIMING_LOCK_WAIT_S``
(seconds spent queueing) and ``DDPBENCH_LAUNCH_TIME`` (when the command was started, after the
wait). The kernel releases the lock when the launcher dies, however it dies.

SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to the command (a second one ends the launch
at once). The exit code is the command's, or 128 + the signal that ended it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from ddpbench.supervise import (
    NotAnAncestorError,
    WatchedProcess,
    become_subreaper,
    dies_with_this_process,
    exit_code,
    handle_signals,
    kill_descendants,
    wait_unreaped,
)

# One path for every workflow and user of the host: /tmp is where all of them can meet. Where they
# cannot (a private /tmp per user or service), DDPBENCH_TIMING_LOCK_FILE names a file they share.
DEFAULT_TIMING_LOCK = "/tmp/ddpbench-timing.lock"
POLL_S = 0.5  # how often the watched process is checked while the command runs
LOCK_POLL_S = 0.1  # how often a queued launch retries the lock
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def log(message: str) -> None:
    print(f"ddpbench.launch: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the watched process


def watch(pid: int | None) -> WatchedProcess | None:
    """The process whose death ends the launch (``--watch-pid``); a pid that is not an ancestor is
    refused before anything starts: its Snakemake has ended, or the pid has been reused."""
    if pid is None:
        return None
    try:
        return WatchedProcess(pid)
    except NotAnAncestorError:
        raise SystemExit(
            f"ddpbench.launch: --watch-pid {pid} is not an ancestor of this launcher (its Snakemake has "
            "ended already, or the pid is wrong): pass the pid of the Snakemake process that runs the job"
        ) from None


# --------------------------------------------------------------------------- the timing lock


def host_timing_lock() -> Path:
    """The lock that ``--timing-lock`` without a value queues on."""
    return Path(os.environ.get("DDPBENCH_TIMING_LOCK_FILE") or DEFAULT_TIMING_LOCK)


def open_lock_file(path: Path) -> int:
    """Open (creating if needed) a lock file that every user of the host can queue on.

    Only read access is needed for flock, so an existing file is opened read-only: that works on
    another user's file, and without O_CREAT also where fs.protected_regular refuses O_CREAT on
    it in a sticky directory such as /tmp. O_NOFOLLOW refuses a planted symlink; O_NONBLOCK keeps
    a planted FIFO from blocking the open; the type check refuses anything but a regular file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        os.fchmod(fd, 0o666)  # the umask would otherwise decide whether other users can open it
    except FileExistsError:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise SystemExit(
                f"ddpbench.launch: cannot open the timing lock {path}: {exc.strerror}; "
                "remove it if it is not a regular file, or pass another --timing-lock"
            ) from exc
    except OSError as exc:
        raise SystemExit(
            f"ddpbench.launch: cannot create the timing lock {path}: {exc.strerror}; "
            "set DDPBENCH_TIMING_LOCK_FILE (or pass --timing-lock) to a file in an existing directory "
            "every user of the host can write"
        ) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SystemExit(
            f"ddpbench.launch: the timing lock {path} is not a regular file; remove it or pass another --timing-lock"
        )
    return fd


def lock_holder(fd: int) -> str:
    """Who holds the flock on ``fd``'s file, from /proc/locks (pid and command line where visible)."""
    st = os.fstat(fd)
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another launch"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id and fields[4].isdigit():
            return describe_process(int(fields[4]))
    return "another launch"


def describe_process(pid: int) -> str:
    """'pid N in DIR (COMMAND)', with what /proc lets us read: the directory names the other workflow."""
    text = f"pid {pid}"
    with contextlib.suppress(OSError):
        text += f" in {os.readlink(f'/proc/{pid}/cwd')}"
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        text += f" ({cmdline[:160]}{'...' if len(cmdline) > 160 else ''})"
    return text


def acquire_timing_lock(path: Path, launch: Launch) -> float | None:
    """Take the exclusive flock, queueing behind any holder; the seconds waited, or None if the
    launch was told to stop while it queued. The lock is held until this process exits.

    Polls rather than blocks, so that a launch whose Snakemake dies, or that is interrupted,
    while it queues gives up its place at once."""
    fd = open_lock_file(path)
    t0 = time.monotonic()
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pass
        if not announced:
            holder = lock_holder(fd)
            log(f"waiting for the timing lock {path} held by {holder}: timed runs on this host go one at a time")
            announced = True
        if launch.reason_to_stop() is not None:
            return None
        time.sleep(LOCK_POLL_S)
    waited = time.monotonic() - t0
    if announced:
        log(f"got the timing lock after {waited:.1f} s")
    return waited


# --------------------------------------------------------------------------- the launch


class Launch:
    """The command's process and the reasons to end it early (a signal, the watched process gone)."""

    def __init__(self, watched: WatchedProcess | None, grace_s: float):
        self.watched, self.grace_s = watched, grace_s
        self.child: subprocess.Popen | None = None
        self.signals: list[int] = []
        self.forwarded = False  # whether the command has been asked to end
        self.kill_deadline: float | None = None
        handle_signals(FORWARDED, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)
        if self.child is not None and not self.forwarded:
            self.ask_to_end()

    def ask_to_end(self) -> None:
        """Pass the signal we got (else SIGTERM) on: torchrun then ends its ranks itself.

        os.kill, not Popen.send_signal: that would reap the command, freeing its pid for reuse."""
        self.forwarded = True
        os.kill(self.child.pid, self.signals[0] if self.signals else signal.SIGTERM)

    def reason_to_stop(self) -> str | None:
        if self.signals:
            return f"got {signal.Signals(self.signals[0]).name}"
        return self.watched.gone() if self.watched is not None else None

    def stop_code(self, returncode: int | None, reason: str | None) -> int:
        """The exit code: the command's, or 128 + the signal that ended it (or that ended us)."""
        if returncode:
            return exit_code(returncode)
        if reason is None:
            return 0 if returncode == 0 else 1
        return 128 + (self.signals[0] if self.signals else signal.SIGTERM)

    def start(self, command: list[str], env: dict[str, str]) -> None:
        # Its own process group: a terminal's Ctrl-C reaches the command once, through us.
        self.child = subprocess.Popen(command, env=env, process_group=0, preexec_fn=dies_with_this_process())  # noqa: PLW1509 (no other threads)

    def supervise(self) -> int:
        """Wait for the command, ending it if asked to or if the watched process dies."""
        reason = None
        while wait_unreaped(self.child.pid, POLL_S if reason is None else 0.1) is None:
            now = time.monotonic()
            if reason is None and (reason := self.reason_to_stop()) is not None:
                log(f"{reason}: ending the launch")
                if not self.forwarded:
                    self.ask_to_end()
                self.kill_deadline = now + self.grace_s
            if reason is not None and (len(self.signals) > 1 or now >= self.kill_deadline):
                log("the launch did not end in time: killing it")
                break
        code = self.stop_code(wait_unreaped(self.child.pid, 0), reason)
        self.end_every_descendant()
        return code

    def end_every_descendant(self) -> None:
        """SIGKILL whatever the launch left (orphaned ranks are ours: we are a subreaper) and reap it."""
        self.forwarded = True  # the command's pid is about to be reaped: a late signal must not reach its reuser
        if left := kill_descendants(max(self.grace_s, 5.0)):
            log(f"processes {left} did not end after SIGKILL (uninterruptible sleep?)")


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ddpbench.launch",
        description="Run a training launch that ends with the process that started it and, with "
        "--timing-lock, never overlaps another timed launch on this host.",
        usage="%(prog)s [--watch-pid PID] [--timing-lock PATH] [--grace-s S] -- COMMAND [ARG ...]",
    )
    p.add_argument(
        "--watch-pid", type=int, help="end the launch when this ancestor (Snakemake) or the launcher's parent ends"
    )
    p.add_argument(
        "--timing-lock",
        type=Path,
        nargs="?",
        const=host_timing_lock(),
        help="queue on an exclusive flock of this file before starting (without a value: "
        f"$DDPBENCH_TIMING_LOCK_FILE, else {DEFAULT_TIMING_LOCK})",
    )
    p.add_argument("--grace-s", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default 10)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no command given: put it after --, e.g. -- torchrun --standalone ...")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ranks that torchrun leaves behind are reparented to us, not to init: we can end and reap them.
    become_subreaper()
    launch = Launch(watch(args.watch_pid), args.grace_s)
    env = dict(os.environ)
    if args.timing_lock is not None and (waited := acquire_timing_lock(args.timing_lock, launch)) is not None:
        env.update(DDPBENCH_TIMING_LOCK=str(args.timing_lock.absolute()), DDPBENCH_TIMING_LOCK_WAIT_S=f"{waited:.3f}")
    if (reason := launch.reason_to_stop()) is not None:
        log(f"{reason}: not starting the launch")
        return launch.stop_code(None, reason)
    env["DDPBENCH_LAUNCH_TIME"] = f"{time.time():.6f}"
    try:
        launch.start(args.command, env)
    except OSError as exc:
        log(f"cannot start {args.command[0]}: {exc.strerror}")
        return 127 if exc.errno == errno.ENOENT else 126
    return launch.supervise()  # the lock is released when we exit, after every process of the launch


if __name__ == "__main__":
    sys.exit(main())
