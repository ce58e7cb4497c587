"""Per-task RL settings for `crl-bench bench --rl-settings FILE`.

The file is a YAML mapping of task -> settings: the fields of `crl-bench train rlvr` /
`crl-bench train crl`. Fields both methods have (the budget above all) go to both, so their
runs stay matched; `rlvr:` and `crl:` sections hold one method's own. What bench sets
itself (model, task, seed, ...) cannot be set there. Example: `configs/arith_gen-cpu.yaml`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

RL_SETTINGS_FIXED = (
    "model",
    "task",
    "setting",
    "seed",
    "device",
    "results_dir",
    "runs_dir",
    "resume",
)  # bench sets these


def read_rl_settings(path: str) -> dict[str, dict[str, dict[str, Any]]]:
    """`--rl-settings`: {task: {"rlvr": {...}, "crl": {...}}}, each the settings that task's runs
    of that method get (the shared ones copied into both), checked against the configs' fields."""
    import yaml

    from rl.crl.config import CRLConfig
    from rl.rlvr.config import RLVRConfig

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--rl-settings {path}: no such file (a YAML mapping of task -> settings)")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--rl-settings {path}: expected a mapping of task -> settings, got {type(data).__name__}")
    classes = {"rlvr": RLVRConfig, "crl": CRLConfig}
    allowed = {method: {f.name for f in fields(cls)} for method, cls in classes.items()}
    shared = allowed["rlvr"] & allowed["crl"]
    resolved = {}
    for task, entry in data.items():
        entry = dict(entry or {})
        own = {method: dict(entry.pop(method, None) or {}) for method in allowed}
        for scope, names, keys in [("", shared, entry), *((f"{m}: ", allowed[m], own[m]) for m in allowed)]:
            wrong = sorted(k for k in keys if k not in names or k in RL_SETTINGS_FIXED)
            if wrong:
                raise ValueError(
                    f"--rl-settings {path}: {task}: {scope}{', '.join(wrong)} cannot be set there; use "
                    f"the fields of `crl-bench train {scope[:-2] or 'rlvr'} --help` (e.g. steps, "
                    f"temperature), not {', '.join(RL_SETTINGS_FIXED)}, which bench sets"
                )
        resolved[task] = {
            method: {k: _as_field_type(classes[method], k, v) for k, v in {**entry, **own[method]}.items()}
            for method in allowed
        }
    return resolved


def _as_field_type(cls: type, name: str, value: Any) -> Any:
    """YAML reads 1e-4 as a string (no dot): numbers for the numeric fields."""
    import typing

    hint = typing.get_type_hints(cls)[name]
    kinds = set(typing.get_args(hint)) | {hint}
    if isinstance(value, str) and (float in kinds or int in kinds):
        try:
            return int(value) if int in kinds and float not in kinds else float(value)
        except ValueError:
            raise ValueError(f"--rl-settings: {name} must be a number, got {value!r}") from None
    return value
