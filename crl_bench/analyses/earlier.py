"""Analysis entries that a later bench run would replace without re-running all of their methods.

Each analysis file (`similarity`, `overlap`, `circuits`, `interactions`) holds one entry per task
(similarity: the task's rows). A run that covers a task replaces that task's entry, as the
leaderboard replaces a row. When the run did not re-run every method of the old entry (a bench of
a few methods, `--ladder csft --crl none`), replacing it would lose the comparisons of the
methods it left out; and the old entry cannot be merged method by method, because its methods were
compared on their own run's SAE weights and RLVR model. So the old entry is kept whole, under
`earlier` in the JSON, with the commit, time and processor of the run that last wrote the file
it was kept from (the file's manifest: the entry itself may be older), and the markdown shows
it under "Earlier runs"."""

from __future__ import annotations

from typing import Any, Callable


def methods_of(entry: Any) -> set[str]:
    """The methods one task's entry compares (similarity: its rows)."""
    if isinstance(entry, list):
        return {f"{r.get('method')}:{r.get('setting', '')}:{r.get('seed', '')}" for r in entry}
    if not isinstance(entry, dict):
        return set()
    if "top" in entry:  # overlap
        return set(entry["top"]) | set(entry.get("missing", {}))
    if "methods" in entry:  # circuits
        return set(entry["methods"])
    if "skipped" in entry:
        return set()
    return set(entry)  # interactions: one analysis per CRL label


def _by_task(entries: Any) -> dict[str, Any]:
    if isinstance(entries, list):
        tasks: dict[str, list] = {}
        for row in entries:
            tasks.setdefault(row["task"], []).append(row)
        return tasks
    return dict(entries)


def displaced(before: Any, merged: Any, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The old task entries that `merged` replaced by one that lacks some of their methods, each
    with the provenance of the file they were kept from (`manifest`: its last writer)."""
    made = {
        "git_commit": manifest.get("git_commit"),
        "created": manifest.get("created"),
        "cpu": (manifest.get("processor") or {}).get("cpu"),
    }
    old, new = _by_task(before), _by_task(merged)
    return [
        {"task": task, "entry": entry, "made": made}
        for task, entry in old.items()
        if task in new and new[task] != entry and not methods_of(entry) <= methods_of(new[task])
    ]


def render_earlier(earlier: list[dict[str, Any]], render_md: Callable[[Any], str], rows: bool) -> str:
    """The "Earlier runs" section of an analysis's markdown (empty when nothing was displaced)."""
    if not earlier:
        return ""
    lines = [
        "",
        "## Earlier runs",
        "",
        "Entries that a later run replaced without re-running all of their methods, kept whole as their run "
        "wrote them (their methods were compared on that run's SAE and RLVR model, so they are not merged with "
        "newer entries).",
    ]
    for e in earlier:
        made = e["made"]
        body = render_md(e["entry"] if rows else {e["task"]: e["entry"]}).splitlines()
        start = next((i for i, line in enumerate(body) if line.startswith(("## ", "| "))), len(body))
        lines += [
            "",
            f"### {e['task']}: kept from the file as {str(made.get('git_commit') or '?')[:7]} last wrote it "
            f"({made.get('created') or '?'}, on {made.get('cpu') or '?'}; the entry may be older)",
            "",
        ]
        lines += ["##" + line if line.startswith("## ") else line for line in body[start:]]
    return "\n".join(lines) + "\n"
