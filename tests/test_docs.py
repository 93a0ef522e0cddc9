"""The documentation a user reads: a short README whose links resolve, and a configuration
reference that says what the schema says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ddpbench import configdoc

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [README, REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a Markdown link or image target


def test_configuration_reference_is_current():
    expected = configdoc.render(configdoc.load_schema())
    current = configdoc.OUTPUT.read_text() if configdoc.OUTPUT.exists() else ""
    assert current == expected, (
        "docs/configuration.md is stale against workflow/schemas/config.schema.yaml; "
        f"regenerate it with `{configdoc.REGENERATE}` and commit the result"
    )


def documented_keys(markdown: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [type, default, description]}} from the reference's tables."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for line in markdown.splitlines():
        if heading := re.match(r"## `(.+)`$", line):
            current = heading.group(1)
        elif row := re.match(r"\| `(\w+)` \| (.*) \|$", line):
            sections.setdefault(current, {})[row.group(1)] = row.group(2).split(" | ")
    return sections


def schema_leaves(node: dict, prefix: str = "") -> dict[str, dict]:
    """Every key of the schema that is not itself an object of keys, by section."""
    leaves: dict[str, dict] = {}
    for key, child in node.get("properties", {}).items():
        if child.get("type") == "object" and "properties" in child:
            leaves.update(schema_leaves(child, f"{prefix}{key}."))
        else:
            leaves.setdefault(prefix.rstrip("."), {})[key] = child
    return leaves


def test_every_schema_key_is_documented_with_its_default_and_description():
    schema = yaml.safe_load(configdoc.SCHEMA.read_text())
    documented = documented_keys(configdoc.render(schema))
    leaves = schema_leaves(schema)
    assert {s: set(keys) for s, keys in documented.items()} == {s: set(keys) for s, keys in leaves.items()}
    for section, keys in leaves.items():
        for key, node in keys.items():
            type_text, default, description = documented[section][key]
            assert description == " ".join(node["description"].split()).replace("|", "\\|"), f"{section}.{key}"
            if "enum" in node:
                assert all(f"`{choice}`" in type_text for choice in node["enum"]), f"{section}.{key}: {type_text}"
            if "default" in node and type(node["default"]) in (str, int, float):
                assert default == f"`{node['default']}`", f"{section}.{key}: {default}"


def test_check_mode_follows_a_schema_change(tmp_path, capsys):
    schema = yaml.safe_load(configdoc.SCHEMA.read_text())
    schema_file, output = tmp_path / "schema.yaml", tmp_path / "configuration.md"
    schema_file.write_text(yaml.safe_dump(schema))
    args = ["--schema", str(schema_file), "--output", str(output)]
    assert configdoc.main([*args, "--check"]) == 1  # nothing written yet
    assert configdoc.main(args) == 0
    assert configdoc.main([*args, "--check"]) == 0

    schema["properties"]["train"]["properties"]["bucket_cap_mb"] = {
        "description": "DDP gradient bucket size in MiB.",
        "oneOf": [{"const": "auto"}, {"type": "number", "exclusiveMinimum": 0}],
        "default": "auto",
    }
    schema_file.write_text(yaml.safe_dump(schema))
    assert configdoc.main([*args, "--check"]) == 1
    assert configdoc.REGENERATE in capsys.readouterr().err
    configdoc.main(args)
    row = documented_keys(output.read_text())["train"]["bucket_cap_mb"]
    assert row == ["`auto` or number (> 0)", "`auto`", "DDP gradient bucket size in MiB."]


def test_readme_reads_in_five_minutes():
    lines = README.read_text().count("\n")
    assert lines <= 150, f"README.md has {lines} lines; move detail to docs/ (at most 150)"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(document):
    missing = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor within the page
        if not (document.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{document.relative_to(REPO)} links to files that do not exist: {missing}"


def test_readme_points_to_every_document_in_docs():
    linked = {(REPO / target).resolve() for target in LINK.findall(README.read_text())}
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link to {unlinked}: a newcomer would never find them"
