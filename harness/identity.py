"""What a stage or a training run read, by content: the model's weights and config files, the
task's definition and data. Their digests go into fingerprints, so replacing the weights in a
model folder, editing the data behind `CRL_BENCH_DATA`, or switching a task between its local
copy and lm-eval's built-in re-runs what depended on them instead of reusing a stale result.

Cheap by design: a model file counts by name, size, modification time and (safetensors) its
header, which lists every tensor's name, dtype, shape and offsets; data and task files are
hashed in full (they are small), once per process for each (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import struct
from functools import cache
from pathlib import Path
from typing import Any

from harness.manifest import file_sha256, fingerprint
from harness.task_paths import data_dir, tasks_root


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's content (memoised by path, size and mtime)."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _safetensors_header(path: Path) -> str:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return hashlib.sha256(handle.read(min(length, 100_000_000))).hexdigest()[:16]


def folder_digest(folder: Path, pattern: str = "*", full: bool = True) -> str:
    """A digest of every file under `folder` matching `pattern` (hidden files and locks left
    out): the full content when `full`, else name, size, mtime and safetensors headers."""
    entries = []
    for path in sorted(Path(folder).rglob(pattern)):
        relative = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts) or path.suffix == ".lock":
            continue
        if full:
            entries.append([str(relative), file_digest(path)])
        else:
            stat = path.stat()
            entry = [str(relative), stat.st_size, stat.st_mtime_ns]
            if path.suffix == ".safetensors":
                entry.append(_safetensors_header(path))
            entries.append(entry)
    return fingerprint({"files": entries})


def model_identity(spec: str) -> dict[str, Any]:
    """The model a `--model` value names, by content: a local (or embedded) folder's files, or
    a hub id's revision (the snapshot in the local Hugging Face cache, when there is one)."""
    from harness.models import resolve_model

    resolved = resolve_model(spec)
    if Path(resolved).is_dir():
        return {"files": folder_digest(Path(resolved), full=False)}
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(resolved, local_files_only=True))
        return {"hub": resolved, "revision": snapshot.name}
    except Exception:  # not downloaded yet: the id is all there is to know before loading it
        return {"hub": resolved, "revision": None}


def task_identity(name: str, manager: Any) -> dict[str, Any]:
    """Which definition of task `name` resolved (crl-bench's generated tasks, its local copy of a
    public dataset, lm-eval's built-in, or a user folder), the digest of that definition, and
    for a local copy the digest of its data under `CRL_BENCH_DATA`."""
    entry = manager.task_index.get(name)
    yaml_path = getattr(entry, "yaml_path", None) if entry is not None else None
    if yaml_path is None or not Path(yaml_path).exists():
        return {"source": "unknown"}
    yaml_path = Path(yaml_path).resolve()
    ours = tasks_root().resolve()
    if yaml_path.is_relative_to(ours / "generated"):
        source = "crl-bench generated"
    elif yaml_path.is_relative_to(ours / "local"):
        source = "crl-bench local copy"
    elif "lm_eval" in yaml_path.parts:
        source = "lm-eval built-in"
    else:
        source = "user folder"
    folder = yaml_path.parent
    if source.startswith("crl-bench") or source == "user folder":
        # the task's YAML, the files it includes and its Python (generators, loaders)
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.py")])
        definition = fingerprint({p.name: file_digest(p) for p in files})
    else:
        definition = file_digest(yaml_path)
    identity: dict[str, Any] = {"source": source, "definition": definition}
    if source == "crl-bench local copy" and data_dir() is not None and (data_dir() / name).is_dir():
        identity["data"] = folder_digest(data_dir() / name)
    return identity


def changed(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys (dotted, nested) whose values differ between two settings dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def inputs(model: str, task: str) -> dict[str, Any]:
    """What a training run or sweep on (`model`, `task`) reads, by content (for fingerprints)."""
    from harness.tasks import task_manager

    return {"model": model_identity(model), "task": task_identity(task, task_manager(names=[task]))}
