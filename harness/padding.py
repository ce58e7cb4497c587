"""Left-padded token batches: what every forward pass over several prompts starts from."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor


def batch(tokenizer, prompts: Sequence[str], device) -> tuple[Tensor, Tensor]:
    """Left-padded (input_ids, attention_mask)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)
