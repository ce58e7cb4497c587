"""SAE quality on held-out text.

Metrics (the usual ones of the SAE literature, on tokens the SAE never trained on; the BOS
position is excluded everywhere, as in training):

- `l0`: mean number of active features per token;
- `fvu`: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2,
  and `explained_variance` = 1 - fvu (sae-lens's aggregate definition);
- `ce_loss_recovered`: (CE_zero - CE_sae) / (CE_zero - CE_clean), where CE_sae splices
  the reconstruction into the model at the SAE's layer and CE_zero zero-ablates that
  layer's output (both through `harness.steering`, at every non-BOS position);
  `ce_loss_delta` = CE_sae - CE_clean is reported too: zero-ablating a mid layer of a
  model with a large constant residual component is so destructive that CE recovered is
  easy to score well on, while the delta shows what splicing really costs;
- `dead_fraction`: features that never fire on the held-out tokens scanned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness.activations import residuals, token_blocks
from harness.config import Dtype, check_fields
from harness.models import DEFAULT_MODEL
from harness.sae.cards import FeatureScan
from harness.sae.provision import LoadedSAE
from harness.steering import PolicyIntervention, StepContext, steer


@dataclass
class SAEEvalConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local directory, or gemma-3-270m (embedded)"})
    sae: str = field(default="auto", metadata={"help": "sae-lens <release>/<id>, a local sae-lens directory, or auto"})
    layer: int | None = field(
        default=None, metadata={"help": "layer the SAE reads (default: the SAE's own, or the middle layer for auto)"}
    )
    sae_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "dtype the SAE is loaded and run in"}
    )
    eval_corpus: str | None = field(
        default=None,
        metadata={
            "help": "held-out text: default the SAE's training corpus if known, else builtin (an auto SAE that must "
            "be trained trains on this corpus)"
        },
    )
    sequences: int = field(
        default=512, metadata={"help": "held-out sequences scanned for L0, FVU, dead features and cards"}
    )
    ce_sequences: int = field(
        default=64, metadata={"help": "held-out sequences for the cross-entropy metrics (3 full forwards each)"}
    )
    context_size: int = field(default=128, metadata={"help": "tokens per held-out sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    dtype: Dtype = field(
        default="auto",
        metadata={"help": "model dtype; auto = bf16 on a CPU with native bf16 (AVX512-BF16, AMX), else fp32"},
    )
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)"})
    force: bool = field(default=False, metadata={"help": "recompute quality and cards even if present"})
    results_dir: str = field(default="results", metadata={"help": "where the quality table goes"})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.ce_sequences > self.sequences:
            raise ValueError(f"--ce-sequences ({self.ce_sequences}) cannot exceed --sequences ({self.sequences})")
        if min(self.sequences, self.ce_sequences, self.context_size, self.batch_size) < 1:
            raise ValueError("quality settings must be positive")


def _replace(fn):
    """Intervention that replaces the residual stream at non-BOS positions by fn(hidden)."""

    def policy(hidden: Tensor, ctx: StepContext) -> Tensor:
        keep = (ctx.positions > 0)[..., None].to(hidden.dtype)
        return (fn(hidden) - hidden) * keep

    return policy


@torch.no_grad()
def _next_token_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Summed next-token cross-entropy of a batch, row by row to keep full-vocab logits small."""
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    total = torch.zeros((), dtype=torch.float64)
    for row in range(ids.shape[0]):
        total += nn.functional.cross_entropy(logits[row, :-1].float(), ids[row, 1:], reduction="sum").double()
    return total


@torch.no_grad()
def measure(
    model: nn.Module, tokenizer, loaded: LoadedSAE, texts: list[str], config: SAEEvalConfig, scan_top: int = 8
) -> tuple[dict, FeatureScan, Tensor]:
    """(metrics, the feature scan for cards, the Long[N, T] held-out blocks)."""
    device = next(model.parameters()).device
    blocks = token_blocks(tokenizer, texts, config.context_size, config.sequences, min_blocks=config.ce_sequences)
    scan = FeatureScan(loaded.d_sae, top=scan_top)
    sse = 0.0
    sum_x = torch.zeros(loaded.sae.cfg.d_in, dtype=torch.float64)
    sum_sq = 0.0
    l0_total = 0.0
    n_tokens = 0
    layer = loaded.layer
    for start in tqdm(range(0, len(blocks), config.batch_size), desc="SAE quality: scan", unit="batch"):
        ids = blocks[start : start + config.batch_size].to(device)
        x = residuals(model, ids, layers=[layer])[layer].float()
        feats = loaded.encode(x).float()
        recon = loaded.decode(feats).float()
        mask = torch.ones(ids.shape, dtype=torch.bool)
        mask[:, 0] = False  # BOS
        xs, rs = x[:, 1:].reshape(-1, x.shape[-1]).cpu(), recon[:, 1:].reshape(-1, x.shape[-1]).cpu()
        sse += float(((xs - rs) ** 2).sum(dtype=torch.float64))
        sum_x += xs.sum(0, dtype=torch.float64)
        sum_sq += float((xs.double() ** 2).sum())
        l0_total += float((feats[:, 1:] > 0).sum())
        n_tokens += xs.shape[0]
        scan.update(feats.cpu(), start, mask)
    sst = sum_sq - float((sum_x**2).sum()) / n_tokens
    fvu = sse / sst

    clean = spliced = zero = 0.0
    ce_tokens = 0
    ce_blocks = blocks[: config.ce_sequences]
    splice = PolicyIntervention(_replace(lambda h: loaded.decode(loaded.encode(h), dtype=h.dtype)), [layer])
    ablate = PolicyIntervention(_replace(torch.zeros_like), [layer])
    for start in tqdm(range(0, len(ce_blocks), config.batch_size), desc="SAE quality: CE loss", unit="batch"):
        ids = ce_blocks[start : start + config.batch_size].to(device)
        clean += float(_next_token_loss(model, ids))
        with steer(model, [splice]):
            spliced += float(_next_token_loss(model, ids))
        with steer(model, [ablate]):
            zero += float(_next_token_loss(model, ids))
        ce_tokens += ids.shape[0] * (ids.shape[1] - 1)
    ce_clean, ce_sae, ce_zero = clean / ce_tokens, spliced / ce_tokens, zero / ce_tokens
    recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else math.nan
    metrics = {
        "l0": round(l0_total / n_tokens, 3),
        "fvu": round(fvu, 6),
        "explained_variance": round(1 - fvu, 6),
        "ce_loss_clean": round(ce_clean, 6),
        "ce_loss_sae": round(ce_sae, 6),
        "ce_loss_zero_ablation": round(ce_zero, 6),
        "ce_loss_recovered": round(recovered, 6),
        "ce_loss_delta": round(ce_sae - ce_clean, 6),
        "dead_fraction": round(float(scan.dead.double().mean()), 6),
        "eval_tokens": n_tokens,
        "ce_eval_tokens": ce_tokens,
    }
    return metrics, scan, blocks
