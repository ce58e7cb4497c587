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

# Rows per `generate` call where crl-bench evaluates or validates a generation task: a decoding
# step reads every weight once whatever the rows, so a CPU decodes 64 rows ~1.6x faster than 16
GENERATION_BATCH_SIZE = 64


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content; a missing file or a syntax error names the file (and line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{what} {path}{where}: not valid YAML ({problem}); fix the file") from None


def _convert(value: Any, kind: Any, flag: str) -> Any:
    """`value` as a field of scalar type `kind`: numbers from strings (YAML reads 1e-4 as a
    string), otherwise the type it must already have."""
    if get_origin(kind) is typing.Literal:
        if value not in get_args(kind):
            raise ValueError(f"{flag} must be one of {', '.join(map(str, get_args(kind)))}, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, str):
            try:
                value = float(value) if kind is float else int(value)
            except ValueError:
                raise ValueError(
                    f"{flag} must be {'a number' if kind is float else 'an integer'}, got {value!r}"
                ) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"{flag} must be {'a number' if kind is float else 'an integer'}, got {value!r}")
        return kind(value)
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{flag} must be text, got {value!r}")
    return value


def check_fields(config: Any) -> None:
    """Check (and normalise) every field against its annotation, whatever set it (a flag, a
    YAML file or Python): `Literal` choices, numbers, booleans, text, and lists (a comma-
    separated string counts as a list). A wrong value is a ValueError that names the flag."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        annotation = hints[f.name]
        value = getattr(config, f.name)
        optional = type(None) in get_args(annotation)
        if value is None:
            if not optional and f.default is not None and f.default is not dataclasses.MISSING:
                raise ValueError(f"--{f.name.replace('_', '-')} cannot be empty")
            continue
        kind, is_list = _base_type(annotation)
        flag = "--" + f.name.replace("_", "-")
        if is_list:
            if isinstance(value, str):
                value = [x for x in value.split(",") if x]
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{flag} must be a list (or comma-separated), got {value!r}")
            value = [_convert(v, kind, flag) for v in value]
        elif kind in (int, float, bool, str) or get_origin(kind) is typing.Literal:
            value = _convert(value, kind, flag)
        setattr(config, f.name, value)


def with_close_matches(unknown: list[str], known: Any) -> str:
    """`a (did you mean b?), c`: unknown names, each with its closest known one where there is one."""
    import difflib

    known = list(known)
    return ", ".join(
        f"{name} (did you mean {match[0]}?)" if (match := difflib.get_close_matches(name, known, 1)) else name
        for name in unknown
    )


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
        check_fields(self)


@dataclasses.dataclass
class RunConfig(ModelConfig):
    """A command that writes run directories (heavy, under the cache) and results (small, committed)."""

    results_dir: str = dataclasses.field(default="results", metadata={"help": "where tables, curves and plots go"})
    runs_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "run directories (default: $CRL_BENCH_RUNS or <cache>/runs)"}
    )

    @property
    def model_results(self) -> Path:
        """This model's folder under `results_dir` (`harness.models.model_results`)."""
        from harness.models import model_results

        return model_results(self.results_dir, self.model)


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
        loaded = read_yaml(args.config, "--config") or {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"--config {args.config}: expected a mapping of setting -> value, got {type(loaded).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(
                f"--config {args.config}: unknown settings {with_close_matches(unknown, known)}; "
                f"known: {', '.join(sorted(known))}"
            )
        values.update(loaded)
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls(**values)
