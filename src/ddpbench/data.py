"""Command line for the dataset: ``python -m ddpbench.data {download,convert,synthetic}``.

The code lives in ddpbench.fetch (download, no torch), ddpbench.archive (reading the official
archive), ddpbench.cache (the memory-mappable cache) and ddpbench.batches (training-time
loading), the dataset's constants in ddpbench.cifar10. Each command imports only what it needs,
so ``download`` starts without torch or numpy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ddpbench.cifar10 import CIFAR10_MD5, CIFAR10_URL
from ddpbench.fetch import DataError
from ddpbench.io import DiskFullError


def _download(args: argparse.Namespace) -> None:
    from ddpbench.fetch import download

    download(args.url, Path(args.out), args.md5, timeout=args.timeout, retries=args.retries)


def _convert(args: argparse.Namespace) -> None:
    from ddpbench.archive import convert_cifar10
    from ddpbench.fetch import verify_archive

    verify_archive(Path(args.archive), args.md5)
    convert_cifar10(Path(args.archive), Path(args.out), args.md5)


def _synthetic(args: argparse.Namespace) -> None:
    from ddpbench.cache import make_synthetic

    make_synthetic(Path(args.out), args.train_size, args.test_size, seed=args.seed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpbench.data", description="Fetch and prepare the dataset cache.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download and verify cifar-10-python.tar.gz")
    fetch.add_argument("--url", default=CIFAR10_URL)
    fetch.add_argument("--md5", default=CIFAR10_MD5)
    fetch.add_argument("--out", required=True, help="archive path to write")
    fetch.add_argument("--timeout", type=float, default=30.0, help="connect/read timeout in seconds")
    fetch.add_argument("--retries", type=int, default=3)
    fetch.set_defaults(action=_download)
    convert = commands.add_parser("convert", help="verify an archive and convert it into the cache")
    convert.add_argument("--archive", required=True)
    convert.add_argument("--md5", default=CIFAR10_MD5)
    convert.add_argument("--out", required=True, help="cache directory to write")
    convert.set_defaults(action=_convert)
    synthetic = commands.add_parser("synthetic", help="generate a synthetic CIFAR-shaped cache")
    synthetic.add_argument("--train-size", type=int, default=2048)
    synthetic.add_argument("--test-size", type=int, default=512)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--out", required=True, help="cache directory to write")
    synthetic.set_defaults(action=_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a data problem or a full disk is one line on stderr and exit status 1."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args.action(args)
    except (DataError, DiskFullError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.command}: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
