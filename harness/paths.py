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


# The Hugging Face *cache* variables, never HF_HOME: HF_HOME is also where `huggingface-cli login`
# keeps the token, and moving it would hide the user's login (gated models such as gemma-2-2b).
HF_CACHE_VARIABLES = ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE", "HF_MODULES_CACHE")


def hf_cache_environment(root: Path | None = None) -> dict[str, str]:
    """Hugging Face's cache folders under our cache root (the token stays where the login put it)."""
    base = (root or cache_root()) / "huggingface"
    names = {
        "HF_HUB_CACHE": "hub",
        "HF_DATASETS_CACHE": "datasets",
        "HF_XET_CACHE": "xet",
        "HF_ASSETS_CACHE": "assets",
        "HF_MODULES_CACHE": "modules",
    }
    return {variable: str(base / names[variable]) for variable in HF_CACHE_VARIABLES}


def use_cache_for_hf() -> None:
    """Point Hugging Face caches (hub, datasets, xet, lm-eval's) under our cache root.

    Called by the crl-bench CLI before anything imports `datasets` or `huggingface_hub`
    (they read these variables at import). A user's own settings always win, and HF_HOME (with
    the login token in it) is left alone.
    """
    for variable, value in hf_cache_environment().items():
        os.environ.setdefault(variable, value)
    os.environ.setdefault("MPLCONFIGDIR", str(cache_root() / "matplotlib"))
