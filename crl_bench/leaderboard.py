"""The leaderboard: `results/leaderboard.json` is the source; md and csv are generated from it.

One row per (model, task, method, setting, seed, metric). Rows are built from evaluation
run directories (per-sample scores), so every number can be traced to its run.

The per-item scores behind the rows are kept beside them, in `results/leaderboard_scores.jsonl`
(one line per evaluated (model, task, method, setting, seed, metric, filter)). A bench run
that covers only some tasks or methods merges its scores into that file, new replacing old,
and every row is then rebuilt from the merged scores. So a row kept from an earlier run is
compared with the base and RLVR runs now on the board, and the Holm correction covers every
comparison of the model, not just those of the latest run. Rows written before the scores
were kept ("legacy") cannot be rebuilt: they are kept as their run wrote them, marked, and
left out of the Holm family.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from crl_bench.budgets import budget_of, default_budget, limit_of, rollouts
from crl_bench.headline import update_readme
from harness.manifest import build_manifest, off_pin, pinned_versions, results_lock, write_json, write_text
from harness.stats import holm, mcnemar_exact, mean_ci95

KEY = ("model", "task", "method", "setting", "seed", "metric", "budget")
SCORES_FILE = "leaderboard_scores.jsonl"


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
    # what made it beyond the settings above: the RL budget (steps x prompts x samples) of a
    # trained method and the --limit of a partial evaluation ("-": none). Rows of different
    # budgets sit side by side: a smaller run never replaces a larger one's row
    budget: str = field(default="-", kw_only=True)

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
    holm_family: int | None = None  # how many comparisons of this model the Holm correction covered
    # the references (base, rlvr) this row is compared with that were evaluated on another processor
    other_processor: list[str] | None = None
    # the libraries of this row's evaluation whose versions are not the pinned ones (constraints.txt)
    other_stack: list[str] | None = None

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
    processor: dict[str, Any] | None = None  # where it was evaluated (the run's manifest)
    libraries: dict[str, str | None] | None = None  # with which library versions (the run's manifest)


def _other_processor(mine: Scores, reference: Scores) -> bool:
    """Evaluated on different processors (bf16 greedy generations near a tie can differ)."""
    return (
        mine.processor is not None
        and reference.processor is not None
        and mine.processor.get("cpu") != reference.processor.get("cpu")
    )


def _compare(mine: Scores, reference: Scores) -> tuple[float, tuple[float, float], float | None, str, list, list]:
    from harness.stats import paired_difference

    ref = dict(zip(reference.doc_ids, reference.values))
    own = dict(zip(mine.doc_ids, mine.values))
    shared = [d for d in mine.doc_ids if d in ref]
    if not shared:
        raise ValueError(
            f"{mine.method} and {reference.method} on {mine.task} share no evaluated items; "
            "evaluate both with the same --limit"
        )
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

    pins = pinned_versions()

    def group(s: Scores) -> tuple:
        return (s.model, s.task, s.metric, s.filter)

    bases: dict[tuple, dict[str, Scores]] = {}
    rlvr: dict[tuple, dict[str, dict[int, Scores]]] = {}  # group -> budget -> seed -> scores
    for s in all_scores:
        if s.method == "base":
            bases.setdefault(group(s), {})[limit_of(s.budget)] = s
        if s.method == "rlvr" and s.setting == "-":  # the reference, not its random-reward control
            rlvr.setdefault(group(s), {}).setdefault(s.budget, {})[s.seed] = s

    def base_for(s: Scores) -> Scores | None:
        """The base run evaluated like `s` (the same --limit), else any base run of its group."""
        found = bases.get(group(s), {})
        return found.get(limit_of(s.budget)) or (found[sorted(found)[0]] if found else None)

    def rlvr_for(s: Scores) -> dict[int, Scores]:
        """RLVR at the same budget (matched runs); for rows without one, the largest budget's."""
        budgets = rlvr.get(group(s), {})
        if s.budget in budgets:
            return budgets[s.budget]
        if not budgets or s.method in ("crl",):
            return {}
        return budgets[max(budgets, key=lambda b: (rollouts(b), b))]

    rows, raw = [], []  # raw: per row, (p vs base, p vs rlvr) before correction
    for s in all_scores:
        value = sum(s.values) / len(s.values)
        reference = base_for(s)
        row = Row(
            **s.identity(),
            value=value,
            ci95=mean_ci95(s.values),
            n=len(s.values),
            delta_vs_base=None,
            p_vs_base=None,
            run_dir=s.run_dir,
            other_stack=off_pin(s.libraries, pins) or None,
        )
        p_base = p_rlvr = None
        if reference is not None:
            mdd = min_detectable_difference(len(reference.values), sum(reference.values) / len(reference.values))
            row.mdd80 = None if math.isnan(mdd) else mdd  # NaN: not even a perfect score is detectable
            if s.method == "base":
                row.delta_vs_base = 0.0
            else:
                row.delta_vs_base, row.delta_vs_base_ci95, p_base, row.interval, a, b = _compare(s, reference)
                row.side_effects = side_effect_ratio(a, b)
                if _other_processor(s, reference):
                    row.other_processor = ["base"]
        seeds = rlvr_for(s)
        if seeds and (s.method, s.setting) != ("rlvr", "-"):
            ref_rlvr = seeds.get(s.seed, seeds[min(seeds)])
            row.delta_vs_rlvr, row.delta_vs_rlvr_ci95, p_rlvr, how, _, _ = _compare(s, ref_rlvr)
            row.interval = row.interval or how
            if _other_processor(s, ref_rlvr):
                row.other_processor = [*(row.other_processor or []), "rlvr"]
            if s.method == "base":
                p_rlvr = None  # the same test as RLVR's p vs base: counted once
        rows.append(row)
        raw.append((p_base, p_rlvr))
    for model in {r.model for r in rows}:
        index = [i for i, r in enumerate(rows) if r.model == model]
        flat = [raw[i][k] for i in index for k in (0, 1)]
        adjusted = holm(flat)
        family = sum(p is not None for p in flat)
        for j, i in enumerate(index):
            rows[i].p_vs_base, rows[i].p_vs_rlvr = adjusted[2 * j], adjusted[2 * j + 1]
            rows[i].holm_family = family
    # several seeds of one method: one more row over seeds and items
    by_method: dict[tuple, list[Scores]] = {}
    for s in all_scores:
        by_method.setdefault((*group(s), s.method, s.setting, s.budget), []).append(s)
    for (model, task, metric, filter_name, method, setting, budget), runs in by_method.items():
        if len(runs) < 2:
            continue
        shared = sorted(set.intersection(*(set(r.doc_ids) for r in runs)))
        matrix = [[dict(zip(r.doc_ids, r.values))[d] for d in shared] for r in runs]
        members = [
            r
            for r in rows
            if (r.model, r.task, r.metric, r.filter, r.method, r.setting, r.budget)
            == (model, task, metric, filter_name, method, setting, budget)
        ]

        def mean_of(name: str, members: list = members) -> float | None:
            values = [getattr(m, name) for m in members]
            return None if any(v is None for v in values) else sum(values) / len(values)

        rows.append(
            Row(
                model=model,
                task=task,
                method=method,
                setting=setting,
                seed="all",
                metric=metric,
                filter=filter_name,
                budget=budget,
                value=sum(map(sum, matrix)) / (len(matrix) * len(shared)),
                ci95=seeds_items_interval(matrix),
                n=len(shared),
                delta_vs_base=mean_of("delta_vs_base"),
                p_vs_base=None,
                run_dir=";".join(r.run_dir for r in runs),
                delta_vs_rlvr=mean_of("delta_vs_rlvr"),
                mdd80=members[0].mdd80,
                interval="two-level bootstrap over seeds and items",
                seeds=len(runs),
            )
        )
    return rows


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(budget_of(row) if k == "budget" else row[k] for k in KEY)


def read_stored_scores(results_dir: Path) -> list[Scores]:
    """The per-item scores kept beside the leaderboard (none before the first write)."""
    path = Path(results_dir) / SCORES_FILE
    if not path.exists():
        return []
    stored = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record.setdefault("budget", default_budget(record))
            stored.append(Scores(**record))
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{path}, line {number}: not a per-item scores record ({error}). The file is written "
                f"by `crl-bench bench`; restore it from git (git checkout -- {path}) rather than "
                "editing it"
            ) from error
    return stored


def merge_scores(stored: list[Scores], new: list[Scores]) -> list[Scores]:
    """New scores replace stored ones of the same identity; the others are kept."""
    replaced = {tuple(s.identity().values()) for s in new}
    kept = [s for s in stored if tuple(s.identity().values()) not in replaced]
    return sorted(kept + list(new), key=lambda s: tuple(str(v) for v in s.identity().values()))


def write(results_dir: Path, scores: list[Scores], **provenance: Any) -> Path:
    """Merge `scores` into the stored per-item scores, rebuild every row from them (comparisons
    and the Holm family over the whole board), keep legacy rows (those with no stored scores)
    as they were, and regenerate the md and csv tables."""
    results_dir = Path(results_dir)
    with results_lock(results_dir):  # another run may be merging into the same folder
        return _write(results_dir, scores, **provenance)


def rebuild(results_dir: str | Path) -> Path:
    """Rebuild every row from the stored per-item scores with this code (its statistics, marks
    and pins), keeping the provenance of the bench run that last wrote the board; without stored
    scores, only the tables are regenerated (`crl-bench report`)."""
    results_dir = Path(results_dir)
    path = results_dir / "leaderboard.json"
    with results_lock(results_dir):
        if not (results_dir / SCORES_FILE).exists():
            render(results_dir)
            return path
        before = json.loads(path.read_text()).get("manifest", {}) if path.exists() else {}
        return _write(results_dir, [], bench_config=before.get("bench_config"), rebuilt_by="crl-bench report")


def _write(results_dir: Path, scores: list[Scores], **provenance: Any) -> Path:
    path = results_dir / "leaderboard.json"
    merged_scores = merge_scores(read_stored_scores(results_dir), scores)
    rows = [asdict(r) for r in build_rows(merged_scores)]
    rebuilt = {row_key(r) for r in rows}
    existing = json.loads(path.read_text())["rows"] if path.exists() else []
    # a row the stored scores cannot rebuild (written before they were kept) stays as it was, marked
    legacy = [{**r, "budget": row_key(r)[-1], "legacy": True} for r in existing if row_key(r) not in rebuilt]
    merged = sorted(legacy + rows, key=lambda r: tuple(str(v) for v in row_key(r)))
    write_text(
        results_dir / SCORES_FILE, "".join(json.dumps(asdict(s), separators=(",", ":")) + "\n" for s in merged_scores)
    )
    write_json(path, {"schema": "crl-bench/leaderboard/v1", "manifest": build_manifest(**provenance), "rows": merged})
    render(results_dir)
    return path


def is_legacy(row: dict[str, Any]) -> bool:
    """A row not rebuilt from stored per-item scores: marked so by `write`, or from before the
    field that every rebuilt row carries."""
    return bool(row.get("legacy")) or "holm_family" not in row


CONTROL_SETTINGS = ("random-reward",)


def control_gained(row: dict[str, Any]) -> bool:
    """A control row (trained on a random reward) whose gain over base did not vanish: above base
    at Holm-corrected p < 0.05."""
    p = row.get("p_vs_base")
    return row.get("setting") in CONTROL_SETTINGS and (row.get("delta_vs_base") or 0) > 0 and p is not None and p < 0.05


def method_label(row: dict[str, Any]) -> str:
    """The row's method with its marks: † legacy, ‡ compared with a run on another processor, §
    another library stack, ¶ a control whose gain did not vanish."""
    return (
        row["method"]
        + (" †" if is_legacy(row) else "")
        + (" ‡" if row.get("other_processor") else "")
        + (" §" if row.get("other_stack") else "")
        + (" ¶" if control_gained(row) else "")
    )


def mdd_sentence(rows: list[dict[str, Any]]) -> str | None:
    """The minimum detectable gain of each task's base row, as the tables print it."""
    found = {
        (r["task"], r["metric"], r["filter"]): (r["mdd80"], r["n"])
        for r in rows
        if r["method"] == "base" and "mdd80" in r
    }
    if not found:
        return None

    def detectable(d: float | None) -> str:  # None (or NaN, in older boards): not even a perfect score
        return "not detectable" if d is None or math.isnan(d) else f"{d:.3f}"

    return (
        "Minimum detectable gain over base at 80% power (two-sided, α = 0.05; conservative: unpaired): "
        + "; ".join(
            f"{task} {metric}: {detectable(d)} (n = {n})" for (task, metric, _), (d, n) in sorted(found.items())
        )
        + "."
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _interval(pair: Any, digits: int = 3) -> str:
    return "" if not pair else f"[{_fmt(pair[0], digits)}, {_fmt(pair[1], digits)}]"


CSV_COLUMNS = [
    *KEY,
    "filter",
    "value",
    "ci95_low",
    "ci95_high",
    "n",
    "delta_vs_base",
    "delta_vs_base_ci95_low",
    "delta_vs_base_ci95_high",
    "p_vs_base",
    "side_effects",
    "delta_vs_rlvr",
    "delta_vs_rlvr_ci95_low",
    "delta_vs_rlvr_ci95_high",
    "p_vs_rlvr",
    "mdd80",
    "interval",
    "seeds",
    "holm_family",
    "legacy",
    "other_processor",
    "other_stack",
    "run_dir",
]
LEGACY_NOTE = (
    "† written before per-item scores were kept beside the board: the row is as the bench run that wrote it "
    "left it (its comparisons are with the base and RLVR runs of that time, and its p-values were "
    "Holm-corrected within that run, not in this table's family). Rerun `crl-bench bench` on its task to "
    "rebuild it."
)
OTHER_PROCESSOR_NOTE = (
    "‡ compared with a base or RLVR run evaluated on another processor (`other_processor` names "
    "which): bf16 greedy generations near a tie can differ between processors, so part of such a "
    "difference may be the machine's. Evaluate both on one machine to compare them cleanly."
)
OTHER_STACK_NOTE = (
    "§ evaluated with library versions other than the ones `constraints.txt` pins (`other_stack` names "
    "them): a fresh install may not reproduce its number exactly. Rerun `crl-bench bench` on its task to "
    "rebuild it on the pinned stack. Rows stored before stacks were recorded carry no mark."
)


CONTROL_NOTE = (
    "¶ a control that should not have gained: trained on a random reward (a seeded coin flip with the step's "
    "mean task reward, the same budget), it is still above base at Holm-corrected p < 0.05. Part of its method's "
    "gain on this task may then come from training itself (format, length, sampling), not from the reward."
)


def render(results_dir: Path) -> None:
    """Generate leaderboard.md and leaderboard.csv from leaderboard.json (never edit them by hand)."""
    results_dir = Path(results_dir)
    document = json.loads((results_dir / "leaderboard.json").read_text())
    rows = document["rows"]
    handle = io.StringIO()  # written in one piece below, atomically, as every results file
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        flat = {k: row.get(k) for k in CSV_COLUMNS if k in row}
        flat["legacy"] = is_legacy(row)
        flat["budget"] = row_key(row)[-1]
        for name in ("ci95", "delta_vs_base_ci95", "delta_vs_rlvr_ci95"):
            flat[f"{name}_low"], flat[f"{name}_high"] = row.get(name) or (None, None)
        writer.writerow(flat)
    write_text(results_dir / "leaderboard.csv", handle.getvalue())
    lines = [
        "# Leaderboard",
        "",
        "Generated from `leaderboard.json` by `crl-bench report`; do not edit by hand.",
        f"Commit {document['manifest'].get('git_commit')}, created {document['manifest'].get('created')}.",
        "",
        "Accuracy with its 95% interval (Wilson for per-item 0/1 scores); Δ: paired difference with its 95% "
        "interval; p: exact McNemar, Holm-corrected across all comparisons of one model (every row is rebuilt "
        "from the per-item scores in `leaderboard_scores.jsonl` whenever the board is written); side effects: of "
        "the items whose correctness changed vs base, the share that got worse.",
        "",
    ]
    for model in sorted({r["model"] for r in rows}):
        lines += [
            f"## {model}",
            "",
            "| task | method | setting | seed | budget | metric | value | 95% CI | n | Δ vs base | 95% CI "
            "| p vs base | side effects | Δ vs RLVR | p vs RLVR |",
            "|---|---|---|---|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        mine = [r for r in rows if r["model"] == model]
        for r in mine:
            metric = r["metric"] if r["filter"] in ("none", "-") else f"{r['metric']} ({r['filter']})"
            lines.append(
                f"| {r['task']} | {method_label(r)} | {r['setting']} | {r['seed']} | {row_key(r)[-1]} | {metric} | "
                f"{_fmt(r['value'])} | "
                f"{_interval(r['ci95'])} | {r['n']} | {_fmt(r['delta_vs_base'])} | "
                f"{_interval(r.get('delta_vs_base_ci95'))} | {_fmt(r['p_vs_base'], 4)} | "
                f"{_fmt(r.get('side_effects'), 2)} | {_fmt(r.get('delta_vs_rlvr'))} | {_fmt(r.get('p_vs_rlvr'), 4)} |"
            )
        families = {r["holm_family"] for r in mine if not is_legacy(r) and r["holm_family"] is not None}
        if families:
            lines += [
                "",
                f"Holm family: the {max(families)} comparisons (vs base and vs RLVR) of this model's rows "
                "not marked †.",
            ]
        if any(is_legacy(r) for r in mine):
            lines += ["", LEGACY_NOTE]
        if any(r.get("other_processor") for r in mine):
            lines += ["", OTHER_PROCESSOR_NOTE]
        if any(r.get("other_stack") for r in mine):
            lines += ["", OTHER_STACK_NOTE]
        if any(control_gained(r) for r in mine):
            lines += ["", CONTROL_NOTE]
        sentence = mdd_sentence(mine)
        if sentence:
            lines += ["", sentence]
        lines.append("")
    write_text(results_dir / "leaderboard.md", "\n".join(lines))
    update_readme(results_dir, rows)
