"""Tasks: generated splits are deterministic and disjoint; local variants are lm-eval's own."""

from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks._yaml_loader import load_yaml

from harness.task_paths import tasks_root
from harness.tasks import check_tasks, load_task, task_manager
from tests.conftest import needs_data

GENERATED = {"toy_sentiment": "review", "arith_mc": "expression", "arith_gen": "question"}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_splits_are_deterministic_and_disjoint(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generated", tasks_root() / "generated" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first, second = getattr(module, name)(), getattr(module, name)()
    key = GENERATED[name]
    for split in ("train", "validation", "test"):
        assert first[split][key] == second[split][key]
    texts = {split: set(first[split][key]) for split in first}
    assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
    assert len(first["test"]) >= 350


def test_toy_sentiment_pairs_differ_only_in_sentiment_words():
    task = load_task("toy_sentiment")
    docs = list(task.test_docs())
    by_pair = {}
    for doc in docs:
        by_pair.setdefault(doc["pair_id"], []).append(doc)
    for pair in by_pair.values():
        assert sorted(d["label"] for d in pair) == [0, 1]
        a, b = pair
        assert a["review"].replace(a["adjective"], "").replace(a["verb"], "") == b["review"].replace(
            b["adjective"], ""
        ).replace(b["verb"], "")
        assert a["review"][a["adjective_start"] :].startswith(a["adjective"])


BUILTIN = {
    "gsm8k": "gsm8k/gsm8k.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "sst2": "glue/sst2/default.yaml",
}
SCORING_FIELDS = (
    "output_type",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "target_delimiter",
    "fewshot_delimiter",
    "num_fewshot",
    "metric_list",
    "filter_list",
    "generation_kwargs",
    "repeats",
)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_local_variants_score_exactly_like_lm_eval_builtins(name):
    ours = load_yaml(tasks_root() / "local" / f"{name}.yaml", resolve_func=False, recursive=True)
    theirs = load_yaml(Path(lm_eval.__file__).parent / "tasks" / BUILTIN[name], resolve_func=False, recursive=True)
    for field in SCORING_FIELDS:
        assert ours.get(field) == theirs.get(field), field


@needs_data
def test_local_data_rows_and_arc_group():
    manager = task_manager()
    loaded = manager.load(["arc", "boolq"])
    assert set(loaded["tasks"]) == {"arc_easy", "arc_challenge", "boolq"}
    assert len(list(loaded["tasks"]["arc_easy"].test_docs())) == 2376
    assert len(list(loaded["tasks"]["arc_challenge"].test_docs())) == 820
    boolq = list(loaded["tasks"]["boolq"].validation_docs())
    assert len(boolq) == 3270 and {d["label"] for d in boolq} == {0, 1}


def test_unknown_task_names_the_options():
    with pytest.raises(ValueError, match=r"unknown task 'toy_sentimnt'\. Did you mean toy_sentiment"):
        check_tasks(["toy_sentimnt"], task_manager())


def test_missing_data_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("CRL_BENCH_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="CRL_BENCH_DATA=.*does not exist"):
        check_tasks(["arc_easy"], task_manager())


def test_malformed_yaml_is_named(tmp_path):
    (tmp_path / "broken.yaml").write_text("task: broken\ndoc_to_text: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        task_manager(include_path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task_manager(include_path=str(tmp_path / "absent"))


def test_own_tasks_skip_indexing_the_builtins_and_managers_are_built_once():
    """Indexing lm-eval's built-in tasks takes ~15 s; crl-bench's own tasks do not need it."""
    ours = task_manager(names=["arith_mc", "toy_sentiment"])
    assert ours is task_manager(names=["arith_gen"])  # built once per process
    assert "hellaswag" not in ours.all_tasks  # the built-ins were not indexed
    full = task_manager(names=["arith_mc", "hellaswag"])  # a built-in name gets the full index
    assert "hellaswag" in full.all_tasks and full is task_manager() and full is not ours
    small_docs = list(load_task("arith_mc", ours).test_docs())
    assert small_docs == list(load_task("arith_mc", full).test_docs()) and len(small_docs) > 0
    with pytest.raises(ValueError, match="unknown task 'toy_sentimnt'"):  # a typo still gets the full hint
        check_tasks(["toy_sentimnt"], task_manager(names=["toy_sentimnt"]))
