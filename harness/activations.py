"""Read the residual stream through the one steering mechanism.

`residuals()` records the output of chosen decoder layers for a batch (an intervention
that returns no delta) and, by default, stops the forward pass after the last of them:
reading layer 9 of an 18-layer model costs about half a forward pass and no logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from harness.steering import PolicyIntervention, StepContext, steer


class _Stop(Exception):
    """Raised inside the last hook to end the forward pass early."""


@torch.no_grad()
def residuals(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    layers: Sequence[int] = (0,),
    stop: bool = True,
) -> dict[int, Tensor]:
    """{layer: Float[B, T, d_model]} residual stream after each layer in `layers` (model dtype)."""
    wanted = sorted(set(layers))
    seen: dict[int, Tensor] = {}

    def record(hidden: Tensor, ctx: StepContext) -> None:
        seen[ctx.layer] = hidden.detach()
        if stop and len(seen) == len(wanted):
            raise _Stop
        return None

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with steer(model, [PolicyIntervention(record, wanted)]):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
    return seen


def token_residuals(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], layers: Sequence[int]
) -> dict[int, Tensor]:
    """Per layer, Float[n, D]: the residual after it at every real token of the prompts, each
    row's first token (BOS, whose norm is an outlier) left out."""
    from harness.padding import batch

    device = next(model.parameters()).device
    ids, mask = batch(tokenizer, list(prompts), device)
    with torch.no_grad():
        found = residuals(model, ids, mask, layers=layers)
    keep = mask.bool().clone()
    keep[torch.arange(len(ids)), mask.float().argmax(-1)] = False
    return {layer: found[layer][keep].float() for layer in layers}


def token_blocks(
    tokenizer, texts: Sequence[str], context_size: int, n_blocks: int, min_blocks: int | None = None
) -> Tensor:
    """Long[n, context_size] blocks of BOS + consecutive text tokens, as sae-lens trains on.

    Texts are tokenized without special tokens, concatenated, and cut into blocks of
    `context_size - 1` tokens, each prefixed with BOS. Returns up to `n_blocks` blocks;
    raises if the texts give fewer than `min_blocks` (default: `n_blocks`).
    """
    body = context_size - 1
    bos = tokenizer.bos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(stream) >= n_blocks * body:
            break
    available = len(stream) // body
    if available < (n_blocks if min_blocks is None else min_blocks):
        raise ValueError(
            f"the held-out text gives {available} blocks of {context_size} tokens but "
            f"{n_blocks if min_blocks is None else min_blocks} are needed; use a larger corpus or "
            f"fewer evaluation sequences"
        )
    n_blocks = min(n_blocks, available)
    blocks = torch.tensor(stream[: n_blocks * body], dtype=torch.long).view(n_blocks, body)
    if bos is None:
        return blocks
    return torch.cat([torch.full((n_blocks, 1), bos, dtype=torch.long), blocks], dim=1)
