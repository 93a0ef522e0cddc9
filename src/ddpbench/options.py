"""The run options, defined once.

``TrainOptions`` is the workflow's ``train:`` section: one field per key, its type (a ``Literal``
for choices), its default and a one-line docstring under it. ``workflow/schemas/config.schema.yaml``
must agree with it (``tests/test_options.py`` checks names, types, defaults and choices), and the
command line of ``python -m ddpbench.train`` is derived from the fields, so an option is added by
editing this file and the schema, nothing else. No torch here: the workflow imports it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import shlex
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

Auto = Literal["auto"]


@dataclass(frozen=True)
class NetworkLink:
    """An emulated link between the ranks' network namespaces."""

    bandwidth_gbit: float
    latency_us: float = 0.0


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """The ``train:`` section of the workflow configuration."""

    model: Literal["simple_cnn", "resnet18"] = "simple_cnn"
    """Model from the registry: simple_cnn (the study's) or resnet18 (a 32x32 ResNet-18)."""
    epochs: int = 5
    """Training epochs."""
    lr: float = 0.01
    """SGD learning rate at base_batch_size."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1.0e-4
    """SGD weight decay."""
    batch_size_mode: Literal["per_worker", "global"] = "per_worker"
    """per_worker: every rank takes the batch size (the study); global: the batch size is split across ranks."""
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """Scale lr with the global batch relative to base_batch_size: none, linear or sqrt."""
    base_batch_size: int = 128
    """Global batch size at which lr is stated."""
    warmup_epochs: float = 0.0
    """Linear learning-rate warm-up, in epochs (fractions allowed); shorter than the run."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """After the warm-up: constant (the study's protocol), cosine or linear decay towards zero at the run's end."""
    augment: Literal["none", "flip_crop"] = "none"
    """Training augmentation: none (the study) or flip_crop (random crop with 4-pixel padding and horizontal flip)."""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """Memory format: auto (on: faster for these CNNs on CPU and CUDA), on or off."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast."""
    compile: Literal["none", "default", "max-autotune", "auto"] = "none"
    """torch.compile of the DDP module (inductor): none (eager, the standard stack), default, max-autotune, or auto
    (default where a trial compile works, else eager); a named mode that cannot compile fails before any step."""
    allreduce: Literal["backend", "shared_memory", "auto"] = "backend"
    """How ranks sum gradients: backend (DDP's own all-reduce: gloo on cpu, nccl on cuda), shared_memory (CPU ranks
    on one node sum in a shared-memory segment) or auto (shared_memory where it applies, else backend)."""
    comm_hook: Literal["none", "fp16", "bf16", "powersgd"] = "none"
    """DDP's communication hook (with allreduce: backend): none (full-precision all-reduce), fp16 or bf16 (buckets
    compressed to half precision for the all-reduce) or powersgd (low-rank compression)."""
    powersgd_rank: int = 1
    """PowerSGD's matrix approximation rank (comm_hook: powersgd)."""
    powersgd_start_iter: int = 10
    """Steps PowerSGD runs the plain all-reduce before it starts compressing (at least 2)."""
    bucket_cap_mb: float = 25.0
    """DDP's gradient bucket size cap in MiB (DDP's default: 25); the buckets it really built are recorded."""
    static_graph: bool = False
    """DDP's static_graph: the same parameters take part in every step, so DDP may skip some bookkeeping."""
    gradient_as_bucket_view: bool = True
    """Gradients as views into DDP's buckets: no copy between them each step."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """cpu (gloo), cuda (nccl, rank r on cuda:r) or auto (cuda where the node has GPUs; decided on that node)."""
    threads_per_worker: int | Auto = "auto"
    """CPU threads per rank; auto = the job's threads (the CPUs it may use) divided by its ranks, at least 1."""
    ranks_per_node: int | Auto = "auto"
    """Ranks on one node. auto: every run on one node. A number P splits a world size W > P over W / P nodes
    (SLURM, torchrun's c10d rendezvous); W must then be a multiple of P."""
    max_train_samples: int | None = None
    """Use only the first N training images (quick runs); null = all."""
    target_accuracy: float | None = 65.0
    """Test accuracy (%) for time-to-accuracy; null = not measured."""
    eval_batch_size: int = 500
    """Batch size for evaluation."""
    timeout: float = 60.0
    """Seconds a rank waits for a silent peer before the run fails."""
    emulate_network: NetworkLink | None = None
    """Run each rank in its own network namespace, joined by links shaped with tc (Linux, root): {bandwidth_gbit: 1},
    with latency_us where the kernel has netem; null: the ranks talk as usual."""


@dataclass(frozen=True, kw_only=True)
class RunOptions(TrainOptions):
    """One run: the train options plus what the workflow decides per run."""

    data: str
    """Dataset cache directory (python -m ddpbench.data)."""
    out: str | None = None
    """Run JSON to write (rank 0); none: nothing is written."""
    batch_size: int = 128
    """Batch size (per worker or global, see batch_size_mode)."""
    seed: int = 0
    """Seed of the weights, the data order and dropout."""
    loader: Literal["resident", "dataloader"] = "resident"
    """How batches are made: resident (gathered from the mapped cache) or dataloader (the study's per-sample path)."""


# --------------------------------------------------------------------------- introspection


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of ``cls`` and its bases, joined into one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
            ):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_parts(annotation: Any) -> tuple[set[type], tuple[str, ...]]:
    """A field's annotation as (plain types, literal choices): ``int | Literal["auto"]`` is ({int}, ("auto",))."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    plain, choices = set(), ()
    for member in members:
        if typing.get_origin(member) is Literal:
            choices += typing.get_args(member)
        else:
            plain.add(member)
    return plain, choices


# --------------------------------------------------------------------------- text values


def parse_value(text: str, annotation: Any, name: str) -> Any:
    """A command-line string as the field's type; the error names the option and what it accepts."""
    plain, choices = type_parts(annotation)
    if text in choices:
        return text
    if type(None) in plain and text.lower() in ("null", "none"):
        return None
    for kind in plain:
        if dataclasses.is_dataclass(kind):
            try:
                return kind(**json.loads(text))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{text!r} is not a JSON object of {kind.__name__}'s fields ({err})") from None
    for kind in (bool, int, float, str):
        if kind in plain:
            try:
                return _parse_scalar(text, kind)
            except ValueError:
                pass
    accepted = [
        *choices,
        *(t.__name__ for t in plain if t is not type(None)),
        *(["null"] if type(None) in plain else []),
    ]
    raise ValueError(f"{text!r} is not one of: {', '.join(accepted)}")


def _parse_scalar(text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    return kind(text)


def _argument_type(annotation: Any, name: str):
    def parse(text: str) -> Any:
        try:
            return parse_value(text, annotation, name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def format_value(value: Any) -> str:
    """The command-line form of a value (``parse_value`` reads it back)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return value if isinstance(value, str) else json.dumps(value)


def command_line(options: dict[str, Any]) -> str:
    """``--key value`` for each option, shell-quoted: how the workflow passes a whole section through."""
    return " ".join(f"--{key.replace('_', '-')} {shlex.quote(format_value(value))}" for key, value in options.items())


# --------------------------------------------------------------------------- the command line


def add_arguments(parser: argparse.ArgumentParser, cls: type = RunOptions) -> None:
    """One ``--field-name`` option per field, typed and documented by the field."""
    docs, hints = field_docs(cls), field_types(cls)
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            required=required,
            default=default,
            type=_argument_type(annotation, field.name),
            help=(docs.get(field.name, "") + ("" if required else f" (default: {format_value(default)})")).replace(
                "%", "%%"
            ),  # argparse formats help with %
            metavar=_metavar(annotation),
        )


def _metavar(annotation: Any) -> str:
    plain, choices = type_parts(annotation)
    names = [*choices, *(t.__name__.upper() for t in plain if t is not type(None))]
    return "{" + ",".join(names) + "}" if choices else (names[0] if names else "VALUE")


def from_namespace(args: argparse.Namespace, cls: type = RunOptions) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
