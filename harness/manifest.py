"""Provenance written next to every artifact and result (as lm-eval does for its results)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("crl-bench", "torch", "transformers", "lm-eval", "sae-lens", "peft", "trl", "datasets", "scipy")


def fingerprint(settings: dict[str, Any], ignore: set[str] | frozenset[str] = frozenset()) -> str:
    """A short hash of the settings that decide a result (keys in `ignore` left out): what
    reuse and resume compare."""
    keep = {k: v for k, v in settings.items() if k not in ignore}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def git_commit(repo: Path | None = None) -> str | None:
    """The project's git commit, with `+dirty` when the code has uncommitted changes (changes
    under `results/` and to README.md's headline, which runs write themselves, do not count)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)results",
                ":(exclude)README.md",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def pinned_versions(constraints: Path | None = None) -> dict[str, str]:
    """The library versions `constraints.txt` pins (every install goes through it), by the
    names `library_versions` uses; empty where the file is not beside the code (a wheel)."""
    import re

    path = constraints or Path(__file__).resolve().parent.parent / "constraints.txt"
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        found = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+)", line)
        if found:
            pins[found[1].lower().replace("_", "-")] = found[2]
    return {name: pins[name] for name in LIBRARIES if name in pins}


def off_pin(libraries: dict[str, str | None] | None, pins: dict[str, str] | None = None) -> list[str]:
    """The libraries of a recorded stack whose versions differ from the pinned ones, as
    `name version (pinned version)`. A version satisfies its pin as pip decides (PEP 440): the
    CPU wheel's `2.13.0+cpu` is `torch==2.13.0`."""
    pins = pinned_versions() if pins is None else pins
    return [
        f"{name} {version} (pinned {pins[name]})"
        for name, version in sorted((libraries or {}).items())
        if name in pins and version is not None and not _satisfies(version, pins[name])
    ]


def _satisfies(version: str, pin: str) -> bool:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion

    try:
        return SpecifierSet(f"=={pin}").contains(version, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return version == pin


def processor() -> dict[str, Any]:
    """The CPU (and GPU) a result was computed on. bf16 kernels differ between processors, so
    greedy generations near a tie can differ between machines with the same code, weights and
    libraries: this is what tells such runs apart."""
    found: dict[str, Any] = {"cpu": platform.processor() or None}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    found["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    found["cpu_bf16"] = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
                    break
    except OSError:
        pass
    torch = sys.modules.get("torch")  # only when the run already uses it: no import for provenance
    if torch is not None:
        found["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            found["gpu"] = torch.cuda.get_device_name(0)
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(**extra: Any) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "processor": processor(),
        "libraries": library_versions(),
        **extra,
    }


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (a temporary file of its own + rename), so a crash never
    leaves half a file and two processes writing the same file never share a temporary one."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RESULTS_LOCK = ".results.lock"


def results_lock(results_dir: Path | str):
    """A lock on a results folder (a file lock, so it holds across processes): every
    read-merge-write of a shared results file (leaderboard, per-item scores, analyses) runs
    under it, so two runs writing one folder at once keep both runs' results."""
    from filelock import FileLock

    Path(results_dir).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(results_dir) / RESULTS_LOCK))


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (`write_text`)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
