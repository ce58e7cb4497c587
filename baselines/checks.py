"""The causal checks of Tigges et al. on the sentiment task, for directions at a layer.

- `directional_patching`: for each opposite-label pair, the base prompt's component along
  u at the read position (the adjective) is replaced by the source prompt's; of the base
  prompts whose clean prediction (sign of the logit difference) is not already the
  source's label, the share whose prediction flips to it (so a random direction scores ~0).
- `directional_ablation`: the component along u is replaced by its training-set mean at
  every non-BOS position (mean ablation); accuracy and mean |logit difference|, to
  compare with the same for a random direction.
- `activation_addition`: adding coef * gap * u at every non-BOS position, where gap is the
  class-mean gap along u on the training set; the mean logit difference as coef varies
  (negative coefficients should push towards "negative").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from baselines.contrast import Contrast, at_positions, collect, logit_diff
from baselines.das import interchange
from harness.steering import PolicyIntervention, StepContext


def random_direction(d_model: int, seed: int = 0) -> Tensor:
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield torch.arange(start, min(n, start + size))


@torch.no_grad()
def directional_patching(
    model: nn.Module,
    tokenizer,
    test: Contrast,
    layer: int,
    u: Tensor,
    source_acts: Tensor | None = None,
    batch_size: int = 32,
    clean_predictions: Tensor | None = None,
) -> float:
    """Of base prompts not already predicting the source's label, the share that flips to it."""
    pairs = test.pairs()
    base = torch.cat([pairs[:, 0], pairs[:, 1]])
    source = torch.cat([pairs[:, 1], pairs[:, 0]])
    if source_acts is None:
        source_acts = collect(model, tokenizer, test, [layer])[:, 0]
    if clean_predictions is None:
        clean_predictions = predictions(model, tokenizer, test, batch_size)
    eligible = clean_predictions[base] != test.labels[source]
    base, source = base[eligible], source[eligible]
    if len(base) == 0:
        return float("nan")
    flipped = 0
    for chunk in _batches(len(base), batch_size):
        b, s = base[chunk], source[chunk]
        h_src = source_acts[s]
        patch = at_positions(
            layer,
            test.read_positions[b],
            lambda h, rows: interchange(h.float(), h_src[rows.cpu()].to(h.device), u.to(h.device)),
        )
        diff = logit_diff(model, tokenizer, test, b, [patch])
        flipped += int(((diff > 0).long().cpu() == test.labels[s]).sum())
    return flipped / len(base)


@torch.no_grad()
def predictions(model: nn.Module, tokenizer, contrast: Contrast, batch_size: int = 32) -> Tensor:
    """Long[N]: the clean predicted label (1 = positive) of every prompt."""
    return torch.cat(
        [(logit_diff(model, tokenizer, contrast, idx) > 0).long().cpu() for idx in _batches(len(contrast), batch_size)]
    )


def _project_out(layer: int, u: Tensor, mean_projection: float) -> PolicyIntervention:
    def policy(hidden: Tensor, ctx: StepContext) -> Tensor:
        direction = u.to(hidden.device, torch.float32)
        proj = hidden.float() @ direction
        keep = (ctx.positions > 0).float()
        return ((mean_projection - proj) * keep)[..., None] * direction

    return PolicyIntervention(policy, [layer])


def _add(layer: int, vector: Tensor) -> PolicyIntervention:
    def policy(hidden: Tensor, ctx: StepContext) -> Tensor:
        keep = (ctx.positions > 0)[..., None].float()
        return keep * vector.to(hidden.device, torch.float32)

    return PolicyIntervention(policy, [layer])


@torch.no_grad()
def directional_ablation(
    model: nn.Module, tokenizer, test: Contrast, layer: int, u: Tensor, mean_projection: float, batch_size: int = 32
) -> dict[str, float]:
    diffs = torch.cat(
        [
            logit_diff(model, tokenizer, test, idx, [_project_out(layer, u, mean_projection)])
            for idx in _batches(len(test), batch_size)
        ]
    ).cpu()
    return {
        "accuracy": float(((diffs > 0).long() == test.labels).float().mean()),
        "mean_abs_logit_diff": float(diffs.abs().mean()),
        "signed_logit_diff": float((diffs * (2 * test.labels - 1)).mean()),
    }


@torch.no_grad()
def clean_scores(model: nn.Module, tokenizer, test: Contrast, batch_size: int = 32) -> dict[str, float]:
    diffs = torch.cat([logit_diff(model, tokenizer, test, idx) for idx in _batches(len(test), batch_size)]).cpu()
    return {
        "accuracy": float(((diffs > 0).long() == test.labels).float().mean()),
        "mean_abs_logit_diff": float(diffs.abs().mean()),
        "signed_logit_diff": float((diffs * (2 * test.labels - 1)).mean()),
        "mean_logit_diff": float(diffs.mean()),
    }


@torch.no_grad()
def activation_addition(
    model: nn.Module,
    tokenizer,
    test: Contrast,
    layer: int,
    u: Tensor,
    gap: float,
    coefficients: list[float],
    batch_size: int = 32,
) -> dict[float, float]:
    """{coef: mean logit difference (positive - negative) over the test prompts}."""
    out = {}
    for coef in coefficients:
        vector = u * (coef * gap)
        diffs = torch.cat(
            [logit_diff(model, tokenizer, test, idx, [_add(layer, vector)]) for idx in _batches(len(test), batch_size)]
        )
        out[coef] = float(diffs.mean())
    return out


def mean_projection(model: nn.Module, tokenizer, train: Contrast, layer: int, u: Tensor, limit: int = 256) -> float:
    """Mean projection on u of the residual stream at non-BOS positions of training prompts."""
    from harness.activations import residuals
    from harness.padding import batch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for idx in _batches(min(limit, len(train)), 32):
        ids, mask = batch(tokenizer, [train.prompts[i] for i in idx], device)
        h = residuals(model, ids, mask, layers=[layer])[layer].float()
        real = mask.bool().clone()
        real[torch.arange(len(idx)), (mask.shape[1] - mask.sum(-1))] = False  # BOS
        total += float((h @ u.to(device))[real].sum())
        count += int(real.sum())
    return total / count
