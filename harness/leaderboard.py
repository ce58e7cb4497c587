"""The leaderboard: `results/leaderboard.json` is the source; md and csv are generated from it.

One row per (model, task, method, setting, seed, metric). Rows are built from evaluation
run directories (per-sample scores), so every number can be traced to its run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from harness.manifest import build_manifest, write_json
from harness.stats import holm, mcnemar_exact, mean_ci95

KEY = ("model", "task", "method", "setting", "seed", "metric")


@dataclass
class Identity:
    """What a leaderboard row is about (KEY plus the lm-eval filter)."""

    model: str
    task: str
    method: str
    setting: str
    seed: int
    metric: str
    filter: str

    def identity(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(Identity)}


@dataclass
class Row(Identity):
    value: float
    ci95: tuple[float, float]
    n: int
    delta_vs_base: float | None
    p_vs_base: float | None
    run_dir: str

    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in KEY)


@dataclass
class Scores(Identity):
    """Per-item scores of one evaluated (model, task, method) for one metric."""

    doc_ids: list[int]
    values: list[float]
    run_dir: str


def build_rows(all_scores: list[Scores]) -> list[Row]:
    """Rows with intervals, deltas and paired p-values vs the base model, Holm-corrected
    across every comparison of one model."""
    base = {(s.model, s.task, s.metric, s.filter): s for s in all_scores if s.method == "base"}
    rows, raw_p = [], []
    for s in all_scores:
        value = sum(s.values) / len(s.values)
        reference = base.get((s.model, s.task, s.metric, s.filter))
        delta = p = None
        if reference is not None and s.method != "base":
            ref = dict(zip(reference.doc_ids, reference.values))
            shared = [d for d in s.doc_ids if d in ref]
            mine = dict(zip(s.doc_ids, s.values))
            delta = value - sum(ref[d] for d in shared) / len(shared)
            p = mcnemar_exact([mine[d] for d in shared], [ref[d] for d in shared])
        elif s.method == "base":
            delta = 0.0
        rows.append(
            Row(**s.identity(), value=value, ci95=mean_ci95(s.values), n=len(s.values), delta_vs_base=delta,
                p_vs_base=None, run_dir=s.run_dir)
        )
        raw_p.append(p)
    for model in {r.model for r in rows}:
        index = [i for i, r in enumerate(rows) if r.model == model]
        for i, adjusted in zip(index, holm([raw_p[i] for i in index])):
            rows[i].p_vs_base = adjusted
    return rows


def merge(existing: list[dict[str, Any]], new: list[Row]) -> list[dict[str, Any]]:
    """New rows replace existing rows with the same key; other rows are kept."""
    replaced = {r.key() for r in new}
    kept = [r for r in existing if tuple(r[k] for k in KEY) not in replaced]
    merged = kept + [asdict(r) for r in new]
    return sorted(merged, key=lambda r: tuple(str(r[k]) for k in KEY))


def write(results_dir: Path, rows: list[Row], **provenance: Any) -> Path:
    """Merge `rows` into results/leaderboard.json and regenerate the md and csv tables."""
    results_dir = Path(results_dir)
    path = results_dir / "leaderboard.json"
    existing = json.loads(path.read_text())["rows"] if path.exists() else []
    merged = merge(existing, rows)
    write_json(path, {"schema": "crl-bench/leaderboard/v1", "manifest": build_manifest(**provenance), "rows": merged})
    render(results_dir)
    return path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render(results_dir: Path) -> None:
    """Generate leaderboard.md and leaderboard.csv from leaderboard.json (never edit them by hand)."""
    results_dir = Path(results_dir)
    document = json.loads((results_dir / "leaderboard.json").read_text())
    rows = document["rows"]
    columns = [*KEY, "filter", "value", "ci95_low", "ci95_high", "n", "delta_vs_base", "p_vs_base", "run_dir"]
    with open(results_dir / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            flat = {k: row[k] for k in columns if k in row}
            flat["ci95_low"], flat["ci95_high"] = row["ci95"]
            writer.writerow(flat)
    lines = [
        "# Leaderboard",
        "",
        "Generated from `leaderboard.json` by `crl-bench report`; do not edit by hand.",
        f"Commit {document['manifest'].get('git_commit')}, created {document['manifest'].get('created')}.",
        "",
    ]
    for model in sorted({r["model"] for r in rows}):
        lines += [f"## {model}", "",
                  "| task | method | setting | metric | filter | value | 95% CI | n | Δ vs base | p vs base (Holm) |",
                  "|---|---|---|---|---|---:|---|---:|---:|---:|"]
        for r in (r for r in rows if r["model"] == model):
            low, high = r["ci95"]
            lines.append(
                f"| {r['task']} | {r['method']} | {r['setting']} | {r['metric']} | {r['filter']} | "
                f"{_fmt(r['value'])} | [{_fmt(low)}, {_fmt(high)}] | {r['n']} | {_fmt(r['delta_vs_base'])} | "
                f"{_fmt(r['p_vs_base'], 4)} |"
            )
        lines.append("")
    (results_dir / "leaderboard.md").write_text("\n".join(lines))
