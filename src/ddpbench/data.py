"""CIFAR-10: download, safe extraction, allow-listed unpickling, a memory-mappable cache,
a synthetic stand-in, and batch-level loading on the training device.

The cache is one directory holding ``{train,test}_images.npy`` (uint8, N x 3 x 32 x 32),
``{train,test}_labels.npy`` (int64) and ``meta.json`` (written last: its presence means the
cache is complete). Every rank memory-maps the same files, so the page cache holds one copy
however many ranks run on a node.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import math
import os
import pickle
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpbench.io import atomic_write_bytes, atomic_write_json, create_temp

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The study's Normalize() constants.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR10_COUNTS = {"train": 50_000, "test": 10_000}

_MEMBER_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"{_MEMBER_DIR}/data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = f"{_MEMBER_DIR}/test_batch"
_META_MEMBER = f"{_MEMBER_DIR}/batches.meta"
SPLITS = ("train", "test")
_MAX_MEMBER_BYTES = 64 << 20  # the largest official member is about 31 MB
OFFLINE_HINT = (
    "Without network, set data.archive to a local cifar-10-python.tar.gz (and data.md5 to its md5), "
    "or use data.source: synthetic."
)


class DataError(RuntimeError):
    """Bad, missing or unsafe input data; the message says what and how to fix it."""


# --------------------------------------------------------------------------- download


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Progress:
    """A one-line progress bar, shown only when stderr is a terminal."""

    def __init__(self, total: int | None):
        self.total, self.done, self.enabled, self._last = total, 0, sys.stderr.isatty(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last > 0.2:
            self._last = now
            mib = self.done / 2**20
            if self.total:
                sys.stderr.write(f"\r  {mib:7.1f} / {self.total / 2**20:.1f} MiB ({100 * self.done / self.total:5.1f} %)")
            else:
                sys.stderr.write(f"\r  {mib:7.1f} MiB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


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
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        fd, tmp = create_temp(dest)
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length else None
                progress = _Progress(expected)
                received = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    progress.update(len(block))
                progress.close()
                if expected is not None and received != expected:
                    raise OSError(f"connection closed after {received} of {expected} bytes")
            actual = digest.hexdigest()
            if md5 and actual != md5.lower():
                raise DataError(
                    f"checksum mismatch for {url}: expected md5 {md5.lower()}, got {actual}. "
                    "The file was deleted. Check data.url and data.md5 (a mirror or a rebuilt archive has its own md5)."
                )
            os.replace(tmp, dest)
            return dest
        except DataError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:  # ValueError: malformed URL
            last_error = err
            client_error = isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500
            if isinstance(err, ValueError) or client_error:  # asking again gets the same answer
                break
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {url} after {retries + 1} attempt(s): {last_error}. {OFFLINE_HINT}")


def verify_archive(path: Path, md5: str | None) -> None:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"archive {path} does not exist. Point data.archive at cifar-10-python.tar.gz, or unset it to download.")
    if md5:
        actual = md5sum(path)
        if actual != md5.lower():
            raise DataError(
                f"checksum mismatch for {path}: expected md5 {md5.lower()}, got {actual}. "
                "Set data.md5 to the archive's md5 (md5sum FILE) if you trust this file."
            )


# --------------------------------------------------------------------------- extraction and parsing


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
                name = member.name
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
                    raise DataError(f"unsafe path {name!r} in archive {archive}: refusing to read it")
                if not (member.isfile() or member.isdir()):
                    kind = "link" if (member.issym() or member.islnk()) else "device or special file"
                    raise DataError(f"unsafe member {name!r} ({kind}) in archive {archive}: refusing to read it")
                normalized = "/".join(p for p in parts if p != ".")
                if normalized in wanted and member.size > _MAX_MEMBER_BYTES:
                    raise DataError(f"member {name!r} of {archive} is {member.size} bytes: too large for CIFAR-10")
                if normalized in wanted and member.isfile():
                    found[normalized] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"cannot read archive {archive}: {err}. Is it a complete cifar-10-python.tar.gz?") from err
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"archive {archive} lacks {', '.join(missing)}; it is not the CIFAR-10 python archive")
    return found


def _numpy_reconstruct():
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

    def find_class(self, module: str, name: str):
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed in CIFAR-10 batches"
            )
        return resolve()


def load_pickle(payload: bytes, source: str = "pickle") -> dict:
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
    batch = load_pickle(payload, source)
    try:
        data, labels = batch["data"], batch["labels"]
    except KeyError as err:
        raise DataError(f"{source}: missing key {err}") from None
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{source}: data has dtype {data.dtype} and shape {data.shape}, expected uint8 N x 3072")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------- cache


def write_cache(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the cache is incomplete until meta.json is back
    counts = {}
    for split, (images, labels) in splits.items():
        check_split(split, images, labels, expected=None)
        for kind, array in (("images", images), ("labels", labels)):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array))
            atomic_write_bytes(out_dir / f"{split}_{kind}.npy", buffer.getvalue())
        counts[split] = int(len(labels))
    atomic_write_json(out_dir / "meta.json", {**meta, "counts": counts, "classes": list(CIFAR10_CLASSES)})


def check_split(split: str, images: np.ndarray, labels: np.ndarray, expected: int | None) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise DataError(f"{split} images have dtype {images.dtype} and shape {images.shape}, expected uint8 N x 3 x 32 x 32")
    if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
        raise DataError(f"{split} labels have dtype {labels.dtype} and shape {labels.shape}, expected int64 ({images.shape[0]},)")
    if expected is not None and len(labels) != expected:
        raise DataError(f"{split} split has {len(labels)} samples, expected {expected}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{split} labels outside 0..{len(CIFAR10_CLASSES) - 1}")


def convert_cifar10(
    archive: Path, out_dir: Path, md5: str | None, expected: dict[str, int] | None = None
) -> None:
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


def read_meta(cache_dir: Path) -> dict:
    path = Path(cache_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"no dataset cache at {cache_dir} (missing meta.json); prepare it with `python -m ddpbench.data convert` or `synthetic`")
    return json.loads(path.read_text())


def load_split(cache_dir: Path, split: str, meta: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory-map one split (copy-on-write: pages stay shared between ranks unless written)."""
    cache_dir = Path(cache_dir)
    meta = meta or read_meta(cache_dir)
    images = np.load(cache_dir / f"{split}_images.npy", mmap_mode="c")
    labels = np.load(cache_dir / f"{split}_labels.npy")
    check_split(split, images, labels, expected=meta["counts"][split])
    return torch.from_numpy(images), torch.from_numpy(labels)


# --------------------------------------------------------------------------- training-time loading


@dataclass(frozen=True)
class Shard:
    """DistributedSampler(shuffle=True, drop_last=True) semantics, as index tensors.

    Each epoch a permutation seeded by (seed + epoch) is cut to a multiple of the world size
    and dealt round-robin, so every sample is used at most once per epoch across ranks and
    every rank gets the same number of samples (hence steps).
    """

    num_items: int
    world_size: int
    rank: int
    seed: int

    @property
    def num_samples(self) -> int:
        return self.num_items // self.world_size

    def indices(self, epoch: int) -> torch.Tensor:
        if self.num_samples == 0:
            raise DataError(f"{self.num_items} samples cannot be split across {self.world_size} ranks")
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.num_items, generator=generator)
        return perm[: self.num_samples * self.world_size][self.rank :: self.world_size]

    def steps(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / batch_size)


def eval_indices(num_items: int, world_size: int, rank: int) -> torch.Tensor:
    """Round-robin split of the test set: every sample exactly once, no padding."""
    return torch.arange(rank, num_items, world_size)


class BatchPipeline:
    """Gathers a batch from the resident uint8 tensor and turns it into normalised floats on
    the device; optional random crop (pad 4) and horizontal flip act on the whole batch."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        *,
        augment: str = "none",
        channels_last: bool = False,
        seed: int = 0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ):
        self.images, self.labels, self.device = images, labels, device
        self.augment, self.channels_last = augment, channels_last
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # ToTensor (x / 255) then Normalize ((x - mean) / std), folded into one multiply-add.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, index: torch.Tensor, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.to(self.images.device, non_blocking=True)
        x = self.images.index_select(0, index).to(self.device, non_blocking=True)
        y = self.labels.index_select(0, index.to(self.labels.device)).to(self.device, non_blocking=True)
        if train and self.augment == "flip_crop":
            x = self._flip_crop(x)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(x.shape, dtype=torch.float32, device=self.device, memory_format=memory_format)
        torch.addcmul(self.shift, x, self.scale, out=out)
        return out, y

    def _flip_crop(self, x: torch.Tensor, pad: int = 4) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=self.generator)
        dx = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=self.generator)
        rows = (torch.arange(h, device=x.device).view(1, 1, h, 1) + dy).expand(n, 3, h, w)
        cols = (torch.arange(w, device=x.device).view(1, 1, 1, w) + dx).expand(n, 3, h, w)
        flip = torch.rand((n, 1, 1, 1), device=x.device, generator=self.generator) < 0.5
        cols = torch.where(flip, (w - 1 + 2 * dx) - cols, cols)  # mirror inside the crop window
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1).expand(n, 3, h, w)
        chans = torch.arange(3, device=x.device).view(1, 3, 1, 1).expand(n, 3, h, w)
        return padded[batch, chans, rows, cols]


class PerSampleDataset(torch.utils.data.Dataset):
    """The study's classic path: one PIL image per sample, ToTensor + Normalize per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        from torchvision import transforms

        self.images, self.labels = images.numpy(), labels.numpy()
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(self.images[i].transpose(1, 2, 0)))
        return self.transform(image), int(self.labels[i])


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpbench.data", description="Fetch and prepare the dataset cache.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download and verify cifar-10-python.tar.gz")
    fetch.add_argument("--url", default=CIFAR10_URL)
    fetch.add_argument("--md5", default=CIFAR10_MD5)
    fetch.add_argument("--out", required=True, help="archive path to write")
    fetch.add_argument("--timeout", type=float, default=30.0, help="connect/read timeout in seconds")
    fetch.add_argument("--retries", type=int, default=3)
    convert = commands.add_parser("convert", help="verify an archive and convert it into the cache")
    convert.add_argument("--archive", required=True)
    convert.add_argument("--md5", default=CIFAR10_MD5)
    convert.add_argument("--out", required=True, help="cache directory to write")
    synthetic = commands.add_parser("synthetic", help="generate a synthetic CIFAR-shaped cache")
    synthetic.add_argument("--train-size", type=int, default=2048)
    synthetic.add_argument("--test-size", type=int, default=512)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--out", required=True, help="cache directory to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            download(args.url, Path(args.out), args.md5, timeout=args.timeout, retries=args.retries)
        elif args.command == "convert":
            verify_archive(Path(args.archive), args.md5)
            convert_cifar10(Path(args.archive), Path(args.out), args.md5)
        else:
            make_synthetic(Path(args.out), args.train_size, args.test_size, seed=args.seed)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.command}: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
