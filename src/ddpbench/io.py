"""Atomic file output: a reader sees the old file or the complete new one, never a torn one."""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path


def utc_now() -> str:
    """A timestamp for records: UTC, ISO 8601, milliseconds (run overlaps are judged by it)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def create_temp(path: Path) -> tuple[int, Path]:
    """Open a new temporary file beside ``path`` (same file system, so a rename is atomic),
    with the permissions the umask gives any new file (mkstemp would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
