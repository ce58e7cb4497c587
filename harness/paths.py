"""Where crl-bench keeps caches, runs and results.

Everything heavy lives under one cache root so that a clean clone plus `make test`
leaves nothing behind outside the project and its cache.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CRL_BENCH_CACHE"
RUNS_ENV = "CRL_BENCH_RUNS"


def cache_root() -> Path:
    """Root of every cache: `$CRL_BENCH_CACHE`, else `~/.cache/crl-bench`."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser().resolve() if root else Path.home() / ".cache" / "crl-bench"


def runs_root() -> Path:
    """Run directories (heavy artifacts, per-sample logs): `$CRL_BENCH_RUNS`, else `<cache>/runs`."""
    root = os.environ.get(RUNS_ENV)
    return Path(root).expanduser().resolve() if root else cache_root() / "runs"


def use_cache_for_hf() -> None:
    """Point Hugging Face caches (hub, datasets, lm-eval's) under our cache root.

    Called by the crl-bench CLI before anything imports `datasets` or `huggingface_hub`
    (they read these variables at import). A user's own HF_HOME always wins.
    """
    os.environ.setdefault("HF_HOME", str(cache_root() / "huggingface"))
    os.environ.setdefault("MPLCONFIGDIR", str(cache_root() / "matplotlib"))
