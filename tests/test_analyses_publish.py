"""A bench run that covers a task with fewer methods than the analyses hold for it (`--ladder csft
--crl none`) keeps the older entry whole under "Earlier runs" instead of losing its comparisons;
a re-run of the same methods replaces it, as the leaderboard replaces a row."""

import json
from types import SimpleNamespace

from crl_bench.analyses.runner import _publish, render_overlap, rerender


def _overlap_entry(*methods: str) -> dict:
    return {
        "layer": 9,
        "sae": "s",
        "k": 2,
        "missing": {},
        "top": {m: [1, 2] for m in methods},
        "pairs": [
            {"a": a, "b": b, "k": 2, "shared": [1, 2], "jaccard": 1.0, "jaccard_p": 0.01, "rbo": 1.0, "rbo_p": 0.01}
            for i, a in enumerate(methods)
            for b in methods[i + 1 :]
        ],
    }


def _publish_overlap(results, entries: dict) -> None:
    _publish(results, "overlap", "tasks", SimpleNamespace(model="m"), lambda old: {**old, **entries}, render_overlap)


def test_an_entry_replaced_without_all_its_methods_is_kept_under_earlier_runs(tmp_path):
    results = tmp_path / "results"
    _publish_overlap(
        results, {"t": _overlap_entry("crl:one-token", "rlvr", "vector:pca"), "u": _overlap_entry("a", "b")}
    )
    _publish_overlap(results, {"t": _overlap_entry("csft", "rlvr")})  # a run of two methods on task t
    record = json.loads((results / "overlap.json").read_text())
    assert set(record["tasks"]["t"]["top"]) == {"csft", "rlvr"} and set(record["tasks"]["u"]["top"]) == {"a", "b"}
    (kept,) = record["earlier"]
    assert kept["task"] == "t" and set(kept["entry"]["top"]) == {"crl:one-token", "rlvr", "vector:pca"}
    assert kept["made"]["created"] and "git_commit" in kept["made"]
    md = (results / "overlap.md").read_text()
    assert "## Earlier runs" in md and "| crl:one-token | vector:pca |" in md.split("## Earlier runs")[1]
    assert "| csft | rlvr |" in md.split("## Earlier runs")[0]
    # the same methods again: replaced, nothing more kept; rerender writes the same markdown
    _publish_overlap(results, {"t": _overlap_entry("csft", "rlvr") | {"k": 3}})
    assert len(json.loads((results / "overlap.json").read_text())["earlier"]) == 1
    before = (results / "overlap.md").read_text()
    rerender(results)
    assert (results / "overlap.md").read_text() == before


def test_similarity_rows_of_a_task_are_kept_when_a_run_covers_fewer_methods(tmp_path):
    results = tmp_path / "results"

    def row(task, method):
        return {"task": task, "method": method, "n": 10, "agreement": 0.5}

    def publish(rows):
        tasks = {r["task"] for r in rows}
        _publish(
            results,
            "similarity",
            "rows",
            SimpleNamespace(model="m"),
            lambda old: [r for r in old if r["task"] not in tasks] + rows,
            lambda rows: "\n".join(f"| {r['task']} | {r['method']} |" for r in rows) + "\n",
        )

    publish([row("t", "crl"), row("t", "vector"), row("u", "crl")])
    publish([row("t", "csft")])
    record = json.loads((results / "similarity.json").read_text())
    assert [(r["task"], r["method"]) for r in record["rows"]] == [("u", "crl"), ("t", "csft")]
    assert [r["method"] for r in record["earlier"][0]["entry"]] == ["crl", "vector"]
    assert "| t | vector |" in (results / "similarity.md").read_text().split("## Earlier runs")[1]
