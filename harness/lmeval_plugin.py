"""Make the plain `lm_eval` CLI find crl-bench's models and tasks.

lm-eval 0.4.13 loads no model plugins (newer versions read the `lm_eval.models` entry
points, which pyproject.toml also declares), and `--include_path` only adds tasks. So the
installed `crl_bench_lmeval.pth` calls `install()` at interpreter start. `install()` only
adds an import watcher: nothing is imported until the program itself imports lm-eval, and
then, right after lm-eval's own module has run,

- `lm_eval.api.registry`: our model names are registered as lazy "module:Class" targets;
- `lm_eval.tasks.manager`: every `TaskManager` also scans crl-bench's task folders
  (see `harness.task_paths.task_paths`); user `--include_path` folders still come last and win.

Set `CRL_BENCH_LMEVAL_PLUGIN=0` to switch both off.
"""

from __future__ import annotations

import functools
import importlib.abc
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from harness.task_paths import check_yaml_folder, merge_include_paths

MODELS = {
    "hf_lean": "harness.lm_models:LeanHFLM",
    "vector_steered": "harness.lm_models:VectorSteeredLM",
    "crl_steered": "rl.crl.lm:CRLSteeredLM",
    "rlvr_lora": "harness.lm_models:RLVRLoraLM",
}


def register_models() -> None:
    """Register our models in lm-eval's registry (idempotent)."""
    # get_model() imports lm_eval.models (the built-in names) only when the registry is
    # empty, so load the built-ins first or registering ours would hide them.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


def _on_registry(module: ModuleType) -> None:
    register_models()


def _on_task_manager(module: ModuleType) -> None:
    patch_task_manager(module.TaskManager)


def patch_task_manager(cls: type) -> None:
    """Prepend crl-bench's task folders to every TaskManager's include_path (idempotent)."""
    if getattr(cls.__init__, "_crl_bench", False):
        return
    original = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        user = bound.arguments.get("include_path")
        for folder in [] if user is None else user if isinstance(user, (list, tuple)) else [user]:
            if Path(folder).is_dir():  # lm-eval skips a YAML file it cannot parse, then says "Tasks not found"
                check_yaml_folder(Path(folder))
        bound.arguments["include_path"] = merge_include_paths(user)
        original(*bound.args, **bound.kwargs)

    __init__._crl_bench = True
    cls.__init__ = __init__


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after a watched module has executed."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]):
        self.callbacks = callbacks

    def find_spec(self, name, path, target=None):
        callback = self.callbacks.get(name)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_callback(module):
            exec_module(module)
            callback(module)

        spec.loader.exec_module = exec_then_callback
        return spec


def install() -> None:
    if os.environ.get("CRL_BENCH_LMEVAL_PLUGIN", "1") == "0":
        return
    if any(isinstance(f, _AfterImport) for f in sys.meta_path):
        return
    callbacks = {"lm_eval.api.registry": _on_registry, "lm_eval.tasks.manager": _on_task_manager}
    for name, callback in list(callbacks.items()):
        if name in sys.modules:  # imported before us: apply now
            callback(sys.modules[name])
            del callbacks[name]
    sys.meta_path.insert(0, _AfterImport(callbacks))
