"""Write docs/configuration.md from the descriptions in workflow/schemas/config.schema.yaml.

The schema is the one reference for the configuration: it validates config.yaml and fills in its
defaults. This module turns it into one Markdown table per section (key, type or choices,
default, description), so the reference cannot drift from what the workflow accepts.

    python -m ddpbench.configdoc            # rewrite docs/configuration.md
    python -m ddpbench.configdoc --check    # exit 1 if docs/configuration.md is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ddpbench.io import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
OUTPUT = REPO / "docs" / "configuration.md"
REGENERATE = "python -m ddpbench.configdoc"

INTRO = f"""\
# Configuration reference

<!-- Generated from workflow/schemas/config.schema.yaml by `{REGENERATE}`; edit the schema, not this file. -->

`config.yaml` holds the experiment grid. The schema `workflow/schemas/config.schema.yaml` validates
it before any job starts and fills in the defaults below, so a key left out takes its default; a
wrong key, type or value is an error that names the key and what is allowed.

Override keys for one run with `--config section='{{key: value}}'` (values given on the command line
are strings to Snakemake; the workflow turns them into numbers, booleans or null where the schema
asks for one), or write a YAML file and pass `--configfile my-grid.yaml`.
"""


def load_schema(path: Path = SCHEMA) -> dict:
    """The configuration schema as a dict; a missing or unreadable file names itself."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise SystemExit(f"cannot read the configuration schema {path}: {exc.strerror}") from exc


def resolve_ref(node: dict, root: dict) -> dict:
    """Follow a local ``$ref`` (``#/$defs/name``) to the definition it names."""
    while isinstance(node, dict) and "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def literal(value: object) -> str:
    """A value as it is written in config.yaml, in code format."""
    text = value if isinstance(value, str) else json.dumps(value).replace('"', "")
    return f"`{text}`"


def bounds(node: dict) -> str:
    """The numeric and list constraints of a node, e.g. ">= 1" or "unique"."""
    signs = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    parts = [f"{sign} {node[key]}" for key, sign in signs.items() if key in node]
    if node.get("uniqueItems"):
        parts.append("unique")
    if "pattern" in node:
        parts.append(f"matching `{node['pattern']}`")
    return ", ".join(parts)


def type_text(node: dict, root: dict) -> str:
    """What a key accepts: its choices, its JSON type(s) and their constraints."""
    node = resolve_ref(node, root)
    if "const" in node:
        return literal(node["const"])
    if "enum" in node:
        return " / ".join(literal(choice) for choice in node["enum"])
    for combinator in ("oneOf", "anyOf"):
        if combinator in node:
            return " or ".join(type_text(option, root) for option in node[combinator])
    types = node.get("type", "any")
    text = " or ".join(types if isinstance(types, list) else [types])
    limits = bounds(node)
    if "items" in node:  # a list: what each item accepts, then the list's own constraints
        return f"list of {type_text(node['items'], root)}" + (f", {limits}" if limits else "")
    return f"{text} ({limits})" if limits else text


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def is_section(node: dict) -> bool:
    return node.get("type") == "object" and "properties" in node


def section_rows(properties: dict, root: dict) -> list[str]:
    """One table row per key that is not itself a section."""
    rows = []
    for key, node in properties.items():
        node = resolve_ref(node, root)
        if is_section(node):
            continue
        default = literal(node["default"]) if "default" in node else "required"
        rows.append(
            f"| `{key}` | {cell(type_text(node, root))} | {cell(default)} | {cell(node.get('description', ''))} |"
        )
    return rows


def sections(node: dict, root: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Every object with properties, depth first, named by its dotted path (``data.synthetic``)."""
    found = []
    for key, child in node.get("properties", {}).items():
        child = resolve_ref(child, root)
        if is_section(child):
            name = f"{prefix}{key}"
            found.append((name, child))
            found.extend(sections(child, root, prefix=f"{name}."))
    return found


def render(schema: dict) -> str:
    """The Markdown reference for a configuration schema."""
    parts = [INTRO]
    top_level = section_rows(schema.get("properties", {}), schema)
    if top_level:
        parts.append("## Top level\n\n| key | type or choices | default | description |\n| --- | --- | --- | --- |")
        parts.append("\n".join(top_level) + "\n")
    for name, node in sections(schema, schema):
        rows = section_rows(node["properties"], schema)
        if not rows:
            continue
        heading = f"## `{name}`\n"
        if node.get("description"):
            heading += f"\n{' '.join(node['description'].split())}\n"
        table = "| key | type or choices | default | description |\n| --- | --- | --- | --- |\n" + "\n".join(rows)
        parts.append(f"{heading}\n{table}\n")
    return "\n".join(parts)


def is_stale(schema_path: Path = SCHEMA, output: Path = OUTPUT) -> bool:
    """True when ``output`` differs from what the schema generates now (or does not exist)."""
    expected = render(load_schema(schema_path))
    return not output.exists() or output.read_text() != expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpbench.configdoc", description=__doc__.splitlines()[0])
    parser.add_argument("--schema", type=Path, default=SCHEMA, help="configuration schema (YAML)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="Markdown file to write or check")
    parser.add_argument("--check", action="store_true", help="only check: exit 1 if the output is stale")
    args = parser.parse_args(argv)
    if args.check:
        if is_stale(args.schema, args.output):
            print(f"{args.output} is stale against {args.schema}; regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(args.output, render(load_schema(args.schema)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
