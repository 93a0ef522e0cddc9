"""A study's portable result bundle: one tar.gz that another machine can compare (ddpbench.compare).

    python -m ddpbench.bundle --root results --runs results/runs/*.json --summary results/summary.json \
        --config results/config.json [--comm results/comm/*.json] --schema workflow/schemas/run.schema.json \
        --out results/bundle.tar.gz

Members, named relative to ``--root``: the run JSONs (runs/[<variant>/]ws<W>_bs<B>_seed<S>.json),
summary.json and .csv (prediction.csv and peak.json where there are), config.json, commbench's
timings (comm/), environment.json (each host's machine state, from its first run), run.schema.json (the
schema the runs were written against) and manifest.json: the format and its version, the sha256 of
every other member, the study's id (the sha256 of those hashes: two bundles of the same study share
it) and the machine's identity. The archive is deterministic (sorted members, fixed times and
owners): the same results make the same bytes. Nothing in it depends on a path of the machine that
made it.

Reading (load_bundle) holds to the rules of the data archive (ddpbench.tarsafe): members are read
into memory, never extracted; a link, device, absolute or '..' path, a member the manifest does not
list or whose sha256 differs, an unknown format version or a truncated file refuses the bundle
with one line that names it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ddpbench.conditions import distinct
from ddpbench.io import atomic_write_bytes, utc_now
from ddpbench.runs import VARIANT_NAME
from ddpbench.tarsafe import safe_member_name

FORMAT = "ddpbench-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_BUNDLE_BYTES = 1 << 30  # uncompressed: a study's JSON is megabytes; this is far past any
MAX_MEMBERS = 100_000
# The run environment's fields that are the machine's identity in the manifest (with GPU, hosts and commit).
IDENTITY_FIELDS = ("cpu_model", "logical_cores", "cores_available", "torch", "torchvision", "python", "platform")


class BundleError(ValueError):
    pass


@dataclass
class Bundle:
    path: Path
    manifest: dict
    runs: list[dict]
    summary: dict
    config: dict | None

    @property
    def study_id(self) -> str:
        return self.manifest["study_id"]

    @property
    def baseline(self) -> str:
        """The study's baseline variant ("" without variants): what compare takes as its main setting."""
        return ((self.summary.get("variants") or {}).get("baseline")) or ""

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".gz").removesuffix(".tar")


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def one_or_all(values) -> object:
    """One value where every run agrees (conditions.distinct), the distinct values where they
    differ, None where no run recorded one."""
    found = distinct(values)
    return found[0] if len(found) == 1 else (found or None)


def identity(runs: list[dict]) -> dict:
    """What makes the machine this machine: CPU, cores, GPU, hosts, software and the code's commit."""
    envs = [run["environment"] for run in runs]
    cuda = [env for env in envs if env.get("device") == "cuda"]
    ident = {key: one_or_all(env.get(key) for env in envs) for key in IDENTITY_FIELDS}
    ident["gpu_model"] = one_or_all(env.get("device_name") for env in cuda)
    ident["gpu_count"] = max(
        (run["config"]["world_size"] for run in runs if run["config"]["device"] == "cuda"), default=0
    )
    ident["hosts"] = sorted(distinct(env.get("hostnames") or env.get("hostname") for env in envs))
    ident["git_commit"] = one_or_all(env.get("git_commit") for env in envs)
    ident["git_dirty"] = one_or_all(env.get("git_dirty") for env in envs)
    return ident


def host_environments(runs: list[dict]) -> dict:
    """Each host's machine state as its first run (by start time) recorded it."""
    hosts: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: r["timestamps"]["started_utc"]):
        hosts.setdefault(run["environment"].get("hostname") or "unknown", run["environment"])
    return {"hosts": hosts}


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A gzip tar of ``members`` that depends only on them: sorted, fixed times, root-owned, 0644."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members, key=lambda n: (n != MANIFEST, n)):  # the manifest first
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(members[name]))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def make_bundle(members: dict[str, bytes], runs: list[dict]) -> bytes:
    """The bundle of ``members`` (name -> bytes) with its manifest."""
    hashes = {name: sha256(payload) for name, payload in sorted(members.items())}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "study_id": sha256(json.dumps(hashes, sort_keys=True).encode()),
        "machine": identity(runs),
        "started_utc": min(run["timestamps"]["started_utc"] for run in runs),
        "finished_utc": max(run["timestamps"]["finished_utc"] for run in runs),
        "members": hashes,
    }
    return tar_bytes({**members, MANIFEST: json.dumps(manifest, indent=1, sort_keys=True).encode()})


def member_name(root: Path, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError as err:
        raise BundleError(f"{path} is not under {root}: a bundle's members are named relative to --root") from err


def study_members(args: argparse.Namespace) -> tuple[dict[str, bytes], list[dict]]:
    """The bundle's members from the study's files, and its runs (parsed)."""
    files = [*args.runs, args.summary, args.config, *args.comm]
    folder = args.summary.parent
    beside = [args.summary.with_suffix(".csv"), folder / "prediction.csv", folder / "peak.json"]
    files += [p for p in beside if p.is_file()]
    members = {member_name(args.root, p): Path(p).read_bytes() for p in files}
    runs = [json.loads(Path(p).read_bytes()) for p in args.runs]
    members["environment.json"] = json.dumps(host_environments(runs), indent=1, sort_keys=True).encode()
    members["run.schema.json"] = Path(args.schema).read_bytes()
    return members, runs


# --------------------------------------------------------------------------- reading


def read_tar(path: Path) -> dict[str, bytes]:
    """Every regular member of the bundle at ``path``, checked (ddpbench.tarsafe) and read into memory."""
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = safe_member_name(path, member, BundleError)
                total += member.size
                if total > MAX_BUNDLE_BYTES or len(members) > MAX_MEMBERS:
                    limits = f"{MAX_BUNDLE_BYTES >> 20} MiB or {MAX_MEMBERS} members"
                    raise BundleError(f"{path}: more than {limits} unpacked: not a ddpbench bundle")
                if name in members:
                    raise BundleError(f"{path}: member {name} appears twice: tampered, or not a ddpbench bundle")
                if member.isfile():
                    members[name] = tar.extractfile(member).read()
    except FileNotFoundError as err:
        raise BundleError(f"{path}: no such file") from err
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, zlib.error) as err:
        raise BundleError(f"{path}: cannot read it as a gzip tar (truncated, or not a bundle): {err}") from err
    return members


def checked_manifest(path: Path, members: dict[str, bytes]) -> dict:
    """The manifest, after its format, version and every member's sha256 check out."""
    try:
        manifest = json.loads(members[MANIFEST])
    except (KeyError, ValueError) as err:
        raise BundleError(f"{path}: not a ddpbench bundle (no readable {MANIFEST})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a ddpbench bundle ({MANIFEST} does not say format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {manifest.get('format_version')!r}; this ddpbench reads version "
            f"{FORMAT_VERSION}: compare it with the ddpbench that wrote it"
        )
    listed = manifest.get("members") or {}
    present = set(members) - {MANIFEST}
    if present != set(listed):
        odd = sorted(present ^ set(listed))
        raise BundleError(f"{path}: members and manifest disagree on {', '.join(odd[:3])}: damaged or tampered")
    for name, digest in sorted(listed.items()):
        if sha256(members[name]) != digest:
            raise BundleError(f"{path}: {name} does not match its sha256 in the manifest: damaged or tampered")
    return manifest


def load_bundle(path: Path) -> Bundle:
    """A checked bundle: its manifest, its runs (each with ``_variant``), summary and config."""
    import jsonschema

    path = Path(path)
    members = read_tar(path)
    manifest = checked_manifest(path, members)
    try:
        validator = jsonschema.Draft202012Validator(json.loads(members["run.schema.json"]))
        runs = []
        for name in sorted(n for n in members if n.startswith("runs/") and n.endswith(".json")):
            run = json.loads(members[name])
            error = next(iter(validator.iter_errors(run)), None)
            if error is not None:
                raise BundleError(f"{path}: {name} does not match the run schema: {error.message}")
            parts = name.split("/")
            run["_variant"], run["_path"] = (parts[1] if len(parts) == 3 else ""), name
            if run["_variant"] and not VARIANT_NAME.fullmatch(run["_variant"]):
                raise BundleError(f"{path}: {name}: variant name {run['_variant']!r} is not a safe name")
            runs.append(run)
        summary = json.loads(members["summary.json"])
        config = json.loads(members["config.json"]) if "config.json" in members else None
    except (KeyError, ValueError, jsonschema.SchemaError) as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"{path}: a member is missing or unreadable ({err}): not a complete bundle") from err
    if not runs:
        raise BundleError(f"{path}: the bundle holds no run")
    bundle = Bundle(path=path, manifest=manifest, runs=runs, summary=summary, config=config)
    check_fields(bundle)
    return bundle


def check_fields(bundle: Bundle) -> None:
    """What the comparison reads, read once here: a bundle that lacks it (another ddpbench's, or
    edited along with its manifest) is named, not a traceback later."""
    from ddpbench.runtable import run_row

    try:
        bundle.manifest["machine"].items()
        str(bundle.manifest["started_utc"]) + str(bundle.manifest["study_id"])
        for run in bundle.runs:
            run_row(run)
            run["model"]["name"], run["dataset"]["source"], run["dataset"]["train_samples_used"]
        for row in bundle.summary["rows"]:
            row["variant"], row["batch_size"], row["world_size"], row["throughput_mean_img_s"]
    except (KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError) as err:
        raise BundleError(
            f"{bundle.path}: lacks {err} where ddpbench reads it: written by another ddpbench version, or edited"
        ) from err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpbench.bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="the study's results folder; members are named from it")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="the run JSONs")
    p.add_argument("--summary", type=Path, required=True, help="summary.json (summary.csv beside it goes in too)")
    p.add_argument("--config", type=Path, required=True, help="the workflow's resolved config.json")
    p.add_argument("--comm", type=Path, nargs="*", default=[], help="commbench's timings")
    p.add_argument("--schema", type=Path, required=True, help="workflow/schemas/run.schema.json")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        members, runs = study_members(args)
    except (BundleError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    atomic_write_bytes(args.out, make_bundle(members, runs))
    print(f"{utc_now()} wrote {args.out}: {len(members) + 1} members, {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
