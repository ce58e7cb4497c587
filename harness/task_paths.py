"""Where crl-bench's task definitions live, and the folders it adds to lm-eval's task index
(read by `harness.tasks` and by the `lm_eval` plugin at interpreter start, so: no heavy imports)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "CRL_BENCH_DATA"


def tasks_root() -> Path:
    """The project's `tasks/` folder (or its copy inside an installed wheel)."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "tasks", package / "_tasks"):
        if (candidate / "generated").is_dir():
            return candidate
    raise FileNotFoundError(f"crl-bench's task folder is missing next to {package}; reinstall crl-bench")


def data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser().resolve() if value else None


def task_paths() -> list[Path]:
    """Folders crl-bench adds to lm-eval's task index, in precedence order (later wins)."""
    paths = [tasks_root() / "generated"]
    if data_dir() is not None:
        paths.append(tasks_root() / "local")
    return paths


def merge_include_paths(user: str | Path | list | tuple | None) -> list[str]:
    """Ours first, then the user's (so a user's folder overrides ours), without duplicates."""
    user_paths = [] if user is None else list(user) if isinstance(user, (list, tuple)) else [user]
    merged: list[str] = []
    for path in [*task_paths(), *user_paths]:
        resolved = str(Path(path).expanduser().resolve())
        if resolved not in merged:
            merged.append(resolved)
    return merged


def check_yaml_folder(folder: Path) -> None:
    """lm-eval silently skips YAML files it cannot parse; we name them instead."""
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(Path(folder).glob("**/*.yaml")):
        try:
            load_yaml(path, resolve_func=False, recursive=True)
        except yaml.YAMLError as err:
            raise ValueError(f"task file {path} is not valid YAML ({err}); fix or remove it") from err
