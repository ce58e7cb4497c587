"""Per-task RL settings for `crl-bench bench --rl-settings FILE`.

The file is a YAML mapping of task -> settings: the fields of `crl-bench train rlvr` /
`crl-bench train crl` / `rl-vector` / `crl-lm` / `csft`. Fields every method has (the budget above
all) go to all, so their runs stay matched; `rlvr:`, `crl:`, `rl-vector:`, `crl-lm:` and `csft:`
sections hold one method's own (the ladder's rungs also take `rlvr:`'s sampling temperature). What bench sets
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
    "teacher",
)  # bench sets these


def read_rl_settings(path: str) -> dict[str, dict[str, dict[str, Any]]]:
    """`--rl-settings`: {task: {"rlvr": {...}, "crl": {...}}}, each the settings that task's runs
    of that method get (the shared ones copied into both), checked against the configs' fields."""
    from harness.config import read_yaml

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--rl-settings {path}: no such file (a YAML mapping of task -> settings)")
    data = read_yaml(file, "--rl-settings") or {}
    if not isinstance(data, dict):
        raise ValueError(f"--rl-settings {path}: expected a mapping of task -> settings, got {type(data).__name__}")
    allowed = {method: {f.name for f in fields(cls)} for method, cls in settings_classes().items()}
    shared = set.intersection(*allowed.values())
    resolved = {}
    _check_task_names(path, list(data))
    for task, entry in data.items():
        if not isinstance(entry or {}, dict) or not all(isinstance(entry.get(m) or {}, dict) for m in allowed):
            raise ValueError(
                f"--rl-settings {path}: {task}: expected a mapping of setting -> value (e.g. steps: 100), got {entry!r}"
            )
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
        resolved[task] = {method: {**entry, **own[method]} for method in allowed}
    return resolved


def settings_classes() -> dict[str, type]:
    """The config class of each RL-trained method, by its section name in the file."""
    from rl.crl.config import CRLConfig
    from rl.crl.through_lm.config import CRLThroughLMConfig
    from rl.csft.config import CSFTConfig
    from rl.rlvr.config import RLVRConfig
    from rl.vector.config import RLVectorConfig

    return {
        "rlvr": RLVRConfig,
        "crl": CRLConfig,
        "rl-vector": RLVectorConfig,
        "crl-lm": CRLThroughLMConfig,
        "csft": CSFTConfig,
    }


def _check_task_names(path: str, names: list[str]) -> None:
    """Every key names a task lm-eval knows (a typo would otherwise be ignored silently)."""
    from harness.config import with_close_matches
    from harness.tasks import task_manager

    manager = task_manager(names=[str(n) for n in names])
    unknown = [str(n) for n in names if str(n) not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"--rl-settings {path}: unknown tasks {with_close_matches(unknown, manager.all_tasks)}; "
            "keys are lm-eval task names"
        )
