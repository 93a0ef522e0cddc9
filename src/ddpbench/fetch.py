"""Fetch the CIFAR-10 archive: a download verified by md5 and retried with back-off, or a
check of a local copy.

Imports neither torch nor numpy (the download job needs neither, and runs where Snakemake runs).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ddpbench.io import DiskFullError, atomic_open

OFFLINE_HINT = (
    "Without network, set data.archive to a local cifar-10-python.tar.gz (and data.md5 to its md5), "
    "or use data.source: synthetic."
)
_BLOCK = 1 << 20
_UNKNOWN_LENGTH_STEP = 16 << 20  # log every this many bytes when the server sends no length

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """Bad, missing or unsafe input data; the message says what and how to fix it."""


def md5sum(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


class _ProgressLog:
    """Logs a line per tenth of a transfer of known length, or per 16 MiB when the length is
    unknown: the download job's log is a file, where a redrawn progress bar shows nothing."""

    def __init__(self, url: str, total: int | None):
        self.total = total or None
        self.received = 0
        self._logged_steps = 0
        self._start = time.monotonic()
        size = f"{self.total / 2**20:.1f} MiB" if self.total else "size unknown"
        log.info("downloading %s (%s)", url, size)

    def update(self, n: int) -> None:
        self.received += n
        step = self.total / 10 if self.total else _UNKNOWN_LENGTH_STEP
        steps = int(self.received // step)
        if steps > self._logged_steps:
            self._logged_steps = steps
            done = f"{self.received / 2**20:.1f} MiB"
            if self.total:
                done += f" of {self.total / 2**20:.1f} MiB ({100 * self.received // self.total} %)"
            log.info("  %s, %.1f s", done, time.monotonic() - self._start)


def _fetch_once(url: str, dest: Path, md5: str | None, timeout: float) -> None:
    """One attempt: stream ``url`` into ``dest`` atomically, checking its length and md5."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        progress = _ProgressLog(url, int(length) if length else None)
        digest = hashlib.md5()
        with atomic_open(dest, progress.total) as out:
            while block := response.read(_BLOCK):
                out.write(block)
                digest.update(block)
                progress.update(len(block))
            if progress.total is not None and progress.received != progress.total:
                raise OSError(f"connection closed after {progress.received} of {progress.total} bytes")
            actual = digest.hexdigest()
            if md5 and actual != md5.lower():
                raise DataError(
                    f"checksum mismatch for {url}: expected md5 {md5.lower()}, got {actual}. "
                    "The file was deleted. Check data.url and data.md5 (a mirror or a rebuilt archive has its own md5)."
                )


def download(
    url: str,
    dest: Path,
    md5: str | None,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 2.0,
) -> Path:
    """Stream ``url`` to a temporary file beside ``dest``, verify its md5, rename into place.

    A transfer that fails or ends short is retried ``retries`` times with exponential back-off.
    A checksum mismatch is not retried: the file is deleted and a DataError names both sums.
    A full disk is not retried either: it raises DiskFullError.
    """
    dest = Path(dest)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_once(url, dest, md5, timeout)
            return dest
        except (DataError, DiskFullError):
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:  # ValueError: malformed URL
            last_error = err
            log.info("attempt %d of %d failed: %s", attempt + 1, retries + 1, err)
            client_error = isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500
            if isinstance(err, ValueError) or client_error:  # asking again gets the same answer
                break
    raise DataError(f"could not download {url} after {attempt + 1} attempt(s): {last_error}. {OFFLINE_HINT}")


def verify_archive(path: Path, md5: str | None) -> None:
    """Check that a local archive exists and, when ``md5`` is given, that it matches."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"archive {path} does not exist. Point data.archive at cifar-10-python.tar.gz, or unset it to download."
        )
    if md5:
        actual = md5sum(path)
        if actual != md5.lower():
            raise DataError(
                f"checksum mismatch for {path}: expected md5 {md5.lower()}, got {actual}. "
                "Set data.md5 to the archive's md5 (md5sum FILE) if you trust this file."
            )


def check_archive(data: dict) -> None:
    """The config's data.archive, where given for cifar10, must be a file: checked before any job."""
    archive = data["archive"]
    if data["source"] == "cifar10" and archive is not None and not os.path.isfile(archive):
        raise ValueError(
            f"config data.archive: no file at {archive!r}. Point it at a local cifar-10-python.tar.gz, "
            "or set it to null to download from data.url"
        )
