"""How a CRL controller's choices interact across layers and tokens.

A controller that acts at several layers (setting 2) or at every generated token (setting
3) makes choices that depend on each other: a feature added at layer 6 changes the
residual the layer-9 decision reads, and a feature added at token t changes every later
token's context. Both questions are answered by ablation, on validation items, with the
controller greedy (as it is evaluated) or sampling (as it was trained; common random numbers
per document, position and layer, so a re-run draws a different action only where the
controller reads a different residual), and its decisions forced through
`rl.crl.controller.ControllerRun.overrides`:

- **Multi-layer** (decisions at the answer position, one per layer). For every pair of
  controlled layers i < j:
  - *re-decision*: the choice at i is replaced by "no intervention" and the controller
    decides again at j: the share of items whose choice at j changes, and which (feature at
    i -> feature at j) pairs those are;
  - *interaction on the metric* (logit of the correct choice minus the mean of the others;
    the reward where choices are several tokens long): m(both) - m(i only) - m(j only) +
    m(neither), each term with the choices replayed (j keeps its original choice in "j
    only"), the other layers' choices held; mean over items with a bootstrap interval.
    Zero means the two choices' effects add up; positive, that they help each other.
- **Generation** (a decision at every generated token). For every steered token t of a
  completion (up to `max_ablations` per item), the choice at t is replaced by "no
  intervention" and the completion regenerated with the controller deciding after t:
  whether later choices change (the share of later positions whose choice differs),
  whether the completion changes, and the reward lost (original - ablated: positive means
  that choice helped). Aggregated per ablated feature, with the (earlier feature -> later
  feature) pairs whose later choice disappears most often.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

ITEMS = 32
MAX_ABLATIONS = 8


def _interval(values: list[float], seed: int = 0) -> tuple[float | None, float | None]:
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2 or np.all(x == x[0]):
        return (float(x[0]), float(x[0])) if x.size else (None, None)
    result = stats.bootstrap((x,), np.mean, confidence_level=0.95, random_state=seed, n_resamples=2000)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _metric(rollouts: Any, rewards: list[float], rows: list[int]) -> list[float]:
    """Per row: logit(correct) - mean logit(others) where the choices are one token, else the reward."""
    if not rollouts.choice_logits:
        return list(rewards)
    out = []
    for logits, doc in zip(rollouts.choice_logits, rows):
        gold = rollouts.problem.gold[doc]
        others = [float(v) for i, v in enumerate(logits) if i != gold]
        out.append(float(logits[gold]) - sum(others) / len(others))
    return out


def _decide(mode: str, seed: int) -> dict[str, Any]:
    """How the analysed runs pick actions: greedy, or sampled with common random numbers."""
    if mode not in ("greedy", "sample"):
        raise ValueError(f"the interaction analysis runs the controller greedy or sample, got {mode!r}")
    return {"mode": mode, "common_random": seed if mode == "sample" else None}


def multi_layer(
    rollouts: Any, items: list[int], noop: tuple[int, int], mode: str = "greedy", seed: int = 0
) -> dict[str, Any]:
    """The multi-layer analysis on `items` (documents of `rollouts.problem`)."""
    decide = _decide(mode, seed)
    rewards, records, _, _ = rollouts.run(items, keep_residuals=False, **decide)
    base_metric = _metric(rollouts, rewards, items)
    layers = sorted({r.layer for r in records})
    actions = defaultdict(dict)  # row -> layer -> (feature index, coef index)
    position, sae_id = {}, {}
    for r in records:
        actions[r.row][r.layer] = (r.feature_index, r.coef_index)
        position[r.row] = r.position
        sae_id[(r.row, r.layer)] = r.feature
    pairs = []
    for a, i in enumerate(layers):
        for j in layers[a + 1 :]:
            steered = [row for row in range(len(items)) if actions[row][i][0] != noop[0]]
            # re-decision at j with i's choice removed
            forced = {row: {(position[row], i): noop} for row in range(len(items))}
            _, again, _, _ = rollouts.run(items, keep_residuals=False, overrides=forced, **decide)
            now = {r.row: r.feature for r in again if r.layer == j}
            changed = [row for row in steered if now[row] != sae_id[(row, j)]]
            moves = Counter((sae_id[(row, i)], sae_id[(row, j)], now[row]) for row in changed)

            def replay(keep_i: bool, keep_j: bool) -> list[float]:
                row_actions = {
                    row: {**actions[row], **({} if keep_i else {i: noop}), **({} if keep_j else {j: noop})}
                    for row in range(len(items))
                }
                r, _, _, _ = rollouts.run(items, "replay", keep_residuals=False, row_actions=row_actions)
                return _metric(rollouts, r, items)

            only_i, only_j, neither = replay(True, False), replay(False, True), replay(False, False)
            interaction = [b - oi - oj + n for b, oi, oj, n in zip(base_metric, only_i, only_j, neither)]
            low, high = _interval(interaction)
            pairs.append(
                {
                    "earlier": i,
                    "later": j,
                    "items": len(items),
                    "earlier_steered": len(steered),
                    "later_changed": len(changed),
                    "later_changed_share": len(changed) / len(steered) if steered else None,
                    "moves": [
                        {"earlier_feature": e, "later_before": lb, "later_after": la, "count": c}
                        for (e, lb, la), c in moves.most_common(10)
                    ],
                    "metric_both": float(np.mean(base_metric)),
                    "metric_earlier_only": float(np.mean(only_i)),
                    "metric_later_only": float(np.mean(only_j)),
                    "metric_neither": float(np.mean(neither)),
                    "interaction": float(np.mean(interaction)),
                    "interaction_ci": [low, high],
                }
            )
    return {"setting": "multi-layer", "mode": mode, "layers": layers, "pairs": pairs}


def generation(
    rollouts: Any,
    items: list[int],
    noop: tuple[int, int],
    max_ablations: int = MAX_ABLATIONS,
    mode: str = "greedy",
    seed: int = 0,
) -> dict[str, Any]:
    """The generation analysis on `items` (documents of `rollouts.problem`)."""
    decide = _decide(mode, seed)
    rewards, records, _, completions = rollouts.run(items, keep_residuals=False, **decide)
    by_row = defaultdict(dict)  # row -> position -> sae feature (None: no-op)
    steered = defaultdict(list)
    for r in records:
        by_row[r.row][r.position] = r.feature
        if r.feature_index != noop[0]:
            steered[r.row].append(r)
    ablations = [(row, r) for row in range(len(items)) for r in steered[row][:max_ablations]]
    decisions = len(records)
    out: dict[str, Any] = {
        "setting": "generation",
        "mode": mode,
        "items": len(items),
        "decisions": decisions,
        "steered_decisions": sum(len(v) for v in steered.values()),
        "items_steered": sum(1 for v in steered.values() if v),
        "ablations": len(ablations),
        "reward": float(np.mean(rewards)),
    }
    if not ablations:
        out["note"] = f"the controller ({mode}) steered no token of these items: nothing to ablate"
        return out
    rows = [items[row] for row, _ in ablations]
    forced = {k: {(r.position, r.layer): noop} for k, (_, r) in enumerate(ablations)}
    new_rewards, new_records, _, new_completions = rollouts.run(rows, keep_residuals=False, overrides=forced, **decide)
    after = defaultdict(dict)
    for r in new_records:
        after[r.row][r.position] = r.feature
    entries, per_feature, lost_pairs = [], defaultdict(list), Counter()
    for k, (row, record) in enumerate(ablations):
        t = record.position
        before_later = {p: f for p, f in by_row[row].items() if p > t}
        after_later = {p: f for p, f in after[k].items() if p > t}
        positions = set(before_later) | set(after_later)
        differ = [p for p in positions if before_later.get(p, "absent") != after_later.get(p, "absent")]
        later_steered = [p for p, f in before_later.items() if f is not None]
        for p in later_steered:
            if after_later.get(p, "absent") != before_later[p]:
                lost_pairs[(record.feature, before_later[p])] += 1
        entry = {
            "later_decisions": len(positions),
            "later_changed": len(differ),
            "later_changed_share": len(differ) / len(positions) if positions else 0.0,
            "completion_changed": new_completions[k] != completions[row],
            "reward_effect": rewards[row] - new_rewards[k],
        }
        entries.append(entry)
        per_feature[record.feature].append(entry)
    shares = [e["later_changed_share"] for e in entries]
    effects = [e["reward_effect"] for e in entries]
    out.update(
        {
            "later_changed_share": float(np.mean(shares)),
            "later_changed_share_ci": list(_interval(shares)),
            "completion_changed_share": float(np.mean([e["completion_changed"] for e in entries])),
            "reward_effect": float(np.mean(effects)),
            "reward_effect_ci": list(_interval(effects)),
            "by_feature": sorted(
                (
                    {
                        "feature": f,
                        "ablations": len(v),
                        "later_changed_share": float(np.mean([e["later_changed_share"] for e in v])),
                        "completion_changed_share": float(np.mean([e["completion_changed"] for e in v])),
                        "reward_effect": float(np.mean([e["reward_effect"] for e in v])),
                    }
                    for f, v in per_feature.items()
                ),
                key=lambda e: -e["ablations"],
            )[:15],
            "lost_later_choices": [
                {"earlier_feature": a, "later_feature": b, "count": c} for (a, b), c in lost_pairs.most_common(10)
            ],
        }
    )
    return out


def analyse(
    stage_controller: Any,
    setting: str,
    task: Any,
    model: Any,
    tokenizer: Any,
    seed: int,
    items: int = ITEMS,
    batch_size: int = 8,
    max_ablations: int = MAX_ABLATIONS,
    mode: str = "greedy",
) -> dict[str, Any]:
    """The interaction analysis of one trained CRL controller (a run directory) on the first
    `items` validation documents of `task` (an lm-eval task object). `mode` greedy analyses
    the controller as it is evaluated; sample analyses the stochastic policy it was trained
    as, with common random numbers: each (document, position, layer) draws with its own fixed
    uniforms, so an ablated run makes a different choice only where the controller reads a
    different residual."""
    from harness.splits import method_splits
    from rl.crl.controller import load_controller
    from rl.crl.rollouts import Rollouts, build_problem

    device = next(model.parameters()).device
    controller, bank = load_controller(stage_controller, device=device)
    docs = method_splits(task).validation[:items]
    problem = build_problem(task, docs, tokenizer, seed)
    max_new = int((task.config.generation_kwargs or {}).get("max_gen_toks", 32))
    rollouts = Rollouts(model, tokenizer, controller, bank, problem, max_new, batch_size)
    noop = (bank.d_sae, 0)
    indices = list(range(len(docs)))
    if setting == "generation":
        return generation(rollouts, indices, noop, max_ablations, mode, seed)
    if len(bank.layers) < 2:
        return {"setting": setting, "skipped": "one controlled layer: no cross-layer interaction to measure"}
    return multi_layer(rollouts, indices, noop, mode, seed)


def steered_nothing(entry: dict[str, Any]) -> bool:
    """True when the analysed controller made no choice there was to ablate."""
    if entry.get("setting") == "generation":
        return entry.get("ablations", 0) == 0
    return bool(entry.get("pairs")) and all(p["earlier_steered"] == 0 for p in entry["pairs"])


def render(tasks: dict[str, dict[str, Any]]) -> str:
    """Markdown for `results/<model>/interactions.md` from {task: {method label: analysis}}."""

    def f(x, d=3):
        return "" if x is None else f"{x:.{d}f}"

    lines = [
        "# CRL interactions across layers and tokens",
        "",
        "Generated from `interactions.json` by bench's analysis stage (`crl_bench.analyses.interactions`), on "
        "validation "
        "items, with the controller greedy as it is evaluated, and, where the greedy controller steers nothing, "
        "also sampling as it was trained ('(sampled)': common random numbers per document, position and layer, "
        "so an ablated run draws a different action only where the controller reads a different residual). "
        "Multi-layer: the earlier layer's choice is replaced by 'no "
        "intervention' and the later layer decides again (re-decision), and the interaction on the metric "
        "(logit of the correct choice minus the mean of the others; the 0/1 reward where the choices are "
        "several tokens long, as arc_easy's) is m(both) − m(earlier only) − m(later "
        "only) + m(neither), choices replayed, with a 95% bootstrap interval over items. Generation: each "
        "steered token's choice is removed and the completion regenerated with the controller deciding "
        "afterwards; 'later choices changed' is the share of later positions whose choice differs, 'reward "
        "effect' is the original reward minus the ablated one (positive: the removed choice helped).",
        "",
    ]
    for task, methods in tasks.items():
        for label, entry in methods.items():
            lines += [f"## {task}: {label}", ""]
            if "skipped" in entry:
                lines += [entry["skipped"], ""]
                continue
            if entry["setting"] == "generation":
                lines += [
                    f"{entry['items']} items, {entry['decisions']} decisions, {entry['steered_decisions']} of "
                    f"them steered ({entry['items_steered']} items steered at least once); reward "
                    f"{f(entry['reward'])}; {entry['ablations']} ablations.",
                    "",
                ]
                if "note" in entry:
                    lines += [entry["note"], ""]
                    continue
                lo, hi = entry["later_changed_share_ci"]
                rlo, rhi = entry["reward_effect_ci"]
                lines += [
                    f"- later choices changed: {f(entry['later_changed_share'])} [{f(lo)}, {f(hi)}]",
                    f"- completion changed: {f(entry['completion_changed_share'])}",
                    f"- reward effect of a choice: {f(entry['reward_effect'])} [{f(rlo)}, {f(rhi)}]",
                    "",
                    "| ablated feature | ablations | later choices changed | completion changed | reward effect |",
                    "|---:|---:|---:|---:|---:|",
                ]
                for e in entry["by_feature"]:
                    lines.append(
                        f"| {e['feature']} | {e['ablations']} | {f(e['later_changed_share'])} | "
                        f"{f(e['completion_changed_share'])} | {f(e['reward_effect'])} |"
                    )
                if entry["lost_later_choices"]:
                    lines += [
                        "",
                        "Later choices that disappear when an earlier one is removed (earlier → later: count): "
                        + ", ".join(
                            f"{e['earlier_feature']} → {e['later_feature']}: {e['count']}"
                            for e in entry["lost_later_choices"]
                        ),
                    ]
                lines.append("")
                continue
            lines += [
                "| earlier → later layer | earlier steered | later re-decided differently | m(both) | "
                "m(earlier only) | m(later only) | m(neither) | interaction [95% CI] |",
                "|---|---:|---:|---:|---:|---:|---:|---|",
            ]
            for p in entry["pairs"]:
                lo, hi = p["interaction_ci"]
                lines.append(
                    f"| {p['earlier']} → {p['later']} | {p['earlier_steered']} / {p['items']} | "
                    f"{p['later_changed']} ({f(p['later_changed_share'], 2)}) | {f(p['metric_both'], 2)} | "
                    f"{f(p['metric_earlier_only'], 2)} | {f(p['metric_later_only'], 2)} | "
                    f"{f(p['metric_neither'], 2)} | {f(p['interaction'], 2)} [{f(lo, 2)}, {f(hi, 2)}] |"
                )
                for m in p["moves"][:5]:
                    lines.append(
                        f"|  | feature {m['earlier_feature']} removed: later {m['later_before']} → "
                        f"{m['later_after']} ({m['count']}) | | | | | | |"
                    )
            lines.append("")
    return "\n".join(lines) + "\n"
