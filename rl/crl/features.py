"""What a trained CRL controller chose: the files `rl.crl.trainer.train` writes after training.

- `interventions.jsonl`: every greedy validation decision (item, token position, token, layer,
  feature, coefficient) with the item's reward;
- `choices.json`: the features sampled most often in training and chosen most often at
  validation, overall and per layer, with the share of 'no intervention' decisions;
- `features.md` (in the run directory and its results folder, `rl.runs.publish_run`): the most chosen
  features with their feature cards.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rl.crl.controller import Decision


def write_interventions(path: Path, decisions: list[Decision], rewards: list[float], tokenizer: Any) -> None:
    """One JSON line per validation decision; `rewards[i]` is validation item i's reward."""
    with open(path, "w") as handle:
        for record in decisions:
            doc_index = record.row
            handle.write(
                json.dumps(
                    {
                        "split": "validation",
                        "item": doc_index,
                        "position": record.position,
                        "token": tokenizer.decode([record.token]) if record.token >= 0 else None,
                        "layer": record.layer,
                        "feature": record.feature,
                        "coef": record.coef,
                        "reward": rewards[doc_index],
                    }
                )
                + "\n"
            )


def choices_summary(chosen_counts: Counter, decisions: list[Decision]) -> dict[str, Any]:
    """`choices.json`: training's sampled features and validation's greedy choices."""
    return {
        "training": [{"feature": f, "count": c} for f, c in chosen_counts.most_common(50)],
        "validation": [
            {"feature": f, "count": c}
            for f, c in Counter(r.feature for r in decisions if r.feature is not None).most_common(50)
        ],
        "validation_by_layer": _by_layer(decisions),
        "validation_decisions": len(decisions),
        "validation_noop_share": sum(r.feature is None for r in decisions) / max(1, len(decisions)),
    }


def _by_layer(decisions: list[Decision]) -> list[dict[str, Any]]:
    """(layer, feature) pairs chosen at validation, most frequent first, with their coefficients."""
    counts = Counter((r.layer, r.feature) for r in decisions if r.feature is not None)
    coefs: dict[tuple, set] = {}
    for r in decisions:
        if r.feature is not None:
            coefs.setdefault((r.layer, r.feature), set()).add(r.coef)
    return [
        {"layer": l, "feature": f, "count": c, "coefs": sorted(coefs[(l, f)])} for (l, f), c in counts.most_common(50)
    ]


def write_features(path: Path, run_dir: Path, saes: dict[int, Any], title: str, top: int = 10) -> None:
    """The features the trained controller chooses most often on the validation split, with
    their feature cards where the SAE has them (`crl-bench sae eval` writes them)."""
    from harness.sae.cards import read_cards, render_card

    choices = json.loads((run_dir / "choices.json").read_text())
    layers = sorted(saes)
    cards: dict[int, dict[int, dict]] = {}
    for layer in layers:
        try:
            cards[layer] = {c["feature"]: c for c in read_cards(saes[layer].directory)["cards"]}
        except FileNotFoundError:
            cards[layer] = {}
    decisions = choices["validation_decisions"]
    lines = [
        f"# {title}: the most chosen features",
        "",
        f"Greedy controller on the validation split: {decisions} decisions, "
        f"{choices['validation_noop_share']:.1%} of them 'no intervention'. Training: the features sampled "
        "most often during training, in `choices.json`.",
        "",
        "| layer | feature | share of decisions | coefficients |",
        "|---:|---:|---:|---|",
    ]
    chosen = choices["validation_by_layer"]
    for entry in chosen[:top]:
        lines.append(
            f"| {entry['layer']} | {entry['feature']} | {entry['count'] / max(1, decisions):.1%} | "
            f"{', '.join(f'{c:g}' for c in entry['coefs'])} |"
        )
    lines += ["", "## Feature cards", ""]
    for entry in chosen[:top]:
        card = cards.get(entry["layer"], {}).get(entry["feature"])
        lines += [
            f"### layer {entry['layer']}, feature {entry['feature']}",
            "",
            render_card(card) if card else "(no card: run `crl-bench sae eval` for this SAE)",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
