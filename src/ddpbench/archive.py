"""Read the official CIFAR-10 python archive safely and convert it into the dataset cache.

Members are read into memory (nothing is extracted to disk) after every member of the archive
is checked, and the batches are unpickled through an allow-list that admits numpy arrays only.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ddpbench.cache import write_cache
from ddpbench.cifar10 import CIFAR10_CLASSES, CIFAR10_COUNTS, SPLITS
from ddpbench.fetch import DataError, md5sum
from ddpbench.tarsafe import safe_member_name

_MEMBER_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"{_MEMBER_DIR}/data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = f"{_MEMBER_DIR}/test_batch"
_META_MEMBER = f"{_MEMBER_DIR}/batches.meta"
_MAX_MEMBER_BYTES = 64 << 20  # the largest official member is about 31 MB


def read_members(archive: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Read the named regular-file members into memory; nothing is written to disk.

    Every member is checked first: an absolute path, a '..' component, a link or a device
    file anywhere in the archive means it was not made by the CIFAR authors, so it is refused.
    """
    wanted = set(names)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = safe_member_name(archive, member, DataError)
                if name in wanted and member.size > _MAX_MEMBER_BYTES:
                    raise DataError(
                        f"member {member.name!r} of {archive} is {member.size} bytes: too large for CIFAR-10"
                    )
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"cannot read archive {archive}: {err}. Is it a complete cifar-10-python.tar.gz?") from err
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"archive {archive} lacks {', '.join(missing)}; it is not the CIFAR-10 python archive")
    return found


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class AllowListUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (Python 2 pickles of numpy arrays) and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str) -> Callable | type:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed in CIFAR-10 batches"
            )
        return resolve()


def load_pickle(payload: bytes, source: str = "pickle") -> dict:
    """Unpickle one member through the allow-list; keys come back as str."""
    try:
        obj = AllowListUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{source}: {err}") from err
    except Exception as err:  # truncated or corrupt data
        raise DataError(f"{source}: not a valid CIFAR-10 batch ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def parse_batch(payload: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One data batch as uint8 images (N x 3 x 32 x 32) and int64 labels."""
    batch = load_pickle(payload, source)
    try:
        data, labels = batch["data"], batch["labels"]
    except KeyError as err:
        raise DataError(f"{source}: missing key {err}") from None
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{source}: data has dtype {data.dtype} and shape {data.shape}, expected uint8 N x 3072")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def convert_cifar10(archive: Path, out_dir: Path, md5: str | None, expected: dict[str, int] | None = None) -> None:
    """Read the official archive and write the dataset cache to ``out_dir``."""
    expected = expected or CIFAR10_COUNTS
    members = read_members(archive, (*_TRAIN_BATCHES, _TEST_BATCH, _META_MEMBER))
    meta = load_pickle(members[_META_MEMBER], _META_MEMBER)
    names = tuple(n.decode() if isinstance(n, bytes) else n for n in meta.get("label_names", ()))
    if names != CIFAR10_CLASSES:
        raise DataError(f"{_META_MEMBER}: label names {names} are not CIFAR-10's")
    train = [parse_batch(members[name], name) for name in _TRAIN_BATCHES]
    splits = {
        "train": (np.concatenate([d for d, _ in train]), np.concatenate([lab for _, lab in train])),
        "test": parse_batch(members[_TEST_BATCH], _TEST_BATCH),
    }
    for split in SPLITS:
        if len(splits[split][1]) != expected[split]:
            raise DataError(f"{split} split has {len(splits[split][1])} samples, expected {expected[split]}")
    write_cache(out_dir, splits, {"source": "cifar10", "archive_md5": md5 or md5sum(archive)})
