import hashlib
import io
import pickle
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpbench import data
from ddpbench.data import DataError


# ----------------------------------------------------------------- official-format archives


from py2pickle import dumps as py2_style_pickle


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
        meta = {b"label_names": [n.encode() for n in data.CIFAR10_CLASSES], b"num_cases_per_batch": per_batch}
        add_member(tar, "cifar-10-batches-py/batches.meta", py2_style_pickle(meta))
        add_member(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    return path


def test_official_format_pickle_loads():
    expected = batch(7, 3)
    images, labels = data.parse_batch(py2_style_pickle(expected), "data_batch_1")
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
        data.parse_batch(payload, "evil")
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_convert_builds_a_memory_mappable_cache(tmp_path):
    archive = official_archive(tmp_path / "cifar.tar.gz")
    out = tmp_path / "cache"
    data.convert_cifar10(archive, out, md5=None, expected={"train": 100, "test": 30})
    meta = data.read_meta(out)
    assert meta["counts"] == {"train": 100, "test": 30} and meta["archive_md5"] == data.md5sum(archive)
    images, labels = data.load_split(out, "train")
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    first = batch(20, 1)
    assert np.array_equal(images[:20].reshape(20, -1).numpy(), first[b"data"])


def test_convert_checks_the_counts(tmp_path):
    archive = official_archive(tmp_path / "cifar.tar.gz")
    with pytest.raises(DataError, match="train split has 100 samples, expected 50000"):
        data.convert_cifar10(archive, tmp_path / "cache", md5=None)
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
        data.read_members(archive, ("cifar-10-batches-py/readme.html",))


def test_missing_member_is_named(tmp_path):
    archive = crafted(tmp_path, _info("cifar-10-batches-py/other", size=1), b"x")
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_1"):
        data.read_members(archive, ("cifar-10-batches-py/data_batch_1",))


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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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
        dest = data.download(url, tmp_path / "a.tar.gz", PAYLOAD_MD5, timeout=5, retries=0)
    assert dest.read_bytes() == PAYLOAD and no_temp_files(tmp_path)


def test_checksum_mismatch_names_both_sums_and_deletes(tmp_path):
    wrong = "0" * 32
    with serve(lambda h, n: send(h, PAYLOAD)) as (url, requests):
        with pytest.raises(DataError) as err:
            data.download(url, tmp_path / "a.tar.gz", wrong, timeout=5, retries=2, backoff=0.01)
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
        dest = data.download(url, tmp_path / "a.tar.gz", PAYLOAD_MD5, timeout=5, retries=2, backoff=0.01)
    assert len(requests) == 2 and dest.read_bytes() == PAYLOAD and no_temp_files(tmp_path)


def test_persistent_failure_explains_offline_options(tmp_path):
    def broken(handler, n):
        send(handler, PAYLOAD[:1000], declared=len(PAYLOAD))
        handler.close_connection = True

    with serve(broken) as (url, requests):
        with pytest.raises(DataError, match="data.archive") as err:
            data.download(url, tmp_path / "a.tar.gz", PAYLOAD_MD5, timeout=5, retries=2, backoff=0.01)
    assert len(requests) == 3 and "synthetic" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_file_url_and_local_archive_check(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    dest = data.download(source.as_uri(), tmp_path / "dl" / "a.bin", PAYLOAD_MD5, retries=0)
    assert dest.read_bytes() == PAYLOAD
    data.verify_archive(source, PAYLOAD_MD5)
    with pytest.raises(DataError, match="checksum mismatch"):
        data.verify_archive(source, "f" * 32)


# ----------------------------------------------------------------- training-time loading


@pytest.mark.parametrize("n, world_size", [(1000, 1), (1000, 3), (1001, 4), (7, 2)])
def test_shard_covers_each_index_at_most_once_with_equal_steps(n, world_size):
    for epoch in range(3):
        shards = [data.Shard(n, world_size, r, seed=5).indices(epoch) for r in range(world_size)]
        union = torch.cat(shards)
        assert len(set(union.tolist())) == len(union) == (n // world_size) * world_size
        assert len({len(s) for s in shards}) == 1
        assert len({data.Shard(n, world_size, r, 5).steps(64) for r in range(world_size)}) == 1


def test_shard_matches_distributed_sampler_and_reshuffles():
    n, world_size = 1003, 3
    for rank in range(world_size):
        sampler = torch.utils.data.DistributedSampler(range(n), world_size, rank, shuffle=True, seed=7, drop_last=True)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            assert data.Shard(n, world_size, rank, seed=7).indices(epoch).tolist() == list(sampler)
    shard = data.Shard(n, world_size, 0, seed=7)
    assert shard.indices(0).tolist() != shard.indices(1).tolist()
    assert shard.indices(1).tolist() == data.Shard(n, world_size, 0, seed=7).indices(1).tolist()


def test_eval_indices_count_every_sample_once():
    parts = [data.eval_indices(10_000, 3, r) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10_000))


def test_batch_normalisation_equals_totensor_normalize():
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))
    labels = torch.arange(6)
    pipeline = data.BatchPipeline(images, labels, torch.device("cpu"), channels_last=True)
    x, y = pipeline(torch.tensor([4, 1, 3]))
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.CIFAR10_MEAN, data.CIFAR10_STD)])
    for row, i in enumerate([4, 1, 3]):
        expected = reference(Image.fromarray(images[i].permute(1, 2, 0).numpy()))
        torch.testing.assert_close(x[row], expected, rtol=1e-5, atol=1e-5)
    assert y.tolist() == [4, 1, 3] and x.is_contiguous(memory_format=torch.channels_last)


def test_flip_crop_takes_a_window_of_the_padded_image():
    images = torch.arange(4 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(4, 3, 32, 32)
    pipeline = data.BatchPipeline(images, torch.zeros(4, dtype=torch.int64), torch.device("cpu"), augment="flip_crop",
                                  mean=(0, 0, 0), std=(1 / 255,) * 3, seed=1)
    x, _ = pipeline(torch.arange(4))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4)).float()
    for i in range(4):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(x[i], w) for w in windows)


def test_synthetic_is_deterministic_and_valid(tmp_path):
    data.make_synthetic(tmp_path / "a", 64, 16, seed=3)
    data.make_synthetic(tmp_path / "b", 64, 16, seed=3)
    for name in ("train_images.npy", "test_labels.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    images, labels = data.load_split(tmp_path / "a", "train")
    assert images.shape == (64, 3, 32, 32) and int(labels.max()) < 10


def test_missing_cache_says_how_to_make_it(tmp_path):
    with pytest.raises(DataError, match="python -m ddpbench.data"):
        data.load_split(tmp_path, "train")
