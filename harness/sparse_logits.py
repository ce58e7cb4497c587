"""Compute logits only at the positions that are scored.

With a 262k-token vocabulary, the unembedding of every position (and a log-softmax over
it) dominates the time and memory of multiple-choice evaluation. `logits_at(model, index)`
gathers the final hidden states at `index` just before the output embedding, so the model's
own head (including any final soft-capping it applies afterwards) runs on K positions per
row instead of the whole sequence. Works for any Hugging Face causal LM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def _head_input(model: nn.Module, select) -> Iterator[None]:
    """Inside the block, the output embedding sees `select(hidden)` instead of the final hidden states."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding to restrict")
    handle = head.register_forward_pre_hook(lambda module, args: (select(args[0]), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def logits_at(model: nn.Module, index: Tensor):
    """Inside the block, `model(...).logits` has shape [B, K, V] for `index` Long[B, K]."""

    def select(hidden: Tensor) -> Tensor:  # Float[B, T, D] -> Float[B, K, D]
        return torch.gather(hidden, 1, index.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1]))

    return _head_input(model, select)


def logits_at_pairs(model: nn.Module, rows: Tensor, positions: Tensor):
    """Inside the block, `model(...).logits` has shape [1, N, V]: the logits at the N (row,
    position) pairs `rows`, `positions` (Long[N] each), in that order. Padding positions of a
    ragged batch are left out instead of unembedded (`logits_at` keeps K per row)."""
    return _head_input(model, lambda hidden: hidden[rows.to(hidden.device), positions.to(hidden.device)][None])
