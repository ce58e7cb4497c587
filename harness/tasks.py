"""crl-bench's lm-eval tasks: where they live, how they are selected, how to load one.

Task folders (lm-eval YAML):

- `tasks/generated/`: tasks the project generates offline with fixed seeds
  (`toy_sentiment`, `arith_mc`, `arith_gen`) and the group `arc`. Always included.
- `tasks/local/`: local-data variants of `gsm8k`, `arc_easy`, `arc_challenge`, `boolq` and
  `sst2`, with the same names, prompts, filters and metrics as lm-eval's built-ins, reading
  JSON Lines from `$CRL_BENCH_DATA`. Included **only when `CRL_BENCH_DATA` is set**: then
  those names resolve to the local copies; unset, lm-eval's built-in tasks (which download
  from the hub) are used unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.lmeval_plugin import patch_task_manager
from harness.task_paths import DATA_ENV, check_yaml_folder, data_dir, merge_include_paths, tasks_root

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

LOCAL_TASKS = ("gsm8k", "arc_easy", "arc_challenge", "boolq", "sst2")
GENERATED_TASKS = ("toy_sentiment", "arith_mc", "arith_gen")
# document fields naming a passage several items share (BoolQ's passages); items that share
# one are not independent, so their paired intervals are cluster-robust (`harness.stats`)
CLUSTER_FIELDS = ("passage",)


def cluster_of(doc: Any) -> str | None:
    """The passage an evaluated document shares with others (None: it stands alone)."""
    if not isinstance(doc, dict):
        return None
    for name in CLUSTER_FIELDS:
        if isinstance(doc.get(name), str):
            return doc[name]
    return None


_MANAGERS: dict[tuple, "TaskManager"] = {}


def task_manager(include_path: str | Path | list | None = None, names: list[str] | None = None) -> "TaskManager":
    """lm-eval's TaskManager with crl-bench's task folders (and the user's), built once per
    process for each set of folders.

    Indexing lm-eval's thousands of built-in task files takes about 15 s. When `names` are
    given, no user folder is, and every name is one of crl-bench's own tasks, the manager
    indexes only crl-bench's folders (milliseconds); any other name gets the full index.
    """
    from lm_eval.tasks import TaskManager

    user = [] if include_path is None else include_path if isinstance(include_path, list) else [include_path]
    for folder in user:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"task folder {folder} does not exist; pass an existing --include-path")
        check_yaml_folder(Path(folder))
    patch_task_manager(TaskManager)  # in case the .pth plugin is switched off
    folders = tuple(merge_include_paths(user))

    def build(defaults: bool) -> "TaskManager":
        key = (folders, defaults)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=list(folders), include_defaults=defaults)
        return _MANAGERS[key]

    if names is not None and not user:
        ours = build(False)
        if all(name in ours.all_tasks for name in names):
            return ours
    return build(True)


def check_tasks(names: list[str], manager: "TaskManager") -> None:
    """Fail before any model is loaded if a task name is unknown or its data is missing."""
    import difflib

    for name in names:
        if name in manager.all_tasks or Path(name).is_file():
            continue
        close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown task {name!r}.{hint} crl-bench's own tasks: {', '.join(GENERATED_TASKS)}; with "
            f"{DATA_ENV} set, local copies of {', '.join(LOCAL_TASKS)} and the group arc; or any "
            f"lm-eval built-in task (`lm_eval ls tasks`)."
        )
    local = [n for n in names if n in (*LOCAL_TASKS, "arc")]
    directory = data_dir()
    if local and directory is not None and not directory.is_dir():
        raise FileNotFoundError(
            f"{DATA_ENV}={directory} does not exist; point it at the data folder (for example "
            f"../shared/data) or unset it to use lm-eval's built-in {', '.join(local)} from the hub"
        )


def load_task(name: str, manager: "TaskManager | None" = None) -> Any:
    """One lm-eval Task object (not a group) by name."""
    manager = manager or task_manager(names=[name])
    check_tasks([name], manager)
    loaded = manager.load([name])
    tasks = loaded["tasks"]
    if name in tasks:
        return tasks[name]
    if len(tasks) == 1:
        return next(iter(tasks.values()))
    raise ValueError(f"{name!r} is a group of {sorted(tasks)}; name one task")


def _generated_module():
    """The generated-task module (a task file read by lm-eval, so not on the import path)."""
    import importlib.util

    path = tasks_root() / "generated" / "generated.py"
    spec = importlib.util.spec_from_file_location("crl_bench_generated_tasks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_examples(split: str = "train") -> dict[str, list[str]]:
    """Each generated task's `split` rendered as prompt + gold answer, in the tasks' formats.

    Mirrors the YAMLs' `doc_to_text` + target delimiter + `doc_to_target`; used as text for
    the built-in SAE corpus (training split only, so no test item leaks into an SAE).
    """
    module = _generated_module()
    sentiment = module.toy_sentiment()[split]
    arith_mc = module.arith_mc()[split]
    arith_gen = module.arith_gen()[split]
    labels = ("negative", "positive")
    return {
        "toy_sentiment": [f"Review: {r['review']}\nSentiment: {labels[r['label']]}" for r in sentiment],
        "arith_mc": [f"{r['expression']}={r['answer']}" for r in arith_mc],
        "arith_gen": [f"Question: {r['question']}\nAnswer: {r['solution']}" for r in arith_gen],
    }
