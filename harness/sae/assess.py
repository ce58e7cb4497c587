"""Quality record and feature cards for an SAE, next to it and in `results/`.

Next to the SAE: `quality.json` and `feature_cards.json` (every feature). In
`results/saes/`: `<slug>.json` (the quality record), `<slug>.cards.md` (cards of the most
frequent features, readable on GitHub), and `results/saes/README.md`, a table of every
SAE recorded there, regenerated from the JSON records.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.manifest import build_manifest, write_json
from harness.models import model_slug
from harness.sae.cards import CARDS, build_cards, render_card, write_cards
from harness.sae.provision import LoadedSAE
from harness.sae.quality import SAEEvalConfig, measure

QUALITY = "quality.json"
# The targets for the embedded model's default SAE; shown next to every record.
TARGETS = {"l0": ("<=", 64), "fvu": ("<=", 0.25), "ce_loss_recovered": (">=", 0.85), "dead_fraction": ("<=", 0.10)}


def slug(model: str, name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", f"{model_slug(model)}__{name}")


def _training(loaded: LoadedSAE) -> dict[str, Any]:
    manifest = loaded.directory / "manifest.json"
    if loaded.source != "trained" or not manifest.exists():
        return {}
    m = json.loads(manifest.read_text())
    return {
        "tokens": m.get("training_tokens"),
        "wall_s": m.get("train_wall_s"),
        "corpus": m.get("corpus"),
        "device": m.get("device"),
        "git_commit": m.get("git_commit"),
    }


def meets_targets(metrics: dict[str, float]) -> dict[str, bool]:
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = metrics[key]
        out[key] = value <= bound if op == "<=" else value >= bound
    return out


def assess(loaded: LoadedSAE, config: SAEEvalConfig, model=None, tokenizer=None) -> dict[str, Any]:
    """Measure (or reuse) quality and cards for `loaded`; publish to `config.results_dir`.

    The model is loaded (from `config`) only when something has to be measured.
    """
    from harness.models import default_device, load_causal_lm
    from harness.sae.corpus import load_corpus

    training = _training(loaded)
    corpus_spec = config.eval_corpus or (training.get("corpus") or {}).get("spec") or "builtin"
    # what the numbers depend on: the SAE itself (not how it was named), the model and the settings
    settings = {k: v for k, v in asdict(config).items() if k not in ("force", "results_dir", "device", "sae", "layer")}
    settings.update(eval_corpus=corpus_spec, sae=loaded.name, layer=loaded.layer)
    quality_path = loaded.directory / QUALITY
    if quality_path.exists() and (loaded.directory / CARDS).exists() and not config.force:
        record = json.loads(quality_path.read_text())
        if record.get("settings") == settings:
            publish(record, loaded, config.results_dir)
            return record
    corpus = load_corpus(corpus_spec)
    texts = corpus.chunks("heldout", seed=1)
    if model is None:
        model, tokenizer = load_causal_lm(config.model, dtype=config.dtype, device=config.device or default_device())
    started = time.perf_counter()
    metrics, scan, blocks = measure(model, tokenizer, loaded, texts, config)
    cards = build_cards(model, tokenizer, loaded.directions(), scan, blocks)
    record = build_manifest(
        kind="sae_quality",
        model=config.model,
        sae=loaded.describe(),
        heldout_corpus=corpus.describe(),
        settings=settings,
        metrics=metrics,
        meets_targets=meets_targets(metrics),
        training=training,
        eval_wall_s=round(time.perf_counter() - started, 1),
    )
    write_cards(loaded.directory / CARDS, {"sae": loaded.describe(), "model": config.model}, cards)
    write_json(quality_path, record)
    publish(record, loaded, config.results_dir)
    return record


def showcase(
    cards: list[dict[str, Any]], n_frequent: int = 8, n_sampled: int = 24, seed: int = 0
) -> list[dict[str, Any]]:
    """Cards worth reading: the most frequent features, then a seeded random sample of
    features firing on 0.01%-1% of tokens (dense features are rarely interpretable;
    the mid-frequency ones usually are)."""
    import random

    frequent = sorted(cards, key=lambda c: -c["frequency"])[:n_frequent]
    shown = {c["feature"] for c in frequent}
    middle = [c for c in cards if 1e-4 <= c["frequency"] <= 1e-2 and c["feature"] not in shown]
    sampled = sorted(random.Random(seed).sample(middle, min(n_sampled, len(middle))), key=lambda c: c["feature"])
    return frequent + sampled


def publish(record: dict[str, Any], loaded: LoadedSAE, results_dir: str | Path) -> Path:
    """Copy the record and a cards excerpt into `results/saes/`; regenerate its README table."""
    out = Path(results_dir) / "saes"
    public = {k: v for k, v in record.items() if k != "platform"}
    public["sae"] = {k: v for k, v in record["sae"].items() if k != "directory"}
    public["sae"]["weights_sha256"] = _weights_digest(loaded.directory)
    name = _record_name(out, slug(record["model"], loaded.name), public)
    write_json(out / f"{name}.json", public)
    cards = json.loads((loaded.directory / CARDS).read_text())["cards"]
    chosen = showcase(cards)
    text = [
        f"# Feature cards: {loaded.name} on {record['model']} (layer {loaded.layer})",
        "",
        f"Held-out text: {record['heldout_corpus']['spec']}. The 8 most frequent features, then a "
        f"random sample (seed 0) of features firing on 0.01%-1% of tokens; all {len(cards)} cards are "
        f"in `{CARDS}` next to the SAE (`crl-bench sae card --feature N` prints one). "
        f"Activating token in **bold**; ⏎ is a newline.",
        "",
    ]
    for card in chosen:
        text += [render_card(card), ""]
    (out / f"{name}.cards.md").write_text("\n".join(text))
    render_table(out)
    return out / f"{name}.json"


def _weights_digest(directory: Path) -> str | None:
    from harness.identity import file_digest

    path = Path(directory) / "sae_weights.safetensors"
    return file_digest(path) if path.exists() else None


def _record_name(out: Path, name: str, public: dict[str, Any]) -> str:
    """`name`, unless the record already there under it is of another SAE (other weights; for a
    record from before weights were recorded, another training run): then `name-<weights digest>`.
    A retrained SAE (another machine, another run of the same settings) never replaces the record
    of the SAE that earlier results used."""
    path = out / f"{name}.json"
    digest = public["sae"].get("weights_sha256")
    if not path.exists() or digest is None:
        return name
    old = json.loads(path.read_text())
    recorded = old.get("sae", {}).get("weights_sha256")
    same = recorded == digest if recorded else old.get("training") == public.get("training")
    return name if same else f"{name}-{digest[:8]}"


def render_table(folder: Path) -> None:
    rows = []
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("kind") != "sae_quality":
            continue
        m, s, t = r["metrics"], r["sae"], r.get("training") or {}
        ok = r.get("meets_targets", {})
        mark = lambda key: "" if ok.get(key, True) else " ✗"  # noqa: E731
        rows.append(
            f"| {r['model']} | {s['name']} | {s['layer']} | {s['d_sae']} | {m['l0']:.1f}{mark('l0')} | "
            f"{m['fvu']:.3f}{mark('fvu')} | {m['ce_loss_recovered']:.3f}{mark('ce_loss_recovered')} | "
            f"{m['ce_loss_clean']:.3f} / {m['ce_loss_sae']:.3f} / {m['ce_loss_zero_ablation']:.2f} | "
            f"{m['dead_fraction']:.1%}{mark('dead_fraction')} | {t.get('tokens') or '—'} | "
            f"{t.get('wall_s') or '—'} | {m['eval_tokens']} | [cards]({path.stem}.cards.md) |"
        )
    targets = ", ".join(f"{k} {op} {v}" for k, (op, v) in TARGETS.items())
    header = [
        "# SAE quality",
        "",
        "Measured on held-out text (documents never used in training) by `crl-bench sae eval`; "
        "generated from the JSON records in this folder. CE loss: clean / SAE spliced in / layer "
        f"zero-ablated, nats per token. Targets for the embedded model's default SAE: {targets} "
        "(✗ marks a miss).",
        "",
        "| model | SAE | layer | width | L0 | FVU | CE recovered | CE clean / SAE / zero | dead | "
        "train tokens | train s | eval tokens | cards |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    (folder / "README.md").write_text("\n".join(header + rows) + "\n")
