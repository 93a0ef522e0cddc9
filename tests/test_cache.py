"""The dataset cache refuses damaged files, and a full disk is one clear line, not a traceback."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, child_env

from ddpbench.cache import load_split, make_synthetic, read_meta, verify_cache
from ddpbench.fetch import DataError

CACHE_FILES = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")


@pytest.fixture
def cache(tmp_path) -> Path:
    out = tmp_path / "synthetic"
    make_synthetic(out, train_size=256, test_size=64, seed=1)
    return out


def test_meta_records_the_size_and_sha256_of_every_file(cache):
    meta = verify_cache(cache)
    assert meta == read_meta(cache) and sorted(meta["files"]) == sorted(CACHE_FILES)
    for name in CACHE_FILES:
        payload = (cache / name).read_bytes()
        assert meta["files"][name] == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_truncated_file_is_refused_naming_it(cache):
    path = cache / "train_images.npy"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(DataError) as err:
        verify_cache(cache)
    message = str(err.value)
    assert str(path) in message and "wrong size" in message
    assert "--forcerun synthetic_cache" in message and "python -m ddpbench.data synthetic" in message


def test_same_size_corruption_is_refused_naming_it(cache):
    path = cache / "test_images.npy"
    payload = bytearray(path.read_bytes())
    payload[-4096:] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(payload)
    load_split(cache, "test")  # still a valid array: only the checksum can tell
    with pytest.raises(DataError) as err:
        verify_cache(cache)
    message = str(err.value)
    assert str(path) in message and "sha256" in message and "--forcerun synthetic_cache" in message


def test_cache_without_checksums_must_be_rebuilt(cache):
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"records no size and checksum.*Rebuild it"):
        verify_cache(cache)


def test_loading_a_truncated_file_names_it_without_verify(cache):
    path = cache / "train_images.npy"
    os.truncate(path, 1000)
    with pytest.raises(DataError) as err:
        load_split(cache, "train")
    assert str(path) in str(err.value) and "Rebuild it" in str(err.value)
    meta = read_meta(cache)
    del meta["files"]  # an old cache: no sizes to compare, the failed memory map is reported instead
    with pytest.raises(DataError) as err:
        load_split(cache, "train", meta)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_cifar10_cache_names_its_rule(tmp_path):
    cache = tmp_path / "cifar10"
    make_synthetic(cache, 16, 16)
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "source": "cifar10"}))
    (cache / "test_labels.npy").unlink()
    with pytest.raises(DataError, match=r"test_labels.npy is missing.*--forcerun cifar10_cache.*data convert"):
        verify_cache(cache)


# ----------------------------------------------------------------- a full disk


def unshare_prefix(mountpoint: Path) -> list[str]:
    """A command prefix that runs in a private mount namespace where a tmpfs may be mounted
    (as root, or as a user through a user namespace), or a skip naming why there is none."""
    if not shutil.which("unshare"):
        pytest.skip("needs util-linux unshare to mount a small tmpfs privately")
    tried = []
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = subprocess.run(
            [*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            return prefix
        tried.append(f"{' '.join(prefix)}: {probe.stderr.strip()}")
    pytest.skip("cannot mount a tmpfs in a private namespace here (" + "; ".join(tried) + ")")


SMALL_DISK = """
mount -t tmpfs -o size=1m tmpfs "$1" || exit 99
shift
"$@"; rc=$?
echo "rc=$rc"
ls -A "$MNT/cache"
"""


def on_small_disk(prefix: list[str], mnt: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with a 1 MiB tmpfs mounted at ``mnt``, in the private mount namespace of ``prefix``."""
    return subprocess.run(
        [*prefix, "sh", "-c", SMALL_DISK, "sh", str(mnt), *command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**child_env(), "MNT": str(mnt)},
        cwd=REPO,
    )


def test_full_disk_during_the_cache_build_is_one_line(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = unshare_prefix(mnt)
    # 512 training images are 1.5 MiB: more than the whole 1 MiB file system.
    command = [
        sys.executable,
        "-m",
        "ddpbench.data",
        "synthetic",
        "--train-size",
        "512",
        "--test-size",
        "16",
        "--out",
        str(mnt / "cache"),
    ]
    result = on_small_disk(prefix, mnt, command)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "rc=1"
    assert lines[1:] == [], f"files left behind: {lines[1:]}"  # no temporary file, no half cache
    (error,) = result.stderr.splitlines()
    needed = f"{512 * 3 * 32 * 32 + 128:,} bytes"  # the array plus its 128-byte .npy header
    assert error.startswith(f"error: no space left on device writing {mnt / 'cache' / 'train_images.npy'}: ")
    assert f"it needs {needed}" in error and f"the file system holding {mnt / 'cache'} has " in error
    free = int(error.split(" has ")[1].split(" bytes")[0].replace(",", ""))
    assert 0 < free <= 1 << 20


def test_full_disk_keeps_the_old_file(tmp_path):
    """atomic_write_bytes on a full disk: the previous file survives and the error says how much is free."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = unshare_prefix(mnt)
    script = (
        "import sys; from pathlib import Path; from ddpbench.io import DiskFullError, atomic_write_bytes\n"
        "target = Path(sys.argv[1]) / 'cache' / 'report.bin'\n"
        "atomic_write_bytes(target, b'old')\n"
        "try:\n"
        "    atomic_write_bytes(target, bytes(2 << 20))\n"
        "except DiskFullError as err:\n"
        "    print(err.errno, err, sep='\\n')\n"
        "print(target.read_bytes())\n"
    )
    result = subprocess.run(
        [*prefix, "sh", "-c", SMALL_DISK, "sh", str(mnt), sys.executable, "-c", script, str(mnt)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**child_env(), "MNT": str(mnt)},
    )
    assert result.returncode == 0, result.stderr
    code, message, content, status, *left = result.stdout.splitlines()
    assert int(code) == 28 and "it needs 2,097,152 bytes (2.0 MiB)" in message
    assert content == "b'old'" and status == "rc=0" and left == ["report.bin"]


def test_full_disk_during_download_is_not_retried(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = unshare_prefix(mnt)
    source = tmp_path / "archive.bin"
    source.write_bytes(bytes(2 << 20))
    command = [
        sys.executable,
        "-m",
        "ddpbench.data",
        "download",
        "--url",
        source.as_uri(),
        "--md5",
        hashlib.md5(source.read_bytes()).hexdigest(),
        "--out",
        str(mnt / "cache" / "archive.bin"),
        "--retries",
        "3",
    ]
    result = on_small_disk(prefix, mnt, command)
    assert result.stdout.splitlines() == ["rc=1"]  # and nothing left in the directory
    assert "attempt" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"error: no space left on device writing {mnt / 'cache' / 'archive.bin'}: it needs 2,097,152 bytes (2.0 MiB)"
    )
