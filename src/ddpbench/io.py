"""Atomic file output: a reader sees the old file or the complete new one, never a torn one.

A write that runs out of space (or quota) leaves no temporary file behind and raises a
DiskFullError that says what was being written, where, how much it needed and how much is free.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """No space or quota left to write a file; the message names the file, the size and the free space."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.errno = code

    @classmethod
    def for_write(cls, path: Path, size: int | None, err: OSError) -> DiskFullError:
        directory = Path(path).parent
        free = shutil.disk_usage(directory).free
        needed = f"it needs {_size(size)}" if size is not None else "its size was not known in advance"
        if err.errno == errno.EDQUOT:
            cause, fix = "disk quota exceeded", "Free space within your quota (or ask for a larger one) and run again."
        else:
            cause, fix = (
                "no space left on device",
                "Free space there (or work on a file system with more room) and run again.",
            )
        return cls(
            f"{cause} writing {path}: {needed}, and the file system holding {directory} has {_size(free)} free. {fix}",
            err.errno,
        )


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)"


def utc_now() -> str:
    """A timestamp for records: UTC, ISO 8601, milliseconds (run overlaps are judged by it)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def create_temp(path: Path) -> tuple[int, Path]:
    """Open a new temporary file beside ``path`` (same file system, so a rename is atomic),
    with the permissions the umask gives any new file (mkstemp would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


@contextmanager
def atomic_open(path: Path, size: int | None = None) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without an error.

    An error inside the block (or while writing) removes the temporary file and leaves ``path``
    as it was; running out of space or quota becomes a DiskFullError quoting ``size``, the
    number of bytes the caller meant to write (None when unknown).
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        fd, tmp = create_temp(path)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, DiskFullError) and err.errno in _NO_SPACE:
            raise DiskFullError.for_write(path, size, err) from err
        raise


def atomic_write_bytes(path: Path, payload: bytes | memoryview) -> None:
    with atomic_open(path, len(payload)) as fh:
        fh.write(payload)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
