"""The HTML pieces of `results/report.html` (`crl_bench.report`): tables, inlined figures, and the
sections of the analyses (similarity, feature and circuit overlap, interactions, breakdowns),
each built from its results file."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any


def html_table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(cell(v))}</td>' for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-4:
            return f"{value:.1e}"
        return f"{value:.4f}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    return str(value)


def image(path: Path, results: Path) -> str:
    """An inlined figure, captioned with its file (and the PDF beside it) under results/."""
    data = base64.b64encode(path.read_bytes()).decode()
    name = f"results/{path.relative_to(results).as_posix()}"
    pdf = " (and .pdf)" if path.with_suffix(".pdf").exists() else ""
    return (
        f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"><figcaption class="prov">'
        f"{html.escape(name)}{pdf}</figcaption></figure>"
    )


def json_rows(path: Path, key: str) -> Any:
    return json.loads(path.read_text())[key] if path.exists() else None


def similarity(results: Path) -> str:
    rows = json_rows(results / "similarity.json", "rows")
    if not rows:
        return "<p>No RLVR run to compare with.</p>"
    return html_table(
        [
            "task",
            "method",
            "n",
            "agreement",
            "κ",
            "fixed RLVR",
            "fixed m",
            "both",
            "Jaccard",
            "p",
            "KL(RLVR‖m)",
            "JS",
            "JS base",
            "gap closed",
            "KL(m‖base)",
        ],
        [
            [
                r["task"],
                r["method"],
                r["n"],
                r["answer_agreement"],
                r["kappa"],
                r["fixed_by_rlvr"],
                r["fixed_by_method"],
                r["fixed_both"],
                r["fixed_jaccard"],
                r["fixed_overlap_p"],
                r["kl_from_rlvr"],
                r["js_to_rlvr"],
                r["base_js_to_rlvr"],
                r["gap_closed"],
                r["kl_from_base"],
            ]
            for r in rows
        ],
        left=2,
    )


def per_task(path: Path, empty: str, entry_html: Any) -> str:
    """One <h3> section per task of an analysis JSON (`{"tasks": {task: entry}}`)."""
    tasks = json_rows(path, "tasks")
    if not tasks:
        return f"<p>{empty}</p>"
    return "".join(f"<h3>{html.escape(task)}</h3>" + entry_html(entry) for task, entry in tasks.items())


def breakdowns(results: Path) -> str:
    """`breakdown/<task>.json`: accuracy per group of items, and the step check where there is one."""
    parts = []
    for path in sorted((results / "breakdown").glob("*.json")):
        entry = json.loads(path.read_text())
        parts.append(f"<h3>{html.escape(entry['task'])} by {html.escape(entry['by'])}</h3>")
        parts.append(
            html_table(
                [
                    "group",
                    "method",
                    "n",
                    "accuracy",
                    "fixed",
                    "broken",
                    "p vs base (Holm)",
                    "gain from format",
                    "gain from answers",
                ],
                [
                    [
                        r["group"],
                        r["method"],
                        r["n"],
                        r["accuracy"],
                        r["fixed"],
                        r["broken"],
                        r["p_vs_base_holm"],
                        r.get("gain_from_format") if r["method"] != "base" else None,
                        r.get("gain_from_answers") if r["method"] != "base" else None,
                    ]
                    for r in entry["groups"]
                ],
                left=2,
            )
        )
        if entry.get("steps"):
            names = list(entry["steps"][0]["right"])
            parts.append("<p>Completions that get each step of the worked solution right, each step on its own:</p>")
            parts.append(
                html_table(
                    ["group", "method", "n", *names],
                    [[s["group"], s["method"], s["n"], *(s["right"].get(k, 0) for k in names)] for s in entry["steps"]],
                    left=2,
                )
            )
    return "".join(parts) or "<p>No breakdowns (no task with a grouping, or `crl-bench breakdown` not run).</p>"


def overlap_entry(entry: dict[str, Any]) -> str:
    parts = [
        f"<p>SAE layer {entry['layer']}, top {entry['k']} features per method.</p>",
        html_table(
            ["a", "b", "Jaccard", "p", "RBO", "p", "shared"],
            [
                [
                    p["a"],
                    p["b"],
                    p["jaccard"],
                    p["jaccard_p"],
                    p["rbo"],
                    p["rbo_p"],
                    ", ".join(map(str, p["shared"][:10])),
                ]
                for p in entry["pairs"]
            ],
            left=2,
        ),
    ]
    parts += [
        f"<p>{html.escape(name)}: no features ({html.escape(why)}).</p>"
        for name, why in entry.get("missing", {}).items()
    ]
    return "".join(parts)


def circuit_entry(entry: dict[str, Any]) -> str:
    if "skipped" in entry:
        return f"<p>{html.escape(entry['skipped'])}</p>"
    return html_table(
        [
            "method",
            "metric base",
            "metric method",
            "own nodes recover",
            "RLVR change recovered",
            "top components",
            "top features",
        ],
        [
            [
                name,
                m["metric_base"],
                m["metric_method"],
                m["recovered_by_own_nodes"],
                m.get("rlvr_change_recovered"),
                ", ".join(f"{k[0]}{k[1]}" + (f".{k[2]}" if k[0] == "head" else "") for k in m["components"][:6]),
                ", ".join(map(str, m["features"][:8])),
            ]
            for name, m in entry["methods"].items()
        ],
    ) + html_table(
        ["a", "b", "components Jaccard", "p", "features Jaccard", "p"],
        [
            [p["a"], p["b"], p["components_jaccard"], p["components_p"], p["features_jaccard"], p["features_p"]]
            for p in entry["pairs"]
        ],
        left=2,
    )


def interaction_entry(methods: dict[str, Any]) -> str:
    parts = []
    for label, e in methods.items():
        parts.append(f"<h4>{html.escape(label)}</h4>")
        if "skipped" in e or "note" in e:
            parts.append(f"<p>{html.escape(e.get('skipped') or e['note'])}</p>")
        elif e["setting"] == "generation":
            parts.append(
                f"<p>{e['items']} validation items, {e['steered_decisions']} of {e['decisions']} decisions "
                f"steered, {e['ablations']} ablations: later choices changed {cell(e['later_changed_share'])} "
                f"{cell(e['later_changed_share_ci'])}, completion changed {cell(e['completion_changed_share'])}, "
                f"reward effect of a choice {cell(e['reward_effect'])} {cell(e['reward_effect_ci'])}.</p>"
            )
            parts.append(
                html_table(
                    ["ablated feature", "ablations", "later choices changed", "completion changed", "reward effect"],
                    [
                        [
                            f["feature"],
                            f["ablations"],
                            f["later_changed_share"],
                            f["completion_changed_share"],
                            f["reward_effect"],
                        ]
                        for f in e["by_feature"]
                    ],
                )
            )
        else:
            parts.append(
                html_table(
                    [
                        "earlier → later layer",
                        "earlier steered",
                        "later re-decided differently",
                        "m(both)",
                        "m(earlier only)",
                        "m(later only)",
                        "m(neither)",
                        "interaction",
                        "95% CI",
                    ],
                    [
                        [
                            f"{p['earlier']} → {p['later']}",
                            f"{p['earlier_steered']} / {p['items']}",
                            p["later_changed"],
                            p["metric_both"],
                            p["metric_earlier_only"],
                            p["metric_later_only"],
                            p["metric_neither"],
                            p["interaction"],
                            p["interaction_ci"],
                        ]
                        for p in e["pairs"]
                    ],
                )
            )
    return "".join(parts)


def csft_fidelity(results: Path) -> str:
    """C-SFT's fidelity to RLVR (`results/<model>/csft.json`, `crl_bench.csft_fidelity`)."""
    rows = json_rows(results / "csft.json", "rows")
    if not rows:
        return "<p>No C-SFT runs (bench trains them after RLVR: --ladder csft).</p>"
    table = html_table(
        [
            "task",
            "seed",
            "layer",
            "k",
            "C-SFT",
            "Δ vs base",
            "RLVR Δ vs base",
            "share recovered",
            "95% CI",
            "KL(RLVR‖base)",
            "KL(RLVR‖C-SFT)",
            "KL closed",
            "agreement with RLVR",
        ],
        [
            [
                r["task"],
                r["seed"],
                r["layer"],
                r["k"],
                r["value"],
                r["delta_vs_base"],
                r["rlvr_delta_vs_base"],
                r["share_recovered"],
                r["share_recovered_ci95"],
                r["kl_base"],
                r["kl_steered"],
                r["kl_closed"],
                r["answer_agreement"],
            ]
            for r in rows
        ],
        left=2,
    )
    features = sorted(set(results.glob("csft/*/features.md")) | set(results.glob("csft/*/*-seed*/features.md")))
    listed = ", ".join(f"results/{p.relative_to(results.parent).as_posix()}" for p in features)
    return table + (
        f'<p class="prov">The features each controller adds most, with their cards: {listed}</p>' if features else ""
    )
