"""`crl-bench train corrsteer`: CorrSteer (Cho et al., arXiv 2508.12535), the CRL authors' own
predecessor and the ladder's static-feature rung. No backward pass, one generation pass:

1. The base model answers the training documents (the task's own requests, `harness.scoring`).
   At the SAE's layer each document gets one activation per feature: at the answer position (the
   context's last token) for multiple-choice tasks, max-pooled over the generated tokens for
   generation tasks.
2. Each feature's Pearson correlation with correctness ranks the features (`select`); a feature's
   coefficient is its mean activation on the documents the model got right.
3. Validation by intervention: each of the `--candidates` best-correlated features is added alone
   (coefficient x decoder direction, at the answer position or every generated token) and kept
   only if the validation score does not fall below base's. The number of kept features (a prefix
   of `--counts`) is then chosen on validation.

The sum of the chosen features' coefficient x decoder direction is a static steering vector: the
run directory `<runs>/<model>/corrsteer/<task>/` is a steering artifact (`harness.vectors`) that
`vector_steered` evaluates, and its `selection.json` names the features, their correlations and
coefficients, and the validation scores. `results/<model>/corrsteer/<task>/features.md` lists
them with their feature cards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.config import Dtype, RunConfig


@dataclass
class CorrSteerConfig(RunConfig):
    task: str = field(default="arith_mc", metadata={"help": "lm-eval task (its training and validation splits)"})
    sae: str = field(default="auto", metadata={"help": "SAE whose features are ranked (as bench's --sae)"})
    sae_corpus: str = field(default="builtin", metadata={"help": "corpus for an auto SAE that has to be trained"})
    layer: int | None = field(default=None, metadata={"help": "layer (default: the SAE's own)"})
    train_limit: int | None = field(default=256, metadata={"help": "training documents correlated (None: all)"})
    val_limit: int | None = field(default=32, metadata={"help": "validation documents per check (None: all)"})
    candidates: int = field(
        default=8, metadata={"help": "best-correlated features each validated alone by intervention"}
    )
    counts: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8], metadata={"help": "numbers of kept features compared on validation"}
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    seed: int = field(default=0, metadata={"help": "few-shot selection seed"})
    dtype: Dtype = field(default="auto", metadata={"help": "model dtype"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.counts, str):
            self.counts = [int(c) for c in self.counts.split(",") if c]
        if self.candidates < 1 or not self.counts or min(self.counts) < 1:
            raise ValueError("--candidates and every --counts must be at least 1")


def correlations(acts: Tensor, correct: Tensor) -> Tensor:
    """Float[F]: Pearson correlation of each feature's activation Float[n, F] with correctness
    Float[n] (0 where either is constant)."""
    a = acts.double() - acts.double().mean(0)
    y = correct.double() - correct.double().mean()
    denominator = a.norm(dim=0) * y.norm()
    r = (a * y[:, None]).sum(0) / denominator.clamp_min(1e-12)
    return torch.where(denominator > 0, r, torch.zeros_like(r)).float()


def select(acts: Tensor, correct: Tensor, top: int) -> list[dict[str, float]]:
    """The `top` features most positively correlated with correctness, best first: each with its
    correlation and coefficient (its mean activation on the correct documents)."""
    r = correlations(acts, correct)
    right = correct.bool()
    mean_right = acts[right].float().mean(0) if right.any() else torch.zeros(acts.shape[1])
    order = [int(f) for f in r.argsort(descending=True) if r[f] > 0][:top]
    return [{"feature": f, "correlation": float(r[f]), "coefficient": float(mean_right[f])} for f in order]


def pooled_activations(
    model: Any, tokenizer: Any, sae: Any, contexts: list[str], completions: list[str] | None, batch_size: int
) -> Tensor:
    """Float[n, d_sae]: each document's SAE activations at the answer position (no completions),
    or max-pooled over its generated tokens."""
    from harness.activations import residuals

    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        ids = [tokenizer(c)["input_ids"] for c in chunk]
        spans = [(len(i) - 1, len(i)) for i in ids]  # the answer position
        if completions is not None:
            done = completions[start : start + batch_size]
            extra = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in done]
            spans = [(len(i), len(i) + max(1, len(e))) for i, e in zip(ids, extra)]
            ids = [i + (e or [tokenizer.eos_token_id]) for i, e in zip(ids, extra)]
        width = max(len(i) for i in ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
        with torch.no_grad():
            hidden = residuals(model, input_ids, mask, layers=[sae.layer])[sae.layer]
        for row, (i, (a, b)) in enumerate(zip(ids, spans)):
            offset = width - len(i)
            feats = sae.encode(hidden[row, offset + a : offset + b]).float()
            rows.append(feats.max(0).values.clamp_min(0).cpu())
    return torch.stack(rows)


def _fingerprint(config: CorrSteerConfig) -> str:
    from harness.identity import inputs
    from harness.manifest import fingerprint

    settings = {k: v for k, v in asdict(config).items() if k not in ("results_dir", "runs_dir", "device", "batch_size")}
    return fingerprint({**settings, "inputs": inputs(config.model, config.task)})


def done(config: CorrSteerConfig) -> bool:
    """Whether a finished CorrSteer run with these settings (and inputs) is on disk."""
    import json

    path = run_dir_of(config) / "config.json"
    if not (run_dir_of(config) / "selection.json").exists() or not path.exists():
        return False
    return json.loads(path.read_text()).get("extra", {}).get("fingerprint") == _fingerprint(config)


def run_dir_of(config: CorrSteerConfig) -> Path:
    from harness.models import model_slug
    from harness.paths import runs_root

    root = Path(config.runs_dir) if config.runs_dir else runs_root()
    return root / model_slug(config.model) / "corrsteer" / config.task


def train(config: CorrSteerConfig, lm: Any = None) -> Path:
    """Rank, validate and save CorrSteer's features for one task; returns the run directory."""
    from rich.console import Console
    from tqdm.auto import tqdm

    from harness.lm_models import LeanHFLM
    from harness.manifest import build_manifest, write_json
    from harness.models import default_device, model_info
    from harness.sae import load_sae
    from harness.scoring import TaskScorer
    from harness.splits import method_splits
    from harness.steering import AddVectors
    from harness.tasks import load_task
    from harness.vectors import SteeringVectors

    console = Console(stderr=True, soft_wrap=True)
    started = time.time()
    task = load_task(config.task)
    if task.OUTPUT_TYPE not in ("multiple_choice", "generate_until"):
        raise ValueError(f"CorrSteer needs a multiple-choice or generation task; {config.task} is {task.OUTPUT_TYPE}")
    device = config.device or default_device()
    sae = load_sae(config.sae, model_info(config.model), config.layer, device=device, corpus=config.sae_corpus)
    if lm is None:
        lm = LeanHFLM(pretrained=config.model, batch_size=config.batch_size, device=device, dtype=config.dtype)
    splits = method_splits(task)
    train_docs = splits.train[: config.train_limit] if config.train_limit else splits.train
    val_docs = splits.validation[: config.val_limit] if config.val_limit else splits.validation
    generation = task.OUTPUT_TYPE == "generate_until"
    positions = "generated" if generation else "last"

    scorer = TaskScorer(lm, task, train_docs, config.seed)
    correct, results = scorer.per_item([])
    contexts = [requests[0].arguments[0] for requests in scorer.requests]
    acts = pooled_activations(
        lm.model, lm.tokenizer, sae, contexts, list(results) if generation else None, config.batch_size
    )
    ranked = select(acts, torch.tensor(correct), config.candidates)
    console.print(
        f"[bold]CorrSteer[/] {config.task}: base right on {sum(correct):.0f} of {len(correct)} training documents; "
        f"{len(ranked)} features correlate positively with it at layer {sae.layer}"
    )
    directions = sae.directions().float().to(device)

    def vector(features: list[dict[str, float]]) -> Tensor:
        return sum(f["coefficient"] * directions[f["feature"]] for f in features)

    validator = TaskScorer(lm, task, val_docs, config.seed)
    base = validator([])
    for entry in tqdm(ranked, desc=f"{config.task}: CorrSteer, each feature alone", unit="feature"):
        entry["validation"] = validator([AddVectors({sae.layer: vector([entry])}, positions=positions)])
    kept = [e for e in ranked if e["validation"] >= base]
    scores = {}
    for count in sorted({min(c, len(kept)) for c in config.counts if kept}):
        if count == 1:  # the best kept feature alone, validated just above with the same vector
            scores[count] = kept[0]["validation"]
            continue
        scores[count] = validator([AddVectors({sae.layer: vector(kept[:count])}, positions=positions)])
    count = max(scores, key=lambda c: (scores[c], -c)) if scores else 0
    if count == 0:
        console.print(f"CorrSteer {config.task}: no feature kept its validation score at base's; the vector is zero")
    chosen = kept[:count]
    run_dir = run_dir_of(config)
    final = vector(chosen) if chosen else torch.zeros(directions.shape[1], device=device)
    record = {
        "layer": sae.layer,
        "sae": sae.name,
        "positions": positions,
        "base_validation": base,
        "ranked": ranked,
        "kept": [e["feature"] for e in kept],
        "validation_by_count": {str(c): s for c, s in scores.items()},
        "chosen": chosen,
        "training_documents": len(train_docs),
        "base_right_on_training": sum(correct),
    }
    SteeringVectors(
        vectors={sae.layer: final.cpu()},
        positions=positions,
        method="corrsteer",
        model=config.model,
        extra={
            "fingerprint": _fingerprint(config),
            "features": [e["feature"] for e in chosen],
        },
    ).save(run_dir, kind="corrsteer", config=asdict(config), selection=record, wall_s=time.time() - started)
    write_json(run_dir / "selection.json", build_manifest(kind="corrsteer_selection", config=asdict(config), **record))
    _write_features(config, run_dir, sae, record)
    console.print(
        f"CorrSteer {config.task}: {count} feature(s) {[e['feature'] for e in chosen]}, validation {base:.3f} -> "
        f"{scores.get(count, base):.3f}; artifact {run_dir}"
    )
    return run_dir


def _write_features(config: CorrSteerConfig, run_dir: Path, sae: Any, record: dict[str, Any]) -> None:
    """`results/<model>/corrsteer/<task>/features.md`: the ranked features, which were kept and
    chosen, with their feature cards where the SAE has them."""
    from harness.manifest import write_text
    from harness.sae.cards import cards_markdown

    chosen = {e["feature"] for e in record["chosen"]}
    lines = [
        f"# CorrSteer on {config.task}: features ranked by correlation with correctness",
        "",
        f"Layer {record['layer']} of {record['sae']}; base validation score {record['base_validation']:.3f}; "
        f"steered at the {'generated tokens' if record['positions'] == 'generated' else 'answer position'}. "
        f"Generated by `crl-bench train corrsteer` from `{run_dir / 'selection.json'}`.",
        "",
        "| feature | correlation | coefficient | validation alone | kept | chosen |",
        "|---:|---:|---:|---:|:-:|:-:|",
    ]
    for e in record["ranked"]:
        lines.append(
            f"| {e['feature']} | {e['correlation']:.3f} | {e['coefficient']:.2f} | {e['validation']:.3f} | "
            f"{'yes' if e['feature'] in record['kept'] else ''} | {'yes' if e['feature'] in chosen else ''} |"
        )
    lines += ["", *cards_markdown(sae.directory, [e["feature"] for e in record["ranked"]])]
    out = config.model_results / "corrsteer" / config.task / "features.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, "\n".join(lines))
