"""Feature cards: what each SAE feature reads and writes.

For every feature of an SAE (`feature_cards.json` next to it):

- `contexts`: the top-activating token windows on held-out text, each a list of token
  strings with the activating token's index (`mark`) and the activation;
- `promoted` / `suppressed`: the output tokens whose logits the feature's decoder
  direction raises / lowers most, read through the model's final norm and unembedding
  (the "logit lens" of the direction: the norm's per-dimension gain applies, the overall
  RMS scale does not change the ranking);
- `neighbours`: the nearest features by decoder cosine (the feature distance of the
  dictionary-learning work), with their cosines;
- `frequency` (share of held-out tokens where it fires) and `mean_activation` when active.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CARDS = "feature_cards.json"


class FeatureScan:
    """Streaming top-k activations per feature over held-out blocks.

    Keeps, per feature, the `top` largest activations with their (block, position); also
    counts how often each feature fires and sums its activations.
    """

    def __init__(self, d_sae: int, top: int = 8):
        self.top = top
        self.values = torch.full((top, d_sae), float("-inf"))
        self.where = torch.zeros((top, d_sae), dtype=torch.long)  # flat index block * T + pos
        self.fires = torch.zeros(d_sae, dtype=torch.long)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.tokens = 0

    def update(self, feats: Tensor, block_offset: int, mask: Tensor) -> None:
        """feats: Float[B, T, d_sae] activations; mask: Bool[B, T] positions that count."""
        B, T, d_sae = feats.shape
        flat = feats.float().reshape(B * T, d_sae)
        keep = mask.reshape(-1)
        flat = torch.where(keep[:, None], flat, torch.zeros((), dtype=flat.dtype))
        active = flat > 0
        self.fires += active.sum(0)
        self.total += flat.sum(0, dtype=torch.float64)
        self.tokens += int(keep.sum())
        k = min(self.top, flat.shape[0])
        values, rows = flat.topk(k, dim=0)  # [k, d_sae]
        where = rows + block_offset * T
        merged_v = torch.cat([self.values, values])
        merged_w = torch.cat([self.where, where])
        best = merged_v.topk(self.top, dim=0).indices
        self.values = merged_v.gather(0, best)
        self.where = merged_w.gather(0, best)

    @property
    def frequency(self) -> Tensor:
        return self.fires.double() / max(self.tokens, 1)

    @property
    def dead(self) -> Tensor:
        return self.fires == 0


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied before the unembedding (Gemma/Llama `model.norm`, GPT-2 `transformer.ln_f`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in (
        "model.norm",
        "model.final_layernorm",
        "transformer.ln_f",
        "gpt_neox.final_layer_norm",
        "model.decoder.final_layer_norm",
    ):
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None:
            return module
    return None


@torch.no_grad()
def logit_effects(
    model: nn.Module, directions: Tensor, top: int = 10, chunk: int = 256
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For Float[F, d_model] directions: (promoted ids, promoted logits, suppressed ids,
    suppressed logits), each [F, top]."""
    norm = final_norm(model)
    head = model.get_output_embeddings()
    outs = [[], [], [], []]
    for start in range(0, directions.shape[0], chunk):
        d = directions[start : start + chunk].to(head.weight.dtype)
        if norm is not None:
            d = norm(d)
        logits = head(d).float()
        up = logits.topk(top, dim=-1)
        down = (-logits).topk(top, dim=-1)
        for out, t in zip(outs, (up.indices, up.values, down.indices, -down.values)):
            out.append(t)
    return tuple(torch.cat(o) for o in outs)  # type: ignore[return-value]


@torch.no_grad()
def neighbours(directions: Tensor, top: int = 5, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """(ids, cosines), each [F, top]: nearest other features by decoder cosine."""
    unit = torch.nn.functional.normalize(directions.float(), dim=-1)
    ids, cos = [], []
    for start in range(0, unit.shape[0], chunk):
        sims = unit[start : start + chunk] @ unit.T
        rows = torch.arange(start, min(start + chunk, unit.shape[0]))
        sims[torch.arange(len(rows)), rows] = -2.0  # not yourself
        best = sims.topk(top, dim=-1)
        ids.append(best.indices)
        cos.append(best.values)
    return torch.cat(ids), torch.cat(cos)


def _token(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


def build_cards(
    model: nn.Module,
    tokenizer,
    directions: Tensor,
    scan: FeatureScan,
    blocks: Tensor,
    window: tuple[int, int] = (12, 3),
    top_tokens: int = 10,
) -> list[dict[str, Any]]:
    """One card per feature (see the module docstring). `blocks`: the Long[N, T] token blocks scanned."""
    n_blocks, T = blocks.shape
    up_ids, up_val, down_ids, down_val = logit_effects(model, directions, top=top_tokens)
    nb_ids, nb_cos = neighbours(directions)
    freq = scan.frequency
    mean_act = scan.total / scan.fires.clamp(min=1).double()
    vocab_cache: dict[int, str] = {}

    def tok(i: int) -> str:
        if i not in vocab_cache:
            vocab_cache[i] = _token(tokenizer, i)
        return vocab_cache[i]

    cards = []
    for f in range(directions.shape[0]):
        contexts = []
        for value, where in zip(scan.values[:, f].tolist(), scan.where[:, f].tolist()):
            if value <= 0 or value == float("-inf"):
                continue
            block, pos = divmod(where, T)
            lo, hi = max(1, pos - window[0]), min(T, pos + window[1] + 1)  # skip BOS
            ids = blocks[block, lo:hi].tolist()
            contexts.append({"tokens": [tok(i) for i in ids], "mark": pos - lo, "activation": round(value, 4)})
        cards.append(
            {
                "feature": f,
                "frequency": round(float(freq[f]), 6),
                "mean_activation": round(float(mean_act[f]), 4),
                "contexts": contexts,
                "promoted": [[tok(i), round(v, 3)] for i, v in zip(up_ids[f].tolist(), up_val[f].tolist())],
                "suppressed": [[tok(i), round(v, 3)] for i, v in zip(down_ids[f].tolist(), down_val[f].tolist())],
                "neighbours": [[i, round(c, 4)] for i, c in zip(nb_ids[f].tolist(), nb_cos[f].tolist())],
            }
        )
    return cards


def write_cards(path: Path, header: dict[str, Any], cards: list[dict[str, Any]]) -> None:
    from harness.manifest import write_json

    write_json(path, {**header, "cards": cards})


def read_cards(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CARDS
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `crl-bench sae eval` for this SAE first")
    return json.loads(path.read_text())


def render_card(card: dict[str, Any], contexts: int = 3) -> str:
    """A card as a few lines of Markdown: contexts with the activating token in **bold**."""
    lines = [
        f"**feature {card['feature']}** (fires on {card['frequency']:.2%} of tokens, "
        f"mean activation {card['mean_activation']:.3g})"
    ]
    for ctx in card["contexts"][:contexts]:
        toks = [t.replace("\n", "⏎").replace("|", "\\|") for t in ctx["tokens"]]
        toks[ctx["mark"]] = f"**{toks[ctx['mark']]}**"
        lines.append(f"- `{ctx['activation']:.3g}` " + "".join(toks))
    promoted = ", ".join(repr(t) for t, _ in card["promoted"][:6]).replace("|", "\\|")
    suppressed = ", ".join(repr(t) for t, _ in card["suppressed"][:6]).replace("|", "\\|")
    lines.append(f"- promotes: {promoted}")
    lines.append(f"- suppresses: {suppressed}")
    lines.append("- nearest: " + ", ".join(f"{i} ({c:.2f})" for i, c in card["neighbours"][:3]))
    return "\n".join(lines)


def cards_markdown(directory: Path | None, features: list[int]) -> list[str]:
    """A "Feature cards" section (Markdown lines) for `features` of the SAE in `directory`, each
    card or a note that the SAE has none for it."""
    try:
        cards = {c["feature"]: c for c in read_cards(directory)["cards"]} if directory is not None else {}
    except (FileNotFoundError, KeyError, TypeError):
        cards = {}
    lines = ["## Feature cards", ""]
    for feature in features:
        card = cards.get(feature)
        lines += [f"### feature {feature}", "", render_card(card) if card else "(no card for this feature)", ""]
    return lines
