"""Where a method's gains and losses fall: accuracy per group of items, and per step of a
worked solution.

A leaderboard row says whether a method beats base on a task; it does not say *where*. Two
methods can tie with base while one fixes the subtraction problems and breaks the addition
ones. `crl-bench breakdown --task T` reads the per-item logs (`samples.jsonl`) of the runs
behind the leaderboard's rows for T and writes, to `results/<model>/breakdown/<task>.{json,md}` and
`results/<model>/figures/breakdown-<task>.{png,pdf}`:

- per group of items (a document field: arith_gen's problem `kind`, toy_sentiment's
  `template`, arith_mc's `op`; any field with `--by`): each method's accuracy, the items it
  fixed and broke against base, and the exact McNemar p-value, Holm-corrected over every
  (group, method) comparison of the table;
- for tasks that define a step check (arith_gen: `arith_gen_steps` in the task module), how
  many completions get each step of the worked solution right, per group, each step judged on
  its own.

`crl-bench bench` writes the breakdown of every task that has a default grouping.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from crl_bench.budgets import budget_of

SCHEMA = 1


@dataclass(frozen=True)
class Grouping:
    """How a task's items are grouped: a document field, a readable name per value, and
    optionally a step check of a completion (doc, completion) -> {step: right?}."""

    field: str
    name: Callable[[Any], str] = str
    steps: Callable[[dict, str], dict[str, bool]] | None = None


def default_grouping(task: str) -> Grouping | None:
    """The grouping a task is broken down by unless `--by` says otherwise (None: no default)."""
    from harness.tasks import _generated_module

    if task == "arith_gen":
        module = _generated_module()
        return Grouping("kind", module.arith_gen_kind, module.arith_gen_steps)
    if task == "toy_sentiment":
        return Grouping("template", lambda t: f"template {t}")
    if task == "arith_mc":
        return Grouping("op", lambda op: f"a {op} b")
    return None


@dataclass
class Evaluated:
    """One run's per-item log on the task: documents, 0/1 correctness and raw completions."""

    label: str
    source: Path
    docs: dict[int, dict]
    correct: dict[int, float]
    completions: dict[int, str]
    valid: dict[int, bool] | None = None  # whether the item's answer parsed (generation: the filter found one)


def read_evaluated(
    label: str,
    run_dir: str | Path,
    exclude: frozenset[int] = frozenset(),
    metric: str | None = None,
    filter_name: str | None = None,
) -> Evaluated:
    """A run directory's `samples.jsonl` (the first metric and filter found unless named)."""
    from crl_bench.analyses.similarity import scored_samples

    samples = Path(run_dir) / "samples.jsonl"
    if not samples.exists():
        raise FileNotFoundError(
            f"{label}: no samples.jsonl in {run_dir} (the run's cache is not on this machine: "
            f"rerun `crl-bench bench` for it, or name its directory with --run {label}=DIR)"
        )
    docs, correct, completions, valid = {}, {}, {}, {}
    for doc, sample, value in scored_samples(samples, metric, filter_name, exclude):
        if value not in (0.0, 1.0):
            raise ValueError(
                f"{label}: {metric or sample['metrics'][0]} is not a 0/1 score ({value}); a breakdown needs "
                f"per-item correctness"
            )
        docs[doc], correct[doc], valid[doc] = sample["doc"], value, _valid(sample)
        response = sample["resps"][0] if sample.get("resps") else None
        completions[doc] = (
            response[0] if isinstance(response, list) and response and isinstance(response[0], str) else ""
        )
    if not correct:
        raise ValueError(f"{label}: {samples} has no scored items")
    return Evaluated(label, samples, docs, correct, completions, valid)


def _valid(sample: dict[str, Any]) -> bool:
    """Whether the model gave a valid answer: a generation whose filters found no answer reads
    "[invalid]" (lm-eval's regex filter) or nothing; a multiple-choice answer is always a choice."""
    filtered = sample.get("filtered_resps") or []
    first = filtered[0] if filtered else None
    return not (isinstance(first, str) and first.strip() in ("[invalid]", ""))


def board_model(leaderboard: str | Path, task: str) -> str:
    """The model of a leaderboard's rows of `task` (the default model when it has none)."""
    from harness.models import DEFAULT_MODEL

    path = Path(leaderboard)
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    models = sorted({r["model"] for r in rows if r["task"] == task})
    return models[0] if len(models) == 1 else DEFAULT_MODEL


def runs_from_leaderboard(leaderboard: str | Path, task: str, model: str | None = None) -> list[tuple[str, Path]]:
    """(label, run directory) of every row of `task` in a leaderboard.json, base first."""
    from crl_bench.plots import row_label

    path = Path(leaderboard)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `crl-bench bench` first, or pass --leaderboard")
    rows = [
        r
        for r in json.loads(path.read_text())["rows"]
        if r["task"] == task and r["seed"] != "all" and r.get("run_dir") and (model is None or r["model"] == model)
    ]
    models = sorted({r["model"] for r in rows})
    if len(models) > 1:
        raise ValueError(f"{path} has {task} rows for several models ({', '.join(models)}): name one with --model")
    seeds, budgets = defaultdict(set), defaultdict(set)
    for r in rows:
        seeds[(r["method"], r["setting"])].add(r["seed"])
        budgets[(r["method"], r["setting"])].add(budget_of(r))
    runs: dict[str, Path] = {}
    for r in sorted(rows, key=lambda r: (r["method"] != "base", r["method"], str(r["setting"]), str(r["seed"]))):
        label = row_label(r)
        if len(seeds[(r["method"], r["setting"])]) > 1:
            label += f" seed {r['seed']}"
        if len(budgets[(r["method"], r["setting"])]) > 1:
            label += f" [{budget_of(r)}]"
        runs.setdefault(label, Path(r["run_dir"]))
    if "base" not in runs:
        raise ValueError(
            f"{path} has no base row for {task}{f' ({model})' if model else ''}: "
            f"a breakdown compares each method with base"
        )
    return list(runs.items())


def breakdown(task: str, evaluated: list[Evaluated], grouping: Grouping) -> dict[str, Any]:
    """Per group and method: accuracy, fixed / broken against base and McNemar p (Holm over the
    table); per method, the step check's counts when the task has one."""
    from harness.stats import holm, mcnemar_exact

    base = next((e for e in evaluated if e.label == "base"), None)
    if base is None:
        raise ValueError("a breakdown needs the base run (label 'base') to compare with")
    items = sorted(base.correct)
    for run in evaluated:
        if set(run.correct) != set(items):
            raise ValueError(
                f"{run.label} ({run.source}) scored {len(run.correct)} items, base {len(items)}; "
                f"they must be the same items (same task, split and limit)"
            )
    missing = [i for i in items if grouping.field not in base.docs[i]]
    if missing:
        fields = ", ".join(sorted(base.docs[missing[0]])) if isinstance(base.docs[missing[0]], dict) else "none"
        raise ValueError(f"{task}: document {missing[0]} has no field {grouping.field!r}; group by one of: {fields}")
    groups: dict[Any, list[int]] = defaultdict(list)
    for i in items:
        groups[base.docs[i][grouping.field]].append(i)
    order = sorted(groups, key=lambda g: (str(type(g)), g))
    check = grouping.steps if grouping.steps is not None and any(base.completions.values()) else None
    table, steps = [], [] if check else None
    for key, ids in [*((g, groups[g]) for g in order), ("all", items)]:
        name = "all items" if key == "all" else grouping.name(key)
        for run in evaluated:
            mine, ref = [run.correct[i] for i in ids], [base.correct[i] for i in ids]
            valid = [True if base.valid is None else base.valid.get(i, True) for i in ids]
            fixed = sum(m > r for m, r in zip(mine, ref))
            repaired = sum(m > r and not v for m, r, v in zip(mine, ref, valid))  # base gave no valid answer
            broken = sum(m < r for m, r in zip(mine, ref))
            table.append(
                {
                    "group": name,
                    "method": run.label,
                    "n": len(ids),
                    "accuracy": sum(mine) / len(ids),
                    "fixed": fixed,
                    "broken": broken,
                    # the gain split: items base answered in no valid form that the method got right, and
                    # the rest of the net gain (valid answers it changed, right or wrong)
                    "base_invalid": sum(not v for v in valid),
                    "gain_from_format": repaired / len(ids),
                    "gain_from_answers": (fixed - repaired - broken) / len(ids),
                    "p_vs_base": None if run is base else mcnemar_exact(mine, ref),
                }
            )
            if check:
                counts: dict[str, int] = defaultdict(int)
                for i in ids:
                    for step, right in check(base.docs[i], run.completions[i]).items():
                        counts[step] += bool(right)
                steps.append({"group": name, "method": run.label, "n": len(ids), "right": dict(counts)})
    per_group = [r for r in table if r["group"] != "all items"]
    for row, p in zip(per_group, holm([r["p_vs_base"] for r in per_group])):
        row["p_vs_base_holm"] = p
    for row in table:
        row.setdefault("p_vs_base_holm", row["p_vs_base"])  # the whole task: one test per method, as on the leaderboard
    return {
        "schema": SCHEMA,
        "task": task,
        "by": grouping.field,
        "runs": {e.label: str(e.source) for e in evaluated},
        "groups": table,
        "steps": steps,
    }


def render(result: dict[str, Any]) -> str:
    """The breakdown as Markdown."""

    def p(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"

    lines = [
        f"# Breakdown of {result['task']} by `{result['by']}`",
        "",
        "Generated by `crl-bench breakdown` from the runs' per-item logs; do not edit by hand.",
        "",
        "Fixed / broken: items the method gets right and base wrong / the reverse. p: exact McNemar against "
        "base on the group's items, Holm-corrected over every (group, method) row; on all items, uncorrected "
        "(the leaderboard corrects it across tasks).",
        "",
        "Gain from format / from answers: the method's net gain over base split into items where base gave no "
        "valid answer (no number its filter could read, e.g. `[invalid]`) that the method got right, and the "
        "rest (valid answers it changed, fixed minus broken); multiple-choice answers are always valid.",
        "",
        "| group | method | n | accuracy | fixed | broken | p vs base | base invalid | gain from format | "
        "gain from answers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["groups"]:
        own = r["method"] != "base"
        split = (
            f"{r['gain_from_format']:+.3f} | {r['gain_from_answers']:+.3f}"
            if own and "gain_from_format" in r
            else " | "
        )
        lines.append(
            f"| {r['group']} | {r['method']} | {r['n']} | {r['accuracy']:.3f} | "
            f"{r['fixed'] if own else ''} | {r['broken'] if own else ''} | "
            f"{p(r['p_vs_base_holm'])} | {r.get('base_invalid', '')} | {split} |"
        )
    if result["steps"]:
        names = list(result["steps"][0]["right"])
        lines += [
            "",
            "## Steps of the worked solution",
            "",
            "Completions that get each step right, out of n, each step judged on its own: a sum is right if it "
            "is the sum of the operands and operator the completion wrote, whether or not those were right.",
            "",
            "| group | method | n | " + " | ".join(names) + " |",
            "|---|---|---:|" + "---:|" * len(names),
        ]
        for s in result["steps"]:
            lines.append(
                f"| {s['group']} | {s['method']} | {s['n']} | "
                + " | ".join(str(s["right"].get(k, 0)) for k in names)
                + " |"
            )
    lines += ["", "Runs:", ""] + [f"- {label}: `{source}`" for label, source in result["runs"].items()]
    if result.get("absent"):
        lines += [
            "",
            "Left out: leaderboard rows whose runs are not on the machine that wrote this (rerun "
            "`crl-bench bench` on the task to include them):",
            "",
        ]
        lines += [f"- {label}: `{source}`" for label, source in result["absent"].items()]
    return "\n".join(lines) + "\n"


def figure(result: dict[str, Any], path: Path) -> list[Path]:
    """Grouped bars: each method's accuracy per group."""
    from crl_bench.plots import _pyplot, _save

    plt = _pyplot()
    groups = list(dict.fromkeys(r["group"] for r in result["groups"]))
    methods = list(dict.fromkeys(r["method"] for r in result["groups"]))
    value = {(r["group"], r["method"]): r["accuracy"] for r in result["groups"]}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(min(9.0, max(4.0, 0.22 * len(groups) * len(methods) + 1)), 3.6))
    for k, method in enumerate(methods):
        xs = [g + (k - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(
            xs,
            [value[(g, method)] for g in groups],
            width,
            label=method,
            color="tab:gray" if method == "base" else None,
        )
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result['task']} by {result['by']}", fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(methods)))
    fig.tight_layout()
    return _save(fig, path)


def run(
    task: str,
    results_dir: str | Path = "results",
    by: str | None = None,
    runs: list[tuple[str, Path]] | None = None,
    leaderboard: str | Path | None = None,
    model: str | None = None,
    exclude: frozenset[int] | None = None,
) -> Path:
    """Break `task` down: the leaderboard's runs plus `runs` ((label, directory) pairs), or `runs`
    alone when they include base; documents reserved for training (`harness.splits`) are left
    out, as on the leaderboard. Returns the Markdown path."""
    from crl_bench.bench_config import reserved_documents
    from harness.manifest import build_manifest, write_json, write_text
    from harness.models import model_results

    results = Path(results_dir)
    grouping = default_grouping(task)
    if by is not None:
        grouping = Grouping(by) if grouping is None or grouping.field != by else grouping
    if grouping is None:
        raise ValueError(f"{task} has no default grouping: name a document field with --by (e.g. --by subject)")
    runs = list(runs or [])
    from_board = leaderboard is not None or all(label != "base" for label, _ in runs)  # --run base=DIR: runs alone
    chosen = dict(runs_from_leaderboard(leaderboard or results / "leaderboard.json", task, model) if from_board else [])
    # a board row whose run is not on this machine (a committed row made elsewhere) is left out
    # and named; base, and runs named with --run, must be here
    named = {"base", *(label for label, _ in runs)}
    absent = {
        label: str(path)
        for label, path in chosen.items()
        if label not in named and not (Path(path) / "samples.jsonl").exists()
    }
    chosen = {label: path for label, path in chosen.items() if label not in absent}
    chosen.update(runs)
    if exclude is None:
        exclude = reserved_documents([task])[task]
    evaluated = [read_evaluated(label, path, exclude) for label, path in chosen.items()]
    result = breakdown(task, evaluated, grouping)
    result["absent"] = absent
    result["manifest"] = build_manifest(kind="breakdown")
    folder = model_results(results, model or board_model(leaderboard or results / "leaderboard.json", task))
    out = folder / "breakdown"
    write_json(out / f"{task}.json", result)
    write_text(out / f"{task}.md", render(result))
    figure(result, folder / "figures" / f"breakdown-{task}")
    return out / f"{task}.md"
