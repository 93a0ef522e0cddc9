import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, child_env
from py2pickle import dumps as py2_style_pickle

from ddpbench.archive import convert_cifar10, parse_batch, read_members
from ddpbench.batches import BatchPipeline, Shard, eval_indices
from ddpbench.cache import load_split, make_synthetic, read_meta
from ddpbench.cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from ddpbench.fetch import DataError, download, md5sum, verify_archive

# ----------------------------------------------------------------- official-format archives


def batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def official_archive(path: Path, per_batch: int = 20, test: int = 30) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(1, 6):
            add_member(tar, f"cifar-10-batches-py/data_batch_{i}", py2_style_pickle(batch(per_batch, i)))
        add_member(tar, "cifar-10-batches-py/test_batch", py2_style_pickle(batch(test, 0)))
        meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_cases_per_batch": per_batch}
        add_member(tar, "cifar-10-batches-py/batches.meta", py2_style_pickle(meta))
        add_member(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    return path


def test_official_format_pickle_loads():
    expected = batch(7, 3)
    images, labels = parse_batch(py2_style_pickle(expected), "data_batch_1")
    assert images.shape == (7, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images.reshape(7, -1), expected[b"data"])
    assert labels.tolist() == expected[b"labels"]


class RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-pickle",))


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"data": RunsCode(), "labels": []}, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load global (posix|os)\.system"):
        parse_batch(payload, "evil")
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_convert_builds_a_memory_mappable_cache(tmp_path):
    archive = official_archive(tmp_path / "cifar.tar.gz")
    out = tmp_path / "cache"
    convert_cifar10(archive, out, md5=None, expected={"train": 100, "test": 30})
    meta = read_meta(out)
    assert meta["counts"] == {"train": 100, "test": 30} and meta["archive_md5"] == md5sum(archive)
    images, labels = load_split(out, "train")
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    first = batch(20, 1)
    assert np.array_equal(images[:20].reshape(20, -1).numpy(), first[b"data"])


def test_convert_checks_the_counts(tmp_path):
    archive = official_archive(tmp_path / "cifar.tar.gz")
    with pytest.raises(DataError, match="train split has 100 samples, expected 50000"):
        convert_cifar10(archive, tmp_path / "cache", md5=None)
    assert not (tmp_path / "cache" / "meta.json").exists()


def crafted(tmp_path: Path, member: tarfile.TarInfo, payload: bytes = b"") -> Path:
    path = tmp_path / "crafted.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py/readme.html", b"ok")
        tar.addfile(member, io.BytesIO(payload) if payload else None)
    return path


def _info(name: str, kind=tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.mark.parametrize(
    "member, why",
    [
        (_info("../escape", size=1), "unsafe path"),
        (_info("cifar-10-batches-py/../../escape", size=1), "unsafe path"),
        (_info("/etc/cron.d/evil", size=1), "unsafe path"),
        (_info("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, link="/etc/passwd"), "link"),
        (_info("cifar-10-batches-py/data_batch_2", tarfile.LNKTYPE, link="cifar-10-batches-py/readme.html"), "link"),
        (_info("cifar-10-batches-py/dev", tarfile.CHRTYPE), "device"),
    ],
)
def test_extraction_refuses_unsafe_members(tmp_path, member, why):
    archive = crafted(tmp_path, member, b"x" if member.size else b"")
    with pytest.raises(DataError, match=why):
        read_members(archive, ("cifar-10-batches-py/readme.html",))


def test_missing_member_is_named(tmp_path):
    archive = crafted(tmp_path, _info("cifar-10-batches-py/other", size=1), b"x")
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_1"):
        read_members(archive, ("cifar-10-batches-py/data_batch_1",))


# ----------------------------------------------------------------- download


@contextmanager
def serve(handler_body):
    """A loopback HTTP server whose GET handler is handler_body(handler, request_number)."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            handler_body(self, len(requests))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll: shutdown() waits for the loop to notice (0.5 s by default, in every test).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz", requests
    finally:
        server.shutdown()
        server.server_close()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def send(handler, body: bytes, declared: int | None = None):
    handler.send_response(200)
    handler.send_header("Content-Length", str(declared if declared is not None else len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_download_verifies_and_renames(tmp_path):
    with serve(lambda h, n: send(h, PAYLOAD)) as (url, _):
        dest = download(url, tmp_path / "a.tar.gz", PAYLOAD_MD5, timeout=5, retries=0)
    assert dest.read_bytes() == PAYLOAD and no_temp_files(tmp_path)


def test_checksum_mismatch_names_both_sums_and_deletes(tmp_path):
    wrong = "0" * 32
    with serve(lambda h, n: send(h, PAYLOAD)) as (url, requests), pytest.raises(DataError) as err:
        download(url, tmp_path / "a.tar.gz", wrong, timeout=5, retries=2, backoff=0.01)
    message = str(err.value)
    assert wrong in message and PAYLOAD_MD5 in message and url in message
    assert len(requests) == 1  # a wrong file is not fetched again
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_is_retried(tmp_path):
    def flaky(handler, n):
        if n == 1:  # promise the whole file, send half, hang up
            send(handler, PAYLOAD[: len(PAYLOAD) // 2], declared=len(PAYLOAD))
            handler.close_connection = True
        else:
            send(handler, PAYLOAD)

    with serve(flaky) as (url, requests):
        dest = download(url, tmp_path / "a.tar.gz", PAYLOAD_MD5, timeout=5, retries=2, backoff=0.01)
    assert len(requests) == 2 and dest.read_bytes() == PAYLOAD and no_temp_files(tmp_path)


def test_persistent_failure_explains_offline_options(tmp_path):
    def broken(handler, n):
        send(handler, PAYLOAD[:1000], declared=len(PAYLOAD))
        handler.close_connection = True

    with serve(broken) as (url, requests), pytest.raises(DataError, match="data.archive") as err:
        download(url, tmp_path / "a.tar.gz", PAYLOAD_MD5, timeout=5, retries=2, backoff=0.01)
    assert len(requests) == 3 and "synthetic" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_file_url_and_local_archive_check(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    dest = download(source.as_uri(), tmp_path / "dl" / "a.bin", PAYLOAD_MD5, retries=0)
    assert dest.read_bytes() == PAYLOAD
    verify_archive(source, PAYLOAD_MD5)
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_archive(source, "f" * 32)


def test_download_logs_a_line_per_tenth(tmp_path, caplog):
    payload = PAYLOAD * 4  # four 1 MiB reads: 25, 50, 75 and 100 %
    caplog.set_level("INFO", logger="ddpbench.fetch")
    with serve(lambda h, n: send(h, payload)) as (url, _):
        download(url, tmp_path / "a.tar.gz", hashlib.md5(payload).hexdigest(), timeout=5, retries=0)
    lines = [r.getMessage() for r in caplog.records]
    assert url in lines[0] and "4.0 MiB" in lines[0]
    assert [line.split("(")[1].split(")")[0] for line in lines[1:]] == ["25 %", "50 %", "75 %", "100 %"]


def test_download_without_length_logs_every_16_mib(tmp_path, caplog):
    payload = bytes(40 << 20)

    def no_length(handler, n):  # HTTP/1.0 style: the end of the body is the end of the connection
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(payload)
        handler.close_connection = True

    caplog.set_level("INFO", logger="ddpbench.fetch")
    with serve(no_length) as (url, _):
        download(url, tmp_path / "a.bin", hashlib.md5(payload).hexdigest(), timeout=5, retries=0)
    lines = [r.getMessage() for r in caplog.records]
    assert "size unknown" in lines[0]
    assert [line.split(",")[0].strip() for line in lines[1:]] == ["16.0 MiB", "32.0 MiB"]


def test_download_command_does_not_import_torch_or_numpy(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    out = tmp_path / "a.bin"
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "ddpbench.data",
            "download",
            "--url",
            source.as_uri(),
            "--md5",
            PAYLOAD_MD5,
            "--out",
            str(out),
            "--retries",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == PAYLOAD and "(100 %)" in result.stderr
    imported = {
        line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert "ddpbench.fetch" in imported  # the probe sees the package's own imports
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "numpy"))
    assert not heavy, f"download imported {heavy[:5]}"


def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddpbench.data",
            "convert",
            "--archive",
            str(tmp_path / "missing.tar.gz"),
            "--out",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: archive {tmp_path / 'missing.tar.gz'} does not exist. "
        "Point data.archive at cifar-10-python.tar.gz, or unset it to download."
    ]


# ----------------------------------------------------------------- training-time loading


@pytest.mark.parametrize("n, world_size", [(1000, 1), (1000, 3), (1001, 4), (7, 2)])
def test_shard_covers_each_index_at_most_once_with_equal_steps(n, world_size):
    for epoch in range(3):
        shards = [Shard(n, world_size, r, seed=5).indices(epoch) for r in range(world_size)]
        union = torch.cat(shards)
        assert len(set(union.tolist())) == len(union) == (n // world_size) * world_size
        assert len({len(s) for s in shards}) == 1
        assert len({Shard(n, world_size, r, 5).steps(64) for r in range(world_size)}) == 1


def test_shard_matches_distributed_sampler_and_reshuffles():
    n, world_size = 1003, 3
    for rank in range(world_size):
        sampler = torch.utils.data.DistributedSampler(range(n), world_size, rank, shuffle=True, seed=7, drop_last=True)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            assert Shard(n, world_size, rank, seed=7).indices(epoch).tolist() == list(sampler)
    shard = Shard(n, world_size, 0, seed=7)
    assert shard.indices(0).tolist() != shard.indices(1).tolist()
    assert shard.indices(1).tolist() == Shard(n, world_size, 0, seed=7).indices(1).tolist()


def test_eval_indices_count_every_sample_once():
    parts = [eval_indices(10_000, 3, r) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10_000))


@pytest.mark.slow  # imports torchvision (seconds) for the reference transform
def test_batch_normalisation_equals_totensor_normalize():
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))
    labels = torch.arange(6)
    pipeline = BatchPipeline(images, labels, torch.device("cpu"), channels_last=True)
    x, y = pipeline(torch.tensor([4, 1, 3]))
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    for row, i in enumerate([4, 1, 3]):
        expected = reference(Image.fromarray(images[i].permute(1, 2, 0).numpy()))
        torch.testing.assert_close(x[row], expected, rtol=1e-5, atol=1e-5)
    assert y.tolist() == [4, 1, 3] and x.is_contiguous(memory_format=torch.channels_last)


def crops_of(image: torch.Tensor, pad: int = 4):
    """Every 32 x 32 window of the zero-padded image, as is and mirrored, with (dy, dx, flipped)."""
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad)).float()
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy : dy + 32, dx : dx + 32]
            yield (dy, dx, False), window
            yield (dy, dx, True), window.flip(-1)


def test_flip_crop_shifts_and_flips_windows_of_the_padded_image():
    n = 64
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    pipeline = BatchPipeline(
        images,
        torch.zeros(n, dtype=torch.int64),
        torch.device("cpu"),
        augment="flip_crop",
        mean=(0, 0, 0),
        std=(1 / 255,) * 3,
        seed=1,
    )
    x, _ = pipeline(torch.arange(n))
    transforms = []
    for i in range(n):
        found = [how for how, window in crops_of(images[i]) if torch.equal(x[i], window)]
        assert len(found) == 1, f"image {i} is not one window of its padded, possibly mirrored self"
        transforms.append(found[0])
    flipped = sum(flip for _, _, flip in transforms)
    offsets = {(dy, dx) for dy, dx, _ in transforms}
    assert 16 <= flipped <= 48, f"{flipped} of {n} images mirrored, expected about half"
    assert len(offsets) >= 20, f"crop offsets {sorted(offsets)}: expected most of the 81 to occur"
    x_eval, _ = pipeline(torch.arange(n), train=False)
    assert torch.equal(x_eval, images.float()), "evaluation batches must not be augmented"


def test_synthetic_is_deterministic_and_valid(tmp_path):
    make_synthetic(tmp_path / "a", 64, 16, seed=3)
    make_synthetic(tmp_path / "b", 64, 16, seed=3)
    for name in ("train_images.npy", "test_labels.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    images, labels = load_split(tmp_path / "a", "train")
    assert images.shape == (64, 3, 32, 32) and int(labels.max()) < 10


def test_missing_cache_says_how_to_make_it(tmp_path):
    with pytest.raises(DataError, match="python -m ddpbench.data"):
        load_split(tmp_path, "train")
