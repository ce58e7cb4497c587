"""Run directories: fixed file names, safe formats, and loads that check what they read.

A run directory holds `config.json`, weights as `*.safetensors` (or PEFT adapter files)
and `manifest.json`. Nothing is ever loaded with pickle. Every load validates: a truncated
or corrupt file, a tensor holding NaN or inf, an unexpected tensor name or config key, or an
artifact made for another model gives one error that names the file and how to rebuild it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.config import with_close_matches

CONFIG = "config.json"
MANIFEST = "manifest.json"


def require_run_dir(path: str | Path, kind: str, required: tuple[str, ...], how_to_make: str) -> Path:
    """Return `path` if it is a run directory holding `required` (glob patterns), else raise."""
    run_dir = Path(path).expanduser()
    if not run_dir.exists():
        raise FileNotFoundError(f"{kind} {str(run_dir)!r} does not exist; {how_to_make}")
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{kind} {str(run_dir)!r} is a file, not a run directory; {how_to_make}")
    missing = [pattern for pattern in required if not any(run_dir.glob(pattern))]
    if missing:
        raise FileNotFoundError(f"{str(run_dir)!r} is not a {kind}: it lacks {', '.join(missing)}; {how_to_make}")
    return run_dir


def read_json(path: str | Path, how_to_rebuild: str = "delete it and rerun the command that wrote it") -> Any:
    """A JSON file's content; a truncated or corrupt one is a ValueError naming it and the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it is truncated or corrupt; {how_to_rebuild}") from None


def read_config(run_dir: Path, how_to_rebuild: str = "rebuild the run directory") -> dict[str, Any]:
    return read_json(Path(run_dir) / CONFIG, how_to_rebuild)


def read_tensors(path: str | Path, how_to_rebuild: str, expected: set[str] | None = None) -> dict[str, Any]:
    """The tensors of a safetensors file, checked: readable, finite, and (when `expected` is
    given) exactly those names."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError on a short read
        raise ValueError(
            f"{path} cannot be read as safetensors ({err}): it is truncated or corrupt; {how_to_rebuild}"
        ) from None
    if expected is not None and set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(
            f"{path} does not hold the tensors this artifact needs (missing {missing}, unexpected {extra}); "
            f"{how_to_rebuild}"
        )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or inf; {how_to_rebuild}")
    return tensors


def same_model(made_for: str | None, given: str) -> bool:
    """Whether the model an artifact names is the one given: the same spec, or the same
    resolved folder or hub id; a folder of the training machine that is not here counts as
    the same model when its name matches."""
    from harness.models import resolve_model

    if not made_for or made_for == given:
        return True
    try:
        given_resolved = resolve_model(given)
    except (ValueError, OSError):
        given_resolved = given
    if Path(made_for).expanduser().exists() or not made_for.startswith(("/", ".", "~")):
        try:
            return resolve_model(made_for) == given_resolved
        except (ValueError, OSError):
            return False
    return Path(made_for).name == Path(given_resolved).name


def check_model(made_for: str | None, given: str, what: str, override: str) -> None:
    """Refuse an artifact made for another model unless the user passed `override`."""
    if not same_model(made_for, given):
        raise ValueError(
            f"{what} was made for the model {made_for!r}, not {given!r}; pass pretrained={made_for} "
            f"(or {override} to use it on this model anyway)"
        )


def check_keys(config: dict[str, Any], known: set[str], path: Path, how_to_rebuild: str) -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {with_close_matches(unknown, known)}; known: {', '.join(sorted(known))}. "
            f"{how_to_rebuild}"
        )
