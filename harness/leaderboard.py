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
    p_vs_base: float | None  # exact McNemar, Holm-corrected across the model's comparisons
    run_dir: str
    delta_vs_base_ci95: tuple[float, float] | None = None
    side_effects: float | None = None  # of the items that changed vs base, the share that got worse
    delta_vs_rlvr: float | None = None
    delta_vs_rlvr_ci95: tuple[float, float] | None = None
    p_vs_rlvr: float | None = None
    mdd80: float | None = None  # the gain over base this test size detects with 80% power
    interval: str = ""  # how the intervals were computed
    seeds: int = 1

    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in KEY)


@dataclass
class Scores(Identity):
    """Per-item scores of one evaluated (model, task, method) for one metric; `clusters`
    names each item's shared passage where items share one (None: independent items)."""

    doc_ids: list[int]
    values: list[float]
    run_dir: str
    clusters: list[str] | None = None


def _compare(mine: Scores, reference: Scores) -> tuple[float, tuple[float, float], float | None, str, list, list]:
    from harness.stats import paired_difference

    ref = dict(zip(reference.doc_ids, reference.values))
    own = dict(zip(mine.doc_ids, mine.values))
    shared = [d for d in mine.doc_ids if d in ref]
    if not shared:
        raise ValueError(f"{mine.method} and {reference.method} on {mine.task} share no evaluated items; "
                         "evaluate both with the same --limit")
    a, b = [own[d] for d in shared], [ref[d] for d in shared]
    clusters = None
    if mine.clusters is not None:
        by_doc = dict(zip(mine.doc_ids, mine.clusters))
        clusters = [by_doc[d] for d in shared]
    delta, interval, how = paired_difference(a, b, clusters)
    binary = all(v in (0.0, 1.0) for v in a + b)
    return delta, interval, mcnemar_exact(a, b) if binary else None, how, a, b


def build_rows(all_scores: list[Scores]) -> list[Row]:
    """Rows with intervals, paired differences vs the base model and vs RLVR (paired
    intervals, exact McNemar p-values Holm-corrected across every comparison of one model),
    side-effect ratios, the minimum detectable difference per task, and, where a method has
    several seeds, a `seed="all"` row whose interval resamples seeds and items."""
    from harness.stats import min_detectable_difference, seeds_items_interval, side_effect_ratio

    def group(s: Scores) -> tuple:
        return (s.model, s.task, s.metric, s.filter)

    base = {group(s): s for s in all_scores if s.method == "base"}
    rlvr: dict[tuple, dict[int, Scores]] = {}
    for s in all_scores:
        if s.method == "rlvr":
            rlvr.setdefault(group(s), {})[s.seed] = s
    rows, raw = [], []  # raw: per row, (p vs base, p vs rlvr) before correction
    for s in all_scores:
        value = sum(s.values) / len(s.values)
        reference = base.get(group(s))
        row = Row(**s.identity(), value=value, ci95=mean_ci95(s.values), n=len(s.values), delta_vs_base=None,
                  p_vs_base=None, run_dir=s.run_dir)
        p_base = p_rlvr = None
        if reference is not None:
            row.mdd80 = min_detectable_difference(len(reference.values), sum(reference.values) / len(reference.values))
            if s.method == "base":
                row.delta_vs_base = 0.0
            else:
                row.delta_vs_base, row.delta_vs_base_ci95, p_base, row.interval, a, b = _compare(s, reference)
                row.side_effects = side_effect_ratio(a, b)
        seeds = rlvr.get(group(s), {})
        if seeds and s.method != "rlvr":
            ref_rlvr = seeds.get(s.seed, seeds[min(seeds)])
            row.delta_vs_rlvr, row.delta_vs_rlvr_ci95, p_rlvr, how, _, _ = _compare(s, ref_rlvr)
            row.interval = row.interval or how
            if s.method == "base":
                p_rlvr = None  # the same test as RLVR's p vs base: counted once
        rows.append(row)
        raw.append((p_base, p_rlvr))
    for model in {r.model for r in rows}:
        index = [i for i, r in enumerate(rows) if r.model == model]
        flat = [raw[i][k] for i in index for k in (0, 1)]
        adjusted = holm(flat)
        for j, i in enumerate(index):
            rows[i].p_vs_base, rows[i].p_vs_rlvr = adjusted[2 * j], adjusted[2 * j + 1]
    # several seeds of one method: one more row over seeds and items
    by_method: dict[tuple, list[Scores]] = {}
    for s in all_scores:
        by_method.setdefault((*group(s), s.method, s.setting), []).append(s)
    for (model, task, metric, filter_name, method, setting), runs in by_method.items():
        if len(runs) < 2:
            continue
        shared = sorted(set.intersection(*(set(r.doc_ids) for r in runs)))
        matrix = [[dict(zip(r.doc_ids, r.values))[d] for d in shared] for r in runs]
        members = [r for r in rows if (r.model, r.task, r.metric, r.filter, r.method, r.setting) ==
                   (model, task, metric, filter_name, method, setting)]
        mean_of = lambda name: (None if any(getattr(m, name) is None for m in members)  # noqa: E731
                                else sum(getattr(m, name) for m in members) / len(members))
        rows.append(Row(model=model, task=task, method=method, setting=setting, seed="all", metric=metric,
                        filter=filter_name, value=sum(map(sum, matrix)) / (len(matrix) * len(shared)),
                        ci95=seeds_items_interval(matrix), n=len(shared), delta_vs_base=mean_of("delta_vs_base"),
                        p_vs_base=None, run_dir=";".join(r.run_dir for r in runs),
                        delta_vs_rlvr=mean_of("delta_vs_rlvr"), mdd80=members[0].mdd80,
                        interval="two-level bootstrap over seeds and items", seeds=len(runs)))
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


def _interval(pair: Any, digits: int = 3) -> str:
    return "" if not pair else f"[{_fmt(pair[0], digits)}, {_fmt(pair[1], digits)}]"


CSV_COLUMNS = [*KEY, "filter", "value", "ci95_low", "ci95_high", "n", "delta_vs_base", "delta_vs_base_ci95_low",
               "delta_vs_base_ci95_high", "p_vs_base", "side_effects", "delta_vs_rlvr", "delta_vs_rlvr_ci95_low",
               "delta_vs_rlvr_ci95_high", "p_vs_rlvr", "mdd80", "interval", "seeds", "run_dir"]


def render(results_dir: Path) -> None:
    """Generate leaderboard.md and leaderboard.csv from leaderboard.json (never edit them by hand)."""
    results_dir = Path(results_dir)
    document = json.loads((results_dir / "leaderboard.json").read_text())
    rows = document["rows"]
    with open(results_dir / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            flat = {k: row.get(k) for k in CSV_COLUMNS if k in row}
            for name in ("ci95", "delta_vs_base_ci95", "delta_vs_rlvr_ci95"):
                flat[f"{name}_low"], flat[f"{name}_high"] = row.get(name) or (None, None)
            writer.writerow(flat)
    lines = [
        "# Leaderboard",
        "",
        "Generated from `leaderboard.json` by `crl-bench report`; do not edit by hand.",
        f"Commit {document['manifest'].get('git_commit')}, created {document['manifest'].get('created')}.",
        "",
        "Accuracy with its 95% interval (Wilson for per-item 0/1 scores); Δ: paired difference with its 95% "
        "interval; p: exact McNemar, Holm-corrected across all comparisons of one model; side effects: of the "
        "items whose correctness changed vs base, the share that got worse.",
        "",
    ]
    for model in sorted({r["model"] for r in rows}):
        lines += [f"## {model}", "",
                  "| task | method | setting | seed | metric | value | 95% CI | n | Δ vs base | 95% CI | p vs base "
                  "| side effects | Δ vs RLVR | p vs RLVR |",
                  "|---|---|---|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|"]
        mine = [r for r in rows if r["model"] == model]
        for r in mine:
            metric = r["metric"] if r["filter"] in ("none", "-") else f"{r['metric']} ({r['filter']})"
            lines.append(
                f"| {r['task']} | {r['method']} | {r['setting']} | {r['seed']} | {metric} | {_fmt(r['value'])} | "
                f"{_interval(r['ci95'])} | {r['n']} | {_fmt(r['delta_vs_base'])} | "
                f"{_interval(r.get('delta_vs_base_ci95'))} | {_fmt(r['p_vs_base'], 4)} | "
                f"{_fmt(r.get('side_effects'), 2)} | {_fmt(r.get('delta_vs_rlvr'))} | {_fmt(r.get('p_vs_rlvr'), 4)} |"
            )
        mdd = {}
        for r in mine:
            if r["method"] == "base" and r.get("mdd80") is not None:
                mdd[(r["task"], r["metric"], r["filter"])] = (r["mdd80"], r["n"])
        if mdd:
            lines += ["", "Minimum detectable gain over base at 80% power (two-sided, α = 0.05; conservative: "
                      "unpaired): " + "; ".join(f"{task} {metric}: {_fmt(d, 3)} (n = {n})"
                                                for (task, metric, _), (d, n) in sorted(mdd.items())) + "."]
        lines.append("")
    (results_dir / "leaderboard.md").write_text("\n".join(lines))
