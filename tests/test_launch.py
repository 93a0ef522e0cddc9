"""The training launcher (ddpbench.launch), with real processes: a launch ends with the Snakemake
that started it, launches sharing a timing lock never overlap, and Ctrl-C ends the launch."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import alive, child_env

LAUNCH = [sys.executable, "-m", "ddpbench.launch"]

# Stands in for torchrun: starts a "rank" in its own session (as torchrun does) and waits for it.
# The rank records its pid, sleeps, then writes a result: what an orphaned launch would do.
FAKE_TORCHRUN = textwrap.dedent(
    """
    import subprocess, sys
    rank = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
            "time.sleep(float(sys.argv[3])); open(sys.argv[2], 'w').write('result')")
    sys.exit(subprocess.call([sys.executable, "-c", rank, *sys.argv[1:]], start_new_session=True))
    """
)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def lock_is_free(path: Path) -> bool:
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def fake_snakemake(job: str) -> subprocess.Popen:
    """A process that runs ``job`` as Snakemake runs a job's shell: Popen(shell=True) with bash,
    from a worker thread. Its own session, so that a test can clean up after it."""
    code = textwrap.dedent(
        f"""
        import subprocess, threading
        job = threading.Thread(target=subprocess.run, args=({job!r},), kwargs=dict(shell=True, executable="bash"))
        job.start(); job.join()
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], env=child_env(), start_new_session=True)


ORPHAN_WRITES_AFTER_S = 3  # when the fake rank would write its result, counted from its start


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow  # waits past the moment an orphaned rank would write (4 s)
@pytest.mark.parametrize("killed", ["snakemake", "job_shell"])
def test_killed_snakemake_ends_the_launch_and_frees_the_lock(tmp_path, killed):
    """kill -9 of Snakemake (or of the job's shell while Snakemake lives on): the launch, down to a
    rank in its own session, is gone within seconds, never writes its result, and the lock is free."""
    pid_file, result, lock = tmp_path / "rank.pid", tmp_path / "result", tmp_path / "timing.lock"
    (tmp_path / "fake_torchrun.py").write_text(FAKE_TORCHRUN)
    parent = fake_snakemake(
        f"set -euo pipefail; {' '.join(LAUNCH)} --watch-pid $PPID --timing-lock {lock} --grace-s 2"
        f" -- {sys.executable} {tmp_path / 'fake_torchrun.py'} {pid_file} {result} {ORPHAN_WRITES_AFTER_S}"
    )
    rank = None
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, "the rank to start")
        started = time.monotonic()
        rank = int(pid_file.read_text())
        assert not lock_is_free(lock)
        job_shell = parent_of(parent_of(parent_of(rank)))  # rank <- fake torchrun <- launcher <- bash
        os.kill(parent.pid if killed == "snakemake" else job_shell, signal.SIGKILL)
        killed_after = time.monotonic() - started
        assert killed_after < ORPHAN_WRITES_AFTER_S - 1, f"too slow to tell: killed {killed_after:.1f}s after the start"
        wait_for(lambda: not alive(rank), 5, "the orphaned rank to end")
        wait_for(lambda: lock_is_free(lock), 5, "the timing lock to be released")
        time.sleep(max(0.0, ORPHAN_WRITES_AFTER_S + 1 - (time.monotonic() - started)))  # past its moment to write
        assert not result.exists()
    finally:
        if rank is not None:
            kill_quietly(rank)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # the fake Snakemake, its job's shell and the launcher
        parent.wait()


def test_a_queued_launch_whose_snakemake_dies_never_starts(tmp_path):
    lock, ran = tmp_path / "timing.lock", tmp_path / "ran"
    holder = subprocess.Popen([*LAUNCH, "--timing-lock", str(lock), "--", "sleep", "30"], env=child_env())
    parent = None
    try:
        wait_for(lambda: lock.exists() and not lock_is_free(lock), 20, "the first launch to take the lock")
        parent = fake_snakemake(
            f"{' '.join(LAUNCH)} --watch-pid $PPID --timing-lock {lock} -- touch {ran} 2> {tmp_path / 'queued.err'}"
        )
        wait_for(lambda: "waiting for the timing lock" in _text(tmp_path / "queued.err"), 20, "the second to queue")
        parent.kill()
        parent.wait()
        wait_for(lambda: "not starting the launch" in _text(tmp_path / "queued.err"), 5, "the queued launch to give up")
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=10) == 128 + signal.SIGTERM
        time.sleep(0.5)
        assert not ran.exists()
    finally:
        for proc in (holder, parent):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if parent is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(parent.pid, signal.SIGKILL)


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_launches_sharing_a_timing_lock_run_one_after_the_other(tmp_path):
    """Two launches (as from two workflows) on one lock: the second starts only after the first
    has ended, says whom it waits for, and passes the wait to its command."""
    lock, gate = tmp_path / "timing.lock", tmp_path / "gate"

    def start(name: str) -> subprocess.Popen:
        # The first launch's command holds the lock until the test opens the gate.
        script = (
            f"date +%s.%N > {name}.start; while [ ! -e {gate} ]; do sleep 0.05; done;"
            f" echo $DDPBENCH_TIMING_LOCK_WAIT_S > {name}.wait;"
            f" echo $DDPBENCH_TIMING_LOCK > {name}.lock; date +%s.%N > {name}.end"
        )
        with open(tmp_path / f"{name}.err", "w") as err:
            return subprocess.Popen(
                [*LAUNCH, "--timing-lock", str(lock), "--", "bash", "-c", script],
                cwd=tmp_path,
                env=child_env(),
                stderr=err,
            )

    first = start("first")
    second = None
    try:
        wait_for(lambda: (tmp_path / "first.start").exists(), 20, "the first launch to start")
        second = start("second")
        wait_for(lambda: "waiting for the timing lock" in _text(tmp_path / "second.err"), 20, "the second to queue")
        time.sleep(0.7)  # a wait the second one must report
        assert not (tmp_path / "second.start").exists()
        gate.touch()
        assert first.wait(timeout=20) == 0 and second.wait(timeout=20) == 0, _text(tmp_path / "second.err")
    finally:
        gate.touch()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    second_err = _text(tmp_path / "second.err")
    times = {name: float((tmp_path / name).read_text()) for name in ("first.end", "second.start", "second.wait")}
    assert times["second.start"] >= times["first.end"]
    assert times["second.wait"] > 0.5
    assert float((tmp_path / "first.wait").read_text()) < 0.5
    assert (tmp_path / "second.lock").read_text().strip() == str(lock)
    assert f"waiting for the timing lock {lock} held by pid {first.pid}" in second_err
    assert (lock.stat().st_mode & 0o777) == 0o666  # other users of the host can queue on it too


@pytest.mark.parametrize("child_obeys", [True, False])
def test_ctrl_c_is_forwarded_and_the_launch_ends(tmp_path, child_obeys):
    """SIGINT to the launcher reaches the command, which ends; a command that ignores it is killed
    after the grace period. Either way the launcher exits non-zero and leaves no process behind."""
    started, got = tmp_path / "started", tmp_path / "got_sigint"
    handler = "sys.exit(130)" if child_obeys else "None"
    child = (
        f"import os, signal, sys, time\n"
        f"def on_int(*_):\n    open({str(got)!r}, 'w').write('yes'); {handler}\n"
        f"signal.signal(signal.SIGINT, on_int)\nopen({str(started)!r}, 'w').write(str(os.getpid()))\n"
        f"time.sleep(60)\nwhile True: time.sleep(60)\n"
    )
    proc = subprocess.Popen([*LAUNCH, "--grace-s", "1", "--", sys.executable, "-c", child], env=child_env())
    child_pid = None
    try:
        wait_for(lambda: started.exists() and started.read_text(), 20, "the command to start")
        child_pid = int(started.read_text())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if child_pid is not None:
            kill_quietly(child_pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert got.exists(), "the command never got the SIGINT"
    assert code == 130
    assert not alive(child_pid)
    if child_obeys:
        assert elapsed < 3  # at once
    else:
        assert 1 <= elapsed < 5  # after the 1 s grace period


def test_killed_launcher_takes_its_command_along(tmp_path):
    """kill -9 of the launcher itself: the command gets SIGTERM and the lock is free again."""
    started, lock = tmp_path / "started", tmp_path / "timing.lock"
    child = f"import os, time; open({str(started)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = subprocess.Popen([*LAUNCH, "--timing-lock", str(lock), "--", sys.executable, "-c", child], env=child_env())
    child_pid = None
    try:
        wait_for(lambda: started.exists() and started.read_text(), 20, "the command to start")
        child_pid = int(started.read_text())
        proc.kill()
        proc.wait()
        wait_for(lambda: not alive(child_pid), 5, "the command to end")
        assert lock_is_free(lock)
    finally:
        if child_pid is not None:
            kill_quietly(child_pid)


def test_exit_code_is_the_commands():
    for script, code in [("exit 3", 3), ("kill -9 $$", 128 + 9)]:
        assert subprocess.run([*LAUNCH, "--", "bash", "-c", script], check=False, env=child_env()).returncode == code


def test_a_watched_pid_that_is_not_an_ancestor_is_refused(tmp_path):
    """A stale pid (Snakemake already gone, the pid reused by another process) starts nothing."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        result = subprocess.run(
            [*LAUNCH, "--watch-pid", str(other.pid), "--", "touch", str(tmp_path / "ran")],
            check=False,
            env=child_env(),
            capture_output=True,
            text=True,
        )
    finally:
        other.kill()
        other.wait()
    assert result.returncode != 0 and "not an ancestor" in result.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_planted_lock_path_is_refused(tmp_path, planted):
    """In a world-writable directory someone else may have created the path: only a regular file is used."""
    lock = tmp_path / "timing.lock"
    if planted == "symlink":
        lock.symlink_to(tmp_path / "target")
    else:
        os.mkfifo(lock)
    result = subprocess.run(
        [*LAUNCH, "--timing-lock", str(lock), "--", "touch", str(tmp_path / "ran")],
        check=False,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode != 0 and str(lock) in result.stderr, result.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "target").exists()


def test_a_bare_timing_lock_is_the_file_the_host_names(tmp_path):
    """`--timing-lock` without a value (as the workflow passes it) queues on $DDPBENCH_TIMING_LOCK_FILE
    where it is set, the file a host whose users do not share /tmp gives them all."""
    lock = tmp_path / "shared.lock"
    env = child_env() | {"DDPBENCH_TIMING_LOCK_FILE": str(lock)}
    code = "import os; print(os.environ['DDPBENCH_TIMING_LOCK'])"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [*LAUNCH, "--timing-lock", "--", sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert proc.poll() is None  # queued behind this test's hold on that file
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"waiting for the timing lock {lock}" in err and out.strip() == str(lock)
