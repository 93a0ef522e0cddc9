"""Reading and checking run files (results/runs/[<variant>/]ws<W>_bs<B>_seed<S>.json) and the
all-reduce timings of ddpbench.commbench, before the summary (ddpbench.summary) uses them.

Every run is checked against its file name (ws<W>_bs<B>_seed<S>.json), against the JSON schema when
given one, and, given the workflow's config, against the grid's options (with its variant's overrides)
and against the grid's run names (--expect): a run that disagrees is refused with a RunsError that says
how to fix it. With variants (the config's grid.variants, or --expect names <variant>/ws<W>_bs<B>_seed<S>),
a run's variant is its folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import jsonschema.protocols

from ddpbench.options import NetworkLink

RUN_NAME = re.compile(r"ws(?P<world_size>\d+)_bs(?P<batch_size>\d+)_seed(?P<seed>\d+)")
# A name in --expect: the run name, behind its variant's folder in a study with variants.
EXPECTED_NAME = re.compile(r"(?:(?P<variant>[^/]+)/)?" + RUN_NAME.pattern)
# The names the config schema allows for grid.variants: safe as a folder, and as plot text.
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Train options the job resolves itself (auto -> a value): the run records the resolved value,
# so it legitimately differs from the workflow config's.
RESOLVED_BY_JOB = frozenset({"threads_per_worker", "device", "ranks_per_node", "channels_last", "allreduce"})
# ... but a number given for these is what the run used, and is checked.
CHECKED_WHEN_SET = frozenset({"threads_per_worker"})
# Options a run records with their defaults filled in ({bandwidth_gbit: 1} as {bandwidth_gbit: 1, latency_us: 0}).
RECORDED_AS = {"emulate_network": NetworkLink}
REDO = "delete the file and rerun its job (snakemake then trains that run again)"
COMM_SCHEMA = "ddpbench.commbench/1"


class RunsError(ValueError):
    """Runs (or the config or timings they are checked against) the summary cannot use; the message
    names the file and the fix."""


def run_name(world_size: int, batch_size: int, seed: int, variant: str | None = None) -> str:
    """A run's name, as the workflow names its files (results/runs/<name>.json): behind its
    variant's folder (<variant>/ws<W>_bs<B>_seed<S>) in a study with variants."""
    return (f"{variant}/" if variant else "") + f"ws{world_size}_bs{batch_size}_seed{seed}"


def grid_variants(config: dict | None, expected: list[str]) -> dict[str, dict | None] | None:
    """The study's variants and their overrides, in the config's order: from the config's
    grid.variants, else the variant folders of the --expect names (overrides unknown: None); None without."""
    configured = ((config or {}).get("grid") or {}).get("variants")
    if configured:
        variants = {name: overrides or {} for name, overrides in configured.items()}
    else:
        named = [m["variant"] for m in map(EXPECTED_NAME.fullmatch, expected) if m and m["variant"]]
        variants = {name: None for name in named}
    bad = [name for name in variants if not VARIANT_NAME.fullmatch(name)]
    if bad:
        raise RunsError(
            f"variant name {bad[0]!r} is not a safe folder name (letters, digits, '_', '.', '-', "
            "starting with a letter or digit): rename it in grid.variants"
        )
    return variants or None


def baseline_variant(config: dict | None, variants: dict[str, dict] | None) -> str | None:
    """grid.baseline, else the first variant; None without variants."""
    if not variants:
        return None
    chosen = ((config or {}).get("grid") or {}).get("baseline") or next(iter(variants))
    if chosen not in variants:
        raise RunsError(
            f"grid.baseline is {chosen!r}, which is not a variant: choose one of {list(variants)} (or null: the first)"
        )
    return chosen


# --------------------------------------------------------------------------- reading runs


def read_run(
    path: Path, validator: jsonschema.protocols.Validator | None = None, schema_path: Path | None = None
) -> dict:
    """One run file, validated against the schema when given its validator."""
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunsError(f"cannot read run {path}: {err}. Delete it and re-run its training job.") from err
    if validator is not None:
        errors = sorted(validator.iter_errors(run), key=lambda e: list(e.path))
        if errors:
            where = "/".join(map(str, errors[0].path)) or "(top level)"
            raise RunsError(
                f"run {path} does not match {schema_path}: {where}: {errors[0].message}. "
                "Delete it and re-run its training job."
            )
    return run


def run_variant(path: Path, variants: dict[str, dict] | None) -> str:
    """The variant a run belongs to: its folder's name in a study with variants; "" without."""
    if not variants:
        return ""
    folder = Path(path).parent.name
    if folder not in variants:
        raise RunsError(
            f"run {path}: its folder {folder!r} is not one of grid.variants ({', '.join(variants)}); runs of a "
            "study with variants are results/runs/<variant>/ws<W>_bs<B>_seed<S>.json: move it, or leave it out"
        )
    return folder


def check_name(run: dict, path: Path) -> None:
    """The file name says which run it holds; its contents must agree (a copied or renamed file must not)."""
    match = RUN_NAME.fullmatch(Path(path).name.removesuffix(".json"))
    if match is None:
        raise RunsError(
            f"run {path}: the file name does not say which run it holds; run files are named "
            "ws<W>_bs<B>_seed<S>.json, as the workflow writes them: rename it or rerun its job"
        )
    for key in ("world_size", "batch_size", "seed"):
        if run["config"][key] != int(match[key]):
            raise RunsError(
                f"run {path}: config.{key} is {run['config'][key]!r} but the file name says {key} {match[key]}: "
                f"the file holds another run's result; {REDO}"
            )


def load_runs(paths: list[Path], schema_path: Path | None = None, variants: dict | None = None) -> list[dict]:
    """Read, validate (when given the schema) and name-check every run; each gets its ``_path``
    and ``_variant`` (its folder with variants, else "")."""
    validator = None
    if schema_path is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(json.loads(Path(schema_path).read_text()))
    runs = []
    for path in paths:
        run = read_run(path, validator, schema_path)
        check_name(run, path)
        run["_path"] = str(path)
        run["_variant"] = run_variant(path, variants)
        runs.append(run)
    return runs


def study_config(config: dict) -> dict:
    """The config the study's results depend on: all but compare:, which only `snakemake compare` reads."""
    return {key: value for key, value in config.items() if key != "compare"}


def load_config(path: Path | None) -> dict | None:
    """The workflow's resolved config (results/config.json), or any YAML of the same shape."""
    return None if path is None else yaml.safe_load(Path(path).read_text())


# --------------------------------------------------------------------------- checking runs against the config


def same_value(a: object, b: object) -> bool:
    """Equal, with numbers compared as numbers (the config's 60 is the run's 60.0)."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def variant_options(config: dict, variant: str) -> dict[str, tuple[str, object]]:
    """Each checked option's config key and value for a run of ``variant``: train: and data.loader
    with the variant's overrides on top (keys named where they were set)."""
    options = {key: (f"train.{key}", value) for key, value in (config.get("train") or {}).items()}
    if "loader" in (config.get("data") or {}):
        options["loader"] = ("data.loader", config["data"]["loader"])
    overrides = ((config.get("grid") or {}).get("variants") or {}).get(variant) or {}  # null: no override
    for section in ("train", "data"):
        for key, value in (overrides.get(section) or {}).items():
            options[key] = (f"grid.variants.{variant}.{section}.{key}", value)
    return options


def checked(key: str, value: object) -> bool:
    """Whether the run must have recorded the config's value for ``key``."""
    if key in CHECKED_WHEN_SET:
        return value != "auto"
    return key not in RESOLVED_BY_JOB


def recorded_form(key: str, value: object) -> object:
    """The config's value of ``key`` as a run records it: a link with its defaults filled in."""
    kind = RECORDED_AS.get(key)
    return dataclasses.asdict(kind(**value)) if kind is not None and isinstance(value, dict) else value


def option_pairs(run: dict, config: dict) -> Iterator[tuple[str, object, str, object]]:
    """(what the run recorded, its value, the config key, the config's value) for every checked option."""
    options = variant_options(config, run.get("_variant", ""))
    for key in sorted(options.keys() & run["config"].keys()):
        config_key, value = options[key]
        if checked(key, value):
            yield f"config.{key}", run["config"][key], config_key, recorded_form(key, value)
    data = config.get("data") or {}
    if "source" in data:
        yield "dataset.source", run["dataset"]["source"], "data.source", data["source"]


def check_options(run: dict, path: str, config: dict, source: str) -> None:
    """A run trained with other options than the grid's does not belong in its summary."""
    for run_key, run_value, config_key, config_value in option_pairs(run, config):
        if not same_value(run_value, config_value):
            raise RunsError(
                f"run {path}: {run_key} is {run_value!r} but {source} has {config_key}: {config_value!r}: "
                f"the run was trained with other options than this grid; {REDO}"
            )


def check_grid(runs: list[dict], expected: list[str]) -> None:
    """Every run is one the grid asks for (``expected``, the --expect names)."""
    names = set(expected)
    for run in runs:
        cfg = run["config"]
        name = run_name(cfg["world_size"], cfg["batch_size"], cfg["seed"], run["_variant"])
        if name not in names:
            raise RunsError(
                f"run {run['_path']} ({name}) is not part of the grid (--expect): "
                "leave it out of --runs, or add its world size, batch size and seed to the grid"
            )


def checked_runs(
    paths: list[Path], schema: Path | None, expected: list[str], config: dict | None, source: str
) -> tuple[list[dict], dict[str, dict | None] | None, str | None]:
    """The runs at ``paths``, read and checked against their names, the grid and the config;
    with the study's variants ({name: overrides}, or None) and its baseline variant."""
    if not paths:
        if expected:
            shown = ", ".join(expected[:4]) + (", ..." if len(expected) > 4 else "")
            raise RunsError(
                f"no finished run of this grid yet: none of its {len(expected)} runs ({shown}) has a result; "
                "train them first (snakemake --cores all --keep-going, with the same --configfile as here)"
            )
        raise RunsError("no run to aggregate: give run JSONs with --runs")
    variants = grid_variants(config, expected)
    baseline = baseline_variant(config, variants)
    runs = load_runs(paths, schema, variants)
    if config is not None:
        for run in runs:
            check_options(run, run["_path"], config, source)
    if expected:
        check_grid(runs, expected)
    return runs, variants, baseline


# --------------------------------------------------------------------------- the all-reduce timings


def load_comm(paths: list[Path]) -> list[dict]:
    """ddpbench.commbench's outputs, each read and checked to be one; ``_path`` added."""
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunsError(
                f"cannot read the communication benchmark {path}: {err}. Delete it and rerun its job "
                "(snakemake reruns ddpbench.commbench)."
            ) from err
        if not isinstance(doc, dict) or doc.get("schema") != COMM_SCHEMA:
            raise RunsError(
                f"{path} is not a ddpbench.commbench output (schema {COMM_SCHEMA}): give --comm the files "
                "torchrun ... -m ddpbench.commbench --out wrote, or delete it and rerun its job"
            )
        docs.append({**doc, "_path": str(path)})
    return docs
