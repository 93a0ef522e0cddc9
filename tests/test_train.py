"""The training engine through torchrun: real gloo process groups on this machine.

Launches are what these tests cost (python, torch and torchrun start in every process): the runs
that tests only read are launched once per module, side by side (``launches``, from the table
``LAUNCHES``), and each test asserts its part. The tests that stop or kill a rank launch their own,
since they time how fast the launch ends: one at a time, except the one that waits out torchrun's
grace for a stopped rank, which is started first and spends that wait beside the others (``stopped_rank``)."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from conftest import RUN_SCHEMA, alive, child_env, needs_cxx, run, torchrun_cmd

EPOCH_LINE = re.compile(
    r"^Epoch \[(\d+)/(\d+)\] \| Loss: [\d.]+ \| Train Acc: [\d.]+% \| Test Acc: ([\d.]+)% \| Time: [\d.]+s$", re.M
)
SHARED_SEGMENTS = "ddpbench-grads-*"  # the shared-memory exchange's files in /dev/shm

# --------------------------------------------------------------------------- the module's launches

# name: (ranks, options after --data/--out; the cache a launch trains on: "cache" or a damaged copy)
LAUNCHES = {
    # torch.compile through DDP (the longest: inductor builds the step's code): small buckets, so
    # DDPOptimizer splits the graph; the same seed and epochs as "backend".
    "compiled": (2, ["--epochs", "3", "--seed", "1", "--bucket-cap-mb", "1", "--compile", "default"], "cache"),
    # DDP's own all-reduce with every default: a valid result, DDP's default buckets, and the gloo
    # side of the shared-memory comparison.
    "backend": (2, ["--epochs", "3", "--seed", "1"], "cache"),
    "shared_memory": (2, ["--epochs", "3", "--seed", "1", "--allreduce", "shared_memory", "--quiet"], "cache"),
    # DDP settings, each compared with the default run; the first also logs verbosely (timestamped
    # lines from every rank).
    "small_buckets": (2, ["--epochs", "1", "--max-train-samples", "512", "--bucket-cap-mb", "1", "--verbose"], "cache"),
    "fp16": (
        2,
        ["--epochs", "1", "--max-train-samples", "512", "--comm-hook", "fp16", "--static-graph", "true", "--quiet"],
        "cache",
    ),
    # One rank, twice with the same seed.
    "ws1_a": (1, ["--epochs", "1", "--max-train-samples", "512", "--quiet"], "cache"),
    "ws1_b": (1, ["--epochs", "1", "--max-train-samples", "512", "--quiet"], "cache"),
    # Refused before training (with two ranks the second waits for the first's check, or fails its own).
    "truncated": (2, ["--epochs", "1", "--quiet"], "truncated"),
    "same_size_noise": (1, ["--epochs", "1", "--quiet"], "same_size_noise"),
    "bad_global_batch": (2, ["--batch-size", "127", "--batch-size-mode", "global"], "cache"),
    # A machine without a C++ compiler (CXX names none, and an empty inductor cache, as such a
    # machine has): compile: default refuses, auto runs eager.
    "no_compiler": (1, ["--epochs", "1", "--max-train-samples", "512", "--compile", "default"], "cache"),
    "no_compiler_auto": (1, ["--epochs", "1", "--max-train-samples", "512", "--compile", "auto"], "cache"),
}
# The environment of launches that need one besides child_env's: {name: {variable: value}}, where
# "{tmp}" is the module's scratch folder (each launch's inductor cache starts empty there).
ENVIRONMENTS = {
    "compiled": {"TORCHINDUCTOR_CACHE_DIR": "{tmp}/inductor-compiled"},
    "no_compiler": {"CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": "{tmp}/inductor-none"},
    "no_compiler_auto": {"CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": "{tmp}/inductor-auto"},
}
# Which launches each test reads: the fixture launches those of the tests selected, and no others.
READS = {
    "test_two_rank_run_writes_a_valid_result": ["backend"],
    "test_shared_memory_allreduce_matches_gloo_bit_for_bit": ["backend", "shared_memory"],
    "test_ddp_settings_shape_the_buckets_and_the_bytes_sent": ["backend", "small_buckets", "fp16"],
    "test_verbose_lines_name_rank_and_pid": ["small_buckets"],
    "test_same_seed_same_result_and_quiet": ["ws1_a", "ws1_b"],
    "test_a_damaged_cache_stops_the_run_naming_the_file": ["truncated", "same_size_noise"],
    "test_bad_global_batch_is_a_clear_error": ["bad_global_batch"],
    "test_compiled_run_learns_through_ddp_and_records_its_compile_time": ["backend", "compiled"],
    "test_compile_without_a_compiler_names_it_and_auto_runs_eager": ["no_compiler", "no_compiler_auto"],
}
AT_ONCE = 3  # launches in flight together: the cores stay busy while a launch's processes start


@dataclass
class Launch:
    returncode: int
    stdout: str
    stderr: str
    out: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> dict:
        assert self.returncode == 0, self.stdout[-3000:] + self.stderr[-3000:]
        return json.loads(self.out.read_text())


def damaged_copy(cache: Path, dest: Path, damage: str) -> Path:
    """A cut-off copy, or the same bytes count of noise (which would train silently to chance)."""
    import shutil

    copy = shutil.copytree(cache, dest)
    images = copy / "train_images.npy"
    size = images.stat().st_size
    with open(images, "r+b") as fh:
        if damage == "truncated":
            fh.truncate(size // 2)
        else:
            fh.seek(size // 2)
            fh.write(os.urandom(size - size // 2))
    return copy


def run_together(
    commands: dict[str, list[str]], logs: Path, at_once: int, timeout: float = 600, envs: dict | None = None
) -> dict[str, tuple]:
    """Run the commands, ``at_once`` at a time, their output in files under ``logs``, each with
    child_env() and its ``envs`` entry: name -> (returncode, stdout, stderr)."""
    pending, running, done = list(commands.items()), {}, {}
    deadline = time.monotonic() + timeout
    try:
        while pending or running:
            while pending and len(running) < at_once:
                name, cmd = pending.pop(0)
                out = open(logs / f"{name}.out", "w+")  # noqa: SIM115
                err = open(logs / f"{name}.err", "w+")  # noqa: SIM115
                env = child_env() | (envs or {}).get(name, {})
                running[name] = (subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env), out, err)
            for name, (proc, out, err) in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    texts = []
                    for fh in (out, err):
                        fh.seek(0)
                        texts.append(fh.read())
                        fh.close()
                    done[name] = (proc.returncode, *texts)
            assert time.monotonic() < deadline, f"launches {sorted(running)} still running after {timeout}s"
            time.sleep(0.05)
    finally:
        for proc, out, err in running.values():
            proc.kill()
            proc.wait()
            out.close()
            err.close()
    return done


@pytest.fixture(scope="module")
def launches(request, synthetic_cache, tmp_path_factory) -> dict[str, Launch]:
    items = [item for item in request.session.items if item.module is request.module]
    if WAITS_FOR_TORCHRUN in {item.name for item in items}:
        request.getfixturevalue("stopped_rank")  # its 30 s or so of waiting pass while these run
    selected = {item.originalname for item in items}
    needed = {name for test, reads in READS.items() if test in selected for name in reads}
    names = [name for name in LAUNCHES if name in needed]  # the longest first
    tmp = tmp_path_factory.mktemp("launches")
    caches = {"cache": synthetic_cache}
    commands, outs = {}, {}
    for name in names:
        ranks, options, cache = LAUNCHES[name]
        if cache not in caches:
            caches[cache] = damaged_copy(synthetic_cache, tmp / cache, cache)
        outs[name] = tmp / f"{name}.json"
        commands[name] = torchrun_cmd(ranks, "--data", str(caches[cache]), "--out", str(outs[name]), *options)
    segments_before = set(Path("/dev/shm").glob(SHARED_SEGMENTS))
    envs = {name: {k: v.format(tmp=tmp) for k, v in ENVIRONMENTS.get(name, {}).items()} for name in names}
    done = run_together(commands, tmp, AT_ONCE, envs=envs)
    results = {name: Launch(*done[name], outs[name]) for name in names}
    results["segments_left"] = set(Path("/dev/shm").glob(SHARED_SEGMENTS)) - segments_before
    return results


# --------------------------------------------------------------------------- what the runs record


@pytest.mark.slow  # torchrun launches
def test_two_rank_run_writes_a_valid_result(launches):
    launch = launches["backend"]
    run_json = launch.json()
    jsonschema.validate(run_json, json.loads(RUN_SCHEMA.read_text()))
    assert [m[0] for m in EPOCH_LINE.findall(launch.stdout)] == ["1", "2", "3"]  # rank 0 only: once per epoch
    cfg, totals = run_json["config"], run_json["totals"]
    assert cfg["world_size"] == 2 and cfg["backend"] == "gloo" and cfg["threads_per_worker"] == 1
    assert cfg["allreduce"] == "backend"  # the default: DDP's own all-reduce through gloo
    assert cfg["global_batch_size"] == 256 and run_json["model"]["parameters"] == 1_147_914
    assert totals["final_test_acc"] > 30.0  # ten classes: chance is 10 %
    assert all(e["images"] == 2048 and e["steps"] == 8 for e in run_json["epochs"])
    assert run_json["dataset"]["test_samples"] == 512
    assert len(run_json["ranks"]) == 2 and run_json["environment"]["gloo_socket_ifname"] == "lo"
    assert run_json["environment"]["heap_retained"] is True  # glibc (Linux): see test_retained_heap_...
    assert totals["comm_exposed_time_s"] > 0 and totals["data_time_s"] > 0
    assert totals["train_time_s"] <= totals["train_loop_s"] <= totals["process_start_to_end_s"]


@pytest.mark.slow  # torchrun launches
def test_shared_memory_allreduce_matches_gloo_bit_for_bit(launches):
    """At two ranks both transports compute a/2 + b/2 per element, so training is identical;
    and the shared segment leaves nothing behind in /dev/shm."""
    epochs = {}
    for allreduce in ("backend", "shared_memory"):
        run_json = launches[allreduce].json()
        assert run_json["config"]["allreduce"] == allreduce
        epochs[allreduce] = [(e["train_loss"], e["test_loss"], e["test_acc"]) for e in run_json["epochs"]]
        assert run_json["totals"]["comm_exposed_time_s"] > 0
    assert epochs["shared_memory"] == epochs["backend"]
    assert launches["segments_left"] == set()


@pytest.mark.slow  # torchrun launches
def test_ddp_settings_shape_the_buckets_and_the_bytes_sent(launches):
    """bucket_cap_mb changes the buckets DDP builds; the fp16 hook halves the bytes each step sends."""
    ddp = {}
    for name in ("backend", "small_buckets", "fp16"):
        run_json = launches[name].json()
        ddp[name] = run_json["ddp"]
        assert run_json["config"]["allreduce"] == "backend"
    gradient_bytes = 1_147_914 * 4
    assert sum(ddp["backend"]["bucket_bytes"]) == gradient_bytes == sum(ddp["small_buckets"]["bucket_bytes"])
    assert ddp["small_buckets"]["buckets"] > ddp["backend"]["buckets"]
    assert ddp["backend"]["allreduce_payload_bytes_per_step"] == gradient_bytes
    assert ddp["fp16"]["allreduce_payload_bytes_per_step"] == gradient_bytes // 2
    assert ddp["fp16"]["ring_bytes_sent_per_rank_per_step"] == gradient_bytes // 2  # 2 (W - 1) / W = 1 at W = 2


@pytest.mark.slow  # torchrun launches
def test_verbose_lines_name_rank_and_pid(launches):
    launch = launches["small_buckets"]
    assert launch.returncode == 0, launch.stderr[-3000:]
    for rank in (0, 1):
        assert re.search(rf"^\d{{4}}-\d\d-\d\d [\d:,]+ rank {rank} pid \d+ ", launch.stdout, re.M)


@pytest.mark.slow  # torchrun launches
def test_same_seed_same_result_and_quiet(launches):
    outs = []
    for name in ("ws1_a", "ws1_b"):
        launch = launches[name]
        assert launch.returncode == 0, launch.stderr[-3000:]
        assert "Epoch" not in launch.stdout
        outs.append(launch.json()["epochs"][0])
    assert outs[0]["train_loss"] == outs[1]["train_loss"] and outs[0]["test_acc"] == outs[1]["test_acc"]
    assert outs[0]["images"] == 512


@pytest.mark.slow  # torchrun launches
@pytest.mark.parametrize("damage", ["truncated", "same_size_noise"])
def test_a_damaged_cache_stops_the_run_naming_the_file(launches, damage):
    """A cut-off copy, or the same bytes count of noise (which would train silently to chance):
    the run fails before training, naming the file and how to rebuild the cache."""
    launch = launches[damage]
    assert launch.returncode != 0 and not launch.out.exists()
    assert "train_images.npy" in launch.output and "--forcerun synthetic_cache" in launch.output, launch.output[-3000:]
    assert ("size" if damage == "truncated" else "sha256") in launch.output


@pytest.mark.slow  # torchrun launches, and inductor's build
@needs_cxx
def test_compiled_run_learns_through_ddp_and_records_its_compile_time(launches):
    """train.compile: default through DDP (DDPOptimizer, two buckets): a valid result that learns
    as the eager run of the same seed does, its first step's compile recorded and left out of the
    steady state."""
    compiled, eager = launches["compiled"].json(), launches["backend"].json()
    jsonschema.validate(compiled, json.loads(RUN_SCHEMA.read_text()))
    assert compiled["config"]["compile"] == "default" and eager["config"]["compile"] == "none"
    assert "compiling (train.compile: default)" in launches["compiled"].stdout
    assert compiled["ddp"]["buckets"] >= 2  # the graph split at the bucket boundaries
    totals = compiled["totals"]
    first, median = compiled["epochs"][0]["step_times_s"][0], totals["steady_step_time_median_s"]
    # The first step compiles, and the second a frame after a graph break in DDP's own forward (its
    # Logger); full batches only, so nothing later.
    marked = compiled["epochs"][0]["compile_steps"]
    assert marked[0] == 0 and set(marked) <= {0, 1} and all("compile_steps" not in e for e in compiled["epochs"][1:])
    times = compiled["epochs"][0]["step_times_s"]
    assert totals["compile_s"] == pytest.approx(sum(max(times[i] - median, 0) for i in marked))
    assert totals["compile_s"] > 5 * median and first > 5 * median
    assert totals["warmup_steps"] >= 1 and eager["totals"]["compile_s"] is None
    assert totals["final_test_acc"] > 30.0  # learns (chance: 10 %); dropout's masks differ from eager's
    assert abs(totals["final_test_acc"] - eager["totals"]["final_test_acc"]) < 15.0
    losses = [e["train_loss"] for e in compiled["epochs"]]
    assert losses == sorted(losses, reverse=True)


@pytest.mark.slow  # torchrun launches
def test_compile_without_a_compiler_names_it_and_auto_runs_eager(launches):
    """No C++ compiler: compile: default fails before any step, naming what is missing and the way
    out, and leaves no result; compile: auto says so and trains eager."""
    refused = launches["no_compiler"]
    assert refused.returncode != 0 and not refused.out.exists()
    assert "train.compile: default cannot run here" in refused.output and "C++ compiler" in refused.output
    assert "train.compile: none" in refused.output and "Epoch" not in refused.output
    auto = launches["no_compiler_auto"]
    run_json = auto.json()
    assert run_json["config"]["compile"] == "none" and run_json["totals"]["compile_s"] is None
    assert "train.compile: auto runs eager" in auto.output and "C++ compiler" in auto.output


@pytest.mark.slow  # torchrun launches
def test_bad_global_batch_is_a_clear_error(launches):
    launch = launches["bad_global_batch"]
    assert launch.returncode != 0
    assert "not divisible by world size 2" in launch.output
    assert not launch.out.exists()


# --------------------------------------------------------------------------- decisions, without launches


def test_shared_memory_without_room_is_a_clear_error(tmp_path):
    from ddpbench.comm import SharedMemoryError, _create_segment

    with pytest.raises(SharedMemoryError, match=r"cannot reserve .* MiB in .*set train.allreduce: backend"):
        _create_segment(str(tmp_path), 1 << 62)  # 4 EiB: no file system has room
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "device, one_node, requested, expected",
    [
        ("cpu", True, "auto", "shared_memory"),
        ("cpu", False, "auto", "backend"),  # two nodes: gloo between them
        ("cuda", True, "auto", "backend"),  # nccl
        ("cpu", True, "backend", "backend"),
        ("cpu", False, "shared_memory", "spans several; use allreduce: backend"),
        ("cuda", True, "shared_memory", "sums CPU gradients; on cuda use allreduce: backend"),
    ],
)
def test_gradient_allreduce_choice(device, one_node, requested, expected):
    from ddpbench.train import gradient_allreduce

    if expected in ("shared_memory", "backend"):
        assert gradient_allreduce(requested, device, 2, one_node) == expected
        assert gradient_allreduce(requested, device, 1, True) == "none"
    else:
        with pytest.raises(ValueError, match=expected):
            gradient_allreduce(requested, device, 2, one_node)


# In one process, glibc's default heap first, then the retained one (retain_freed_memory cannot be undone).
FAULTS_PER_REALLOCATION = """
import resource, torch
from ddpbench.distributed import retain_freed_memory
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def faults_per_reallocation():
    for _ in range(20):  # warm-up: the first allocations fault in either case, until glibc's heap settles
        torch.empty(16 << 20).fill_(1.0)
    before = faults()
    for _ in range(20):  # a batch-512 step's first activation: 64 MiB, allocated, written and freed
        torch.empty(16 << 20).fill_(1.0)
    return (faults() - before) / 20
system = faults_per_reallocation()
assert retain_freed_memory()
print(system, faults_per_reallocation())
"""


@pytest.mark.slow  # a python that imports torch
def test_retained_heap_reuses_freed_memory_without_page_faults():
    """Why CPU steps are faster with a retained heap: a freed 64 MiB block comes back without the
    kernel faulting in (and zeroing) its 16,384 pages again. (glibc adapts its threshold up to 32 MiB
    on its own, so smaller blocks are spared only some of the time.)"""
    result = run([sys.executable, "-c", FAULTS_PER_REALLOCATION])
    assert result.returncode == 0, result.stderr
    system, retained = map(float, result.stdout.split())
    assert system > 1000  # glibc's default, for contrast: every reallocation is fresh pages
    assert retained < 10


# --------------------------------------------------------------------------- a rank that dies or hangs

HUNG_TIMEOUT_S = 5  # --timeout of the runs below: how long the peers wait for a silent rank
# The case that waits for the launch to end on its own. A stopped rank ignores the SIGTERM torchrun
# sends once a peer has failed, so torchrun waits its 30 s grace before SIGKILL; that run is started
# before the module's other launches (``launches``) and ends while they run.
WAITS_FOR_TORCHRUN = "test_failed_or_hung_rank_ends_the_launch[hung-backend]"


class LaunchOutput:
    """A launch's merged stdout and stderr, read as it comes (by a thread, so that waiting never
    blocks), and when it closed: when the launch and all its processes had ended."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.closed_at = proc, [], None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.lines.extend(self.proc.stdout)
        self.closed_at = time.monotonic()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, predicate, timeout: float, what: str) -> float:
        """Poll until ``predicate()``; the time it became true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s:\n{self.text[-3000:]}"
            time.sleep(0.05)
        return time.monotonic()

    def finish(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return self.text


@dataclass
class FaultyLaunch:
    """A two-rank run of many epochs whose rank 1 got ``sig`` at ``t0``, once the first epoch was out."""

    proc: subprocess.Popen
    output: LaunchOutput
    workers: list[int]
    out: Path
    t0: float

    def kill_all(self) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_faulty_launch(cache: Path, out: Path, allreduce: str, sig: signal.Signals) -> FaultyLaunch:
    cmd = torchrun_cmd(
        2,
        "--data",
        str(cache),
        "--out",
        str(out),
        "--epochs",
        "1000",
        "--max-train-samples",
        "512",  # short epochs: the first one ends soon
        "--timeout",
        str(HUNG_TIMEOUT_S),
        "--allreduce",
        allreduce,
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
    launch = FaultyLaunch(proc, LaunchOutput(proc), [], out, 0.0)
    try:
        output = launch.output
        output.wait_for(lambda: "Epoch [1/" in output.text or proc.poll() is not None, 120, "first epoch")
        assert "Epoch [1/" in output.text, "run ended before its first epoch:\n" + output.text[-3000:]
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        launch.workers = [int(pid) for pid in children]
        assert len(launch.workers) == 2
        launch.t0 = time.monotonic()
        os.kill(launch.workers[1], sig)
    except BaseException:
        launch.kill_all()
        raise
    return launch


@pytest.fixture(scope="module")
def stopped_rank(synthetic_cache, tmp_path_factory):
    launch = start_faulty_launch(
        synthetic_cache, tmp_path_factory.mktemp("stopped") / "run.json", "backend", signal.SIGSTOP
    )
    yield launch
    launch.kill_all()


@pytest.mark.slow  # torchrun launches, and a collective timeout
@pytest.mark.parametrize(
    "how, allreduce",
    [
        ("killed", "shared_memory"),
        ("killed", "backend"),
        ("hung", "backend"),  # waits for torchrun to end the launch on its own (WAITS_FOR_TORCHRUN)
        ("hung", "shared_memory"),  # SIGKILLs the stopped rank once its peer has failed and named it
    ],
)
def test_failed_or_hung_rank_ends_the_launch(request, synthetic_cache, tmp_path, how, allreduce):
    """A rank that dies (SIGKILL) or hangs (SIGSTOP) ends the launch non-zero within the bound,
    whichever way gradients are summed; a hung one is named by the peer that timed out waiting for it."""
    bound = HUNG_TIMEOUT_S
    # The peers' timeout, then start-up and teardown beside the other worker's test; the stopped
    # rank under DDP's all-reduce also waits out torchrun's 30 s grace (52 s in all once, loaded).
    limit = bound + 45
    if request.node.name == WAITS_FOR_TORCHRUN:
        limit += 20
        launch = request.getfixturevalue("stopped_rank")
    else:
        sig = signal.SIGKILL if how == "killed" else signal.SIGSTOP
        launch = start_faulty_launch(synthetic_cache, tmp_path / "run.json", allreduce, sig)
    output, workers, t0 = launch.output, launch.workers, launch.t0
    try:
        if how == "hung" and allreduce == "shared_memory":
            named = output.wait_for(lambda: "stopped responding" in output.text, bound + 30, "peer naming rank 1")
            output.wait_for(lambda: not alive(workers[0]), bound + 30, "end of rank 0")
            assert named - t0 < bound + 20, f"rank 1 named after {named - t0:.0f}s"
            os.kill(workers[1], signal.SIGKILL)  # in place of torchrun's SIGKILL after its grace
        text = output.finish(timeout=max(1.0, t0 + limit + 15 - time.monotonic()))
        elapsed = (output.closed_at or time.monotonic()) - t0
    finally:
        launch.kill_all()
    assert launch.proc.returncode != 0
    assert elapsed < limit, f"took {elapsed:.0f}s"
    assert not launch.out.exists() and not list(launch.out.parent.glob("*.tmp"))
    if how == "killed":  # torchrun's summary names the failed rank and its signal
        assert re.search(r"rank\s*:\s*1", text) and "SIGKILL" in text, text[-3000:]
    else:  # the peer's collective timed out, and its error, torchrun's root cause, names the rank that stopped
        named = f"rank 1 (pid {workers[1]} on host "
        assert named in text and "stopped responding" in text and "rank 0 timed out waiting for it" in text, text[
            -4000:
        ]
        root_cause = text.split("Root Cause", 1)[1]
        assert "UnresponsivePeerError" in root_cause and named in root_cause, text[-4000:]
