"""The run options have one definition (ddpbench.options); the schema and the command line agree with it."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from ddpbench import options as opts

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def schema_kinds(node: dict) -> tuple[set[str], set]:
    """(JSON types, constants and enum values) a schema node allows, over its oneOf branches."""
    types, choices = set(), set()
    for branch in [node, *node.get("oneOf", [])]:
        kind = branch.get("type", [])
        types.update([kind] if isinstance(kind, str) else kind)
        choices.update(branch.get("enum", []))
        if "const" in branch:
            choices.add(branch["const"])
    return types, choices


def dataclass_kinds(annotation) -> tuple[set[str], set]:
    plain, choices = opts.type_parts(annotation)
    return {"object" if dataclasses.is_dataclass(t) else JSON_TYPES[t] for t in plain}, set(choices)


def option_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(
    "section, cls, names",
    [
        ("train", opts.TrainOptions, None),
        ("data", opts.RunOptions, ["loader"]),
    ],
)
def test_schema_and_dataclass_agree(section, cls, names):
    properties = SCHEMA["properties"][section]["properties"]
    fields, hints = option_fields(cls), opts.field_types(cls)
    names = names or list(fields)
    if section == "train":
        assert sorted(properties) == sorted(fields), "the schema's train keys and TrainOptions' fields differ"
    for name in names:
        node = properties[name]
        assert node["default"] == fields[name].default, f"default of {section}.{name}"
        types, choices = dataclass_kinds(hints[name])
        schema_types, schema_choices = schema_kinds(node)
        assert schema_choices == choices, f"choices of {section}.{name}"
        # JSON "number" admits integers: a float field may be written as 0 in YAML.
        assert schema_types == types, f"types of {section}.{name}"
        assert opts.field_docs(cls)[name], f"{name} has no docstring"


def test_the_command_line_round_trips_every_option():
    """What the workflow writes (options.command_line) is what the train entry point reads back."""
    import argparse

    chosen = opts.RunOptions(
        emulate_network=opts.NetworkLink(bandwidth_gbit=0.3),
        data="resources/my data",
        out=None,
        epochs=2,
        lr=1e-4,
        target_accuracy=None,
        threads_per_worker=3,
        ranks_per_node="auto",
        max_train_samples=100,
        loader="dataloader",
    )
    parser = argparse.ArgumentParser()
    opts.add_arguments(parser)
    values = {f.name: getattr(chosen, f.name) for f in dataclasses.fields(chosen)}
    parsed = opts.from_namespace(parser.parse_args(shlex.split(opts.command_line(values))))
    assert parsed == chosen


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads-per-worker", "two"], "'two' is not one of: auto, int"),
        (["--precision", "fp8"], "'fp8' is not one of: fp32, bf16"),
        (["--epochs", "1.5"], "'1.5' is not one of: int"),
    ],
)
def test_a_bad_value_names_the_option_and_what_it_accepts(argv, message, capsys):
    """The train entry point's own parser, in this process (test_help_... runs the command itself)."""
    from ddpbench.train import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(["--data", "x", *argv])
    assert exited.value.code == 2
    assert f"argument {argv[0]}: {message}" in capsys.readouterr().err


def test_the_options_module_does_not_import_torch():
    """The workflow imports it to build commands: no torch at DAG time."""
    code = "import sys, ddpbench.options; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow  # python -m ddpbench.train: a python that imports torch
def test_help_lists_every_option_with_its_default():
    """Through the command itself: the entry point builds its parser from the options."""
    result = subprocess.run(
        [sys.executable, "-m", "ddpbench.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for field in dataclasses.fields(opts.RunOptions):
        assert f"--{field.name.replace('_', '-')}" in result.stdout
    assert "Test accuracy (%) for time-to-accuracy" in " ".join(result.stdout.split())
