"""The dataset cache: one directory that every rank memory-maps, and a synthetic stand-in.

It holds ``{train,test}_images.npy`` (uint8, N x 3 x 32 x 32), ``{train,test}_labels.npy``
(int64) and ``meta.json``, written last: its presence means the cache is complete. meta.json
records each file's size and sha256, which ``verify_cache`` checks before a run trusts the
files. Every rank memory-maps the same files, so the page cache holds one copy however many
ranks run on a node.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddpbench.cifar10 import CIFAR10_CLASSES, SPLITS
from ddpbench.fetch import DataError
from ddpbench.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import torch

CACHE_FILES = tuple(f"{split}_{kind}.npy" for split in SPLITS for kind in ("images", "labels"))
_REBUILD_RULES = {
    "cifar10": ("cifar10_cache", "convert --archive ARCHIVE"),
    "synthetic": ("synthetic_cache", "synthetic"),
}


def write_cache(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict) -> None:
    """Write every split, then meta.json with the counts and each file's size and sha256."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the cache is incomplete until meta.json is back
    counts, files = {}, {}
    for split, (images, labels) in splits.items():
        check_split(split, images, labels, expected=None)
        for kind, array in (("images", images), ("labels", labels)):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array))
            payload = buffer.getbuffer()
            name = f"{split}_{kind}.npy"
            atomic_write_bytes(out_dir / name, payload)
            files[name] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        counts[split] = int(len(labels))
    atomic_write_json(
        out_dir / "meta.json", {**meta, "counts": counts, "classes": list(CIFAR10_CLASSES), "files": files}
    )


def check_split(split: str, images: np.ndarray, labels: np.ndarray, expected: int | None) -> None:
    """Refuse arrays of the wrong dtype, shape, count or label range."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise DataError(
            f"{split} images have dtype {images.dtype} and shape {images.shape}, expected uint8 N x 3 x 32 x 32"
        )
    if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
        raise DataError(
            f"{split} labels have dtype {labels.dtype} and shape {labels.shape}, expected int64 ({images.shape[0]},)"
        )
    if expected is not None and len(labels) != expected:
        raise DataError(f"{split} split has {len(labels)} samples, expected {expected}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{split} labels outside 0..{len(CIFAR10_CLASSES) - 1}")


def make_synthetic(out_dir: Path, train_size: int, test_size: int, seed: int = 0) -> None:
    """Learnable CIFAR-shaped data: one smooth colour pattern per class plus pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, size=(len(CIFAR10_CLASSES), 3, 4, 4))
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)  # 4x4 blocks -> 32x32

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, len(CIFAR10_CLASSES), size=n, dtype=np.int64)
        noise = rng.normal(0.0, 1.0, size=(n, 3, 32, 32))
        pixels = 128 + 8 * templates[labels] + 70 * noise
        return np.clip(pixels, 0, 255).astype(np.uint8), labels

    splits = {"train": split(train_size), "test": split(test_size)}
    write_cache(out_dir, splits, {"source": "synthetic", "seed": seed})


def _rebuild_hint(cache_dir: Path, source: str | None) -> str:
    """How to rebuild a damaged cache. Snakemake does not rerun a job whose outputs exist, nor
    (once the report exists) one whose outputs were deleted, so the workflow needs --forcerun."""
    rule, command = _REBUILD_RULES.get(source, ("cifar10_cache (or synthetic_cache)", "convert or synthetic"))
    return (
        f"Rebuild it: run snakemake again with --forcerun {rule} (this redoes the runs that read it too), "
        f"or outside the workflow run `python -m ddpbench.data {command} --out {cache_dir}` again."
    )


def read_meta(cache_dir: Path) -> dict:
    """The cache's meta.json; a DataError when it is missing or unreadable."""
    cache_dir = Path(cache_dir)
    path = cache_dir / "meta.json"
    if not path.is_file():
        raise DataError(
            f"no dataset cache at {cache_dir} (missing meta.json); "
            "prepare it with `python -m ddpbench.data convert` or `synthetic`"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}. {_rebuild_hint(cache_dir, _source_of(cache_dir))}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("counts"), dict):
        raise DataError(f"{path} is not a dataset cache's meta.json. {_rebuild_hint(cache_dir, _source_of(cache_dir))}")
    return meta


def _source_of(cache_dir: Path) -> str | None:
    """The workflow keeps each source's cache in resources/<source>/."""
    name = Path(cache_dir).resolve().name
    return name if name in _REBUILD_RULES else None


def _check_size(path: Path, record: dict, meta: dict) -> None:
    if not path.is_file():
        raise DataError(f"{path} is missing from the dataset cache. {_rebuild_hint(path.parent, meta.get('source'))}")
    actual = path.stat().st_size
    if actual != record["bytes"]:
        raise DataError(
            f"{path} has the wrong size: {actual:,} bytes, meta.json records {record['bytes']:,} "
            "(truncated or overwritten). " + _rebuild_hint(path.parent, meta.get("source"))
        )


def _is_record(record: object) -> bool:
    return isinstance(record, dict) and isinstance(record.get("bytes"), int) and isinstance(record.get("sha256"), str)


def _file_records(cache_dir: Path, meta: dict) -> dict[str, dict]:
    """meta.json's size and checksum of every cache file; caches written before they were recorded are refused."""
    files = meta.get("files")
    if not isinstance(files, dict) or not all(_is_record(files.get(name)) for name in CACHE_FILES):
        raise DataError(
            f"{Path(cache_dir) / 'meta.json'} records no size and checksum of the cache files (the cache was written "
            f"by an older ddpbench), so it cannot be verified. {_rebuild_hint(Path(cache_dir), meta.get('source'))}"
        )
    return files


def verify_cache(cache_dir: Path) -> dict:
    """Check every cache file's size and sha256 against meta.json; returns meta.

    A mismatch is a DataError that names the file, what differs and how to rebuild the cache.
    """
    cache_dir = Path(cache_dir)
    meta = read_meta(cache_dir)
    files = _file_records(cache_dir, meta)
    for name in CACHE_FILES:  # sizes first: a truncated file is found without reading the others
        _check_size(cache_dir / name, files[name], meta)
    for name in CACHE_FILES:
        path = cache_dir / name
        with open(path, "rb") as fh:
            actual = hashlib.file_digest(fh, "sha256").hexdigest()
        if actual != files[name]["sha256"]:
            raise DataError(
                f"{path} is corrupt: its sha256 is {actual}, meta.json records {files[name]['sha256']}. "
                + _rebuild_hint(cache_dir, meta.get("source"))
            )
    return meta


def _load_npy(path: Path, meta: dict, mmap: bool) -> np.ndarray:
    files = meta.get("files")
    record = files.get(path.name) if isinstance(files, dict) else None
    if _is_record(record):  # a stat is cheap; the checksum is verify_cache's job
        _check_size(path, record, meta)
    try:
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(
            f"cannot read {path} ({err}): the cache file is missing, truncated or not a .npy array. "
            + _rebuild_hint(path.parent, meta.get("source"))
        ) from err


def load_split(cache_dir: Path, split: str, meta: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory-map one split (copy-on-write: pages stay shared between ranks unless written)."""
    import torch  # only here: building or verifying the cache needs no torch

    cache_dir = Path(cache_dir)
    meta = meta or read_meta(cache_dir)
    images = _load_npy(cache_dir / f"{split}_images.npy", meta, mmap=True)
    labels = _load_npy(cache_dir / f"{split}_labels.npy", meta, mmap=False)
    try:
        check_split(split, images, labels, expected=meta["counts"][split])
    except DataError as err:
        raise DataError(f"dataset cache {cache_dir}: {err}. {_rebuild_hint(cache_dir, meta.get('source'))}") from err
    return torch.from_numpy(images), torch.from_numpy(labels)
