"""How DDP's gradient buckets are summed across ranks, and how long that takes.

Three DDP communication hooks:
- ``SkipAllReduce``: world size 1, where the all-reduce is the identity;
- ``CommTimer``: DDP's own hooks through the process group (gloo or nccl), timed: its plain
  all-reduce, what ``train.allreduce: backend``, the default, runs, as DDP's users run it, or
  one of its compression hooks (``train.comm_hook``); it also records the buckets DDP built and
  the bytes each step hands to the all-reduce;
- ``SharedMemoryAllReduce`` (``train.allreduce: shared_memory``): CPU ranks of one node sum their
  gradients in a shared-memory segment instead of over loopback TCP, on the cores that also train.
bench/run.py and bench/step_transports.py compare the two exchanges; bench/README.md has the numbers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook


def ddp_hook(name: str, powersgd_rank: int = 1, powersgd_start_iter: int = 10) -> tuple[Callable, object]:
    """DDP's own communication hook called ``name`` (train.comm_hook), with the state it takes."""
    if name == "none":
        return allreduce_hook, None
    if name in ("fp16", "bf16"):
        return getattr(default_hooks, f"{name}_compress_hook"), None
    if name == "powersgd":
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=powersgd_rank, start_powerSGD_iter=powersgd_start_iter
        )
        return powerSGD_hook.powerSGD_hook, state
    raise ValueError(f"unknown comm_hook {name!r}: choose none, fp16, bf16 or powersgd")


class BucketLayout:
    """The gradient buckets DDP really built (their bytes, by index; the latest step's layout, as
    DDP rebuilds them after the first step) and the bytes each step handed to the all-reduce."""

    def __init__(self):
        self.bucket_bytes: dict[int, int] = {}
        self.payload_bytes_per_step: int | None = None
        self._payload = 0

    def add(self, bucket: dist.GradBucket, payload_bytes: int) -> None:
        buffer = bucket.buffer()
        self.bucket_bytes[bucket.index()] = buffer.numel() * buffer.element_size()
        self._payload += payload_bytes
        if bucket.is_last():
            self.payload_bytes_per_step, self._payload = self._payload, 0

    def record(self) -> dict:
        return {
            "buckets": len(self.bucket_bytes),
            "bucket_bytes": [self.bucket_bytes[i] for i in sorted(self.bucket_bytes)],
            "allreduce_payload_bytes_per_step": self.payload_bytes_per_step,
        }


@contextlib.contextmanager
def counting_allreduce_bytes(counter: list[int]) -> Iterator[None]:
    """Count the bytes of every tensor handed to ``dist.all_reduce`` inside the block: what a
    hook really sends, whatever it compresses (DDP's hooks call it through the module)."""
    original = dist.all_reduce

    def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter[0] += tensor.numel() * tensor.element_size()
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        yield
    finally:
        dist.all_reduce = original


class SkipAllReduce:
    """World size 1: the gradient all-reduce is the identity, so hand the bucket back as it is.
    (Through gloo a one-rank all-reduce still runs for every bucket: CPU time spent summing nothing.)"""

    def __init__(self):
        self.layout = BucketLayout()

    # No annotations: DDP's register_comm_hook checks them, and these would be strings (PEP 563).
    def hook(self, state, bucket):  # noqa: ANN001, ANN201
        self.layout.add(bucket, 0)
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    def take(self) -> tuple[float, float]:
        return 0.0, 0.0


class CommTimer:
    """Times DDP's gradient all-reduce (gloo on CPU) through a communication hook.

    The hook records when each bucket's all-reduce is launched and, from the future's
    completion callback (run on gloo's thread), when it finished. Per step:
    - ``busy``: wall time during which at least one all-reduce was in flight (may overlap
      the backward pass);
    - ``exposed``: time from the launch of the step's last bucket to the completion of all of
      them, i.e. communication the backward pass did not hide (the last bucket is launched
      when the backward pass has produced the first layers' gradients).
    On CUDA (NCCL) a future completes before the kernels finish: ``timed=False`` records the
    layout and bytes only, and ``take`` gives None.
    """

    def __init__(self, inner: Callable = allreduce_hook, inner_state: object = None, timed: bool = True):
        self._inner, self._inner_state, self.timed = inner, inner_state, timed
        self._lock = threading.Lock()
        self._intervals: list[tuple[int, float, float]] = []
        self._step = 0  # DDP hands buckets over in order: the last one ends a step
        self.layout = BucketLayout()

    # No annotations: DDP's register_comm_hook checks them, and these would be strings (PEP 563).
    def hook(self, state, bucket):  # noqa: ANN001, ANN201
        step, launched = self._step, time.perf_counter()
        if bucket.is_last():
            self._step += 1
        sent = [0]
        with counting_allreduce_bytes(sent):
            future = self._inner(self._inner_state, bucket)
        self.layout.add(bucket, sent[0])
        if not self.timed:
            return future

        def record(fut: torch.futures.Future) -> torch.Tensor:
            with self._lock:
                self._intervals.append((step, launched, time.perf_counter()))
            return fut.value()

        return future.then(record)

    def take(self) -> tuple[float | None, float | None]:
        """Return (busy, exposed) seconds summed over the steps recorded since the last call."""
        if not self.timed:
            return None, None
        with self._lock:
            intervals, self._intervals = self._intervals, []
        by_step: dict[int, list[tuple[float, float]]] = {}
        for step, start, end in intervals:
            by_step.setdefault(step, []).append((start, end))
        busy = exposed = 0.0
        for spans in by_step.values():
            spans.sort()
            exposed += max(e for _, e in spans) - max(s for s, _ in spans)
            cur_start, cur_end = spans[0]
            for start, end in spans[1:]:
                if start > cur_end:
                    busy += cur_end - cur_start
                    cur_start = start
                cur_end = max(cur_end, end)
            busy += cur_end - cur_start
        return busy, exposed


class SharedMemoryError(RuntimeError):
    pass


class SharedMemoryAllReduce:
    """Sum gradient buckets through one shared-memory segment; for ranks on one node, CPU only.

    The segment holds two sets (alternating per step) of one slot per rank, each the size of all
    gradients. DDP hands buckets over in order; the hook keeps them until the last one, then:
    1. each rank copies its buckets, divided by the world size as DDP's own hook does, into its
       slot;  (barrier)
    2. rank r sums chunk r of every slot, in rank order, into slot 0;  (barrier)
    3. each rank copies slot 0, now the sum, back into its buckets.
    Every element is summed by one rank in one order, so all ranks get bit-identical gradients.
    The barriers are gloo's (a few bytes over loopback): they also carry its timeout, so a
    rank that died or hung ends the run as it would with gloo's own all-reduce. One exchange
    per step instead of one per bucket: on a core that also runs the backward pass, gloo's
    "overlap" only shares that core, and each exchange waits for the slowest rank.
    """

    def __init__(self, numel: int, group: dist.ProcessGroup | None = None, directory: str | None = None):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.numel = numel
        nbytes = 2 * self.world * numel * 4
        if directory is None:  # Linux's memory file system; elsewhere pages of a mapped temporary file
            directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        created = [None]  # rank 0's (path, error): the other ranks learn either
        if self.rank == 0:
            try:
                created[0] = (_create_segment(directory, nbytes), None)
            except SharedMemoryError as exc:
                created[0] = (None, str(exc))
        dist.broadcast_object_list(created, src=0, group=group)
        path, error = created[0]
        if error:
            raise SharedMemoryError(error)
        try:
            storage = torch.UntypedStorage.from_file(path, shared=True, nbytes=nbytes)
        finally:
            dist.barrier(group=group)  # every rank has mapped it (or failed): the name can go
            if self.rank == 0:
                os.unlink(path)
        self.slots = torch.empty(0).set_(storage).view(2, self.world, numel)
        bounds = [numel * r // self.world for r in range(self.world + 1)]
        self.chunk = slice(bounds[self.rank], bounds[self.rank + 1])
        self.calls = 0
        self._pending: list[tuple[torch.Tensor, torch.futures.Future]] = []
        self._seconds = 0.0
        self.layout = BucketLayout()

    # No annotations: DDP's register_comm_hook checks them, and these would be strings (PEP 563).
    def hook(self, state, bucket):  # noqa: ANN001, ANN201
        self.layout.add(bucket, bucket.buffer().numel() * bucket.buffer().element_size())
        future = torch.futures.Future()
        self._pending.append((bucket.buffer(), future))
        if bucket.is_last():
            buffers = [b for b, _ in self._pending]
            start = time.perf_counter()
            self.all_reduce(buffers)
            self._seconds += time.perf_counter() - start
            for buffer, fut in self._pending:
                fut.set_result(buffer)
            self._pending = []
        return future

    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` (float32, at most ``numel`` elements in all) over the ranks, in place."""
        total = sum(t.numel() for t in tensors)
        if total > self.numel or any(t.dtype != self.slots.dtype for t in tensors):
            raise ValueError(
                f"{total} gradient elements of {sorted({str(t.dtype) for t in tensors})} do not fit "
                f"a segment of {self.numel} {self.slots.dtype}"
            )
        slots = self.slots[self.calls % 2]
        self.calls += 1
        mine, offset = slots[self.rank], 0
        for t in tensors:
            torch.div(t.view(-1), self.world, out=mine[offset : offset + t.numel()])
            offset += t.numel()
        dist.barrier(group=self.group)
        reduced = slots[0, self.chunk]
        for r in range(1, self.world):
            reduced.add_(slots[r, self.chunk])
        dist.barrier(group=self.group)
        offset = 0
        for t in tensors:
            t.view(-1).copy_(slots[0, offset : offset + t.numel()])
            offset += t.numel()

    def take(self) -> tuple[float, float]:
        """(busy, exposed) seconds since the last call: the same here, as nothing overlaps."""
        seconds, self._seconds = self._seconds, 0.0
        return seconds, seconds


def _create_segment(directory: str, nbytes: int) -> str:
    fd, path = tempfile.mkstemp(prefix="ddpbench-grads-", dir=directory)  # mode 0600: this user's ranks only
    try:
        # Reserve the pages now: a full tmpfs would otherwise kill a rank with SIGBUS mid-run.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
        else:
            os.ftruncate(fd, nbytes)
    except OSError as exc:
        os.unlink(path)
        raise SharedMemoryError(
            f"cannot reserve {nbytes / 2**20:.0f} MiB in {directory} for the gradient exchange ({exc.strerror}); "
            "free space there (a container may need a larger --shm-size) or set train.allreduce: backend"
        ) from exc
    finally:
        os.close(fd)
    return path
