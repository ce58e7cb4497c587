"""Run directories: fixed file names, safe formats, clear errors for missing ones.

A run directory holds `config.json`, weights as `*.safetensors` (or PEFT adapter files)
and `manifest.json`. Nothing is ever loaded with pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def read_config(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / CONFIG).read_text())
