"""One path from YAML files and CLI flags to the config dataclasses.

Flags are generated from the dataclass fields (type, default, `metadata["help"]`), so no
second list of parameter names exists. `--config file.yaml` supplies defaults that flags
given on the command line override.

`ModelConfig` and `RunConfig` hold the fields most commands share (model, device, dtype,
seed; results and run directories); every config checks its `Literal` choices the same way,
so a wrong value names the valid ones whether it came from a flag, a YAML file or Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from harness.models import DEFAULT_MODEL

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


def check_choices(config: Any) -> None:
    """Raise a ValueError naming the valid values for every `Literal` field set to another."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kind, is_list = _base_type(hints[f.name])
        if get_origin(kind) is not typing.Literal:
            continue
        value = getattr(config, f.name)
        for item in (value or []) if is_list else [] if value is None else [value]:
            if item not in get_args(kind):
                flag = "--" + f.name.replace("_", "-")
                raise ValueError(f"{flag} must be one of {', '.join(map(str, get_args(kind)))}, got {item!r}")


@dataclasses.dataclass
class ModelConfig:
    """The model a command runs, where, and in what precision."""

    model: str = dataclasses.field(
        default=DEFAULT_MODEL, metadata={"help": "HF id, local directory, or gemma-3-270m (embedded)"}
    )
    device: str | None = dataclasses.field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)"})
    dtype: Dtype = dataclasses.field(
        default="auto",
        metadata={"help": "model dtype; auto = bf16 on a CPU with native bf16 (AVX512-BF16, AMX), else fp32"},
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        check_choices(self)


@dataclasses.dataclass
class RunConfig(ModelConfig):
    """A command that writes run directories (heavy, under the cache) and results (small, committed)."""

    results_dir: str = dataclasses.field(default="results", metadata={"help": "where tables, curves and plots go"})
    runs_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "run directories (default: $CRL_BENCH_RUNS or <cache>/runs)"}
    )


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(scalar type, is_list) of a field annotation such as `int | None` or `list[str]`."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    if origin is list:
        return get_args(annotation)[0], True
    if origin is typing.Literal:
        return annotation, False
    return annotation, False


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind, is_list = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(kind) is typing.Literal:
            parser.add_argument(flag, choices=get_args(kind), default=None, help=help_text)
        elif is_list:
            parser.add_argument(
                flag,
                type=lambda s, kind=kind: [kind(x) for x in s.split(",") if x],
                default=None,
                help=f"{help_text} (comma-separated)",
            )
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)
    parser.add_argument("--config", type=Path, default=None, help="YAML file with any of these settings")


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build `cls` from a YAML file (if given) overridden by the flags actually passed."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{args.config}: unknown settings {unknown}; known: {sorted(known)}")
        values.update(loaded)
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls(**values)
