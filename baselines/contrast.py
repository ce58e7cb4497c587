"""Contrastive prompts and the activations the fitters read.

The sentiment task (`toy_sentiment`, in the ToyMovieReview style of Tigges et al.): prompts
are the task's own `doc_to_text`, the classes are its labels (1 = positive), activations are
read at the sentiment adjective (the row's `adjective_start`, mapped to its token), and the
opposite-label reviews of a `pair_id` are the pairs that DAS and directional patching use.
The prediction is the logit difference " positive" - " negative" at the answer position.

All model calls go through `harness.steering` (left padding; positions are indices within
each unpadded prompt, BOS included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.activations import residuals
from harness.sparse_logits import logits_at
from harness.steering import Intervention, PolicyIntervention, StepContext, steer


@dataclass
class Contrast:
    task: str
    split: str
    prompts: list[str]
    labels: Tensor  # Long[N]: 1 = positive class
    read_positions: Tensor  # Long[N]: token index (BOS = 0) where activations are read
    pair_ids: Tensor  # Long[N]: items sharing an id are an opposite-label pair (-1: none)
    class_tokens: tuple[int, int]  # token ids of the negative and positive answers

    def __len__(self) -> int:
        return len(self.prompts)

    def head(self, n: int | None) -> "Contrast":
        """The first `n` items (all when n is None)."""
        if n is None:
            return self
        return Contrast(self.task, self.split, self.prompts[:n], self.labels[:n], self.read_positions[:n],
                        self.pair_ids[:n], self.class_tokens)

    def pairs(self) -> Tensor:
        """Long[P, 2]: (positive index, negative index) of each complete pair."""
        by_id: dict[int, dict[int, int]] = {}
        for i, (pid, label) in enumerate(zip(self.pair_ids.tolist(), self.labels.tolist())):
            if pid >= 0:
                by_id.setdefault(pid, {})[label] = i
        return torch.tensor([[p[1], p[0]] for p in by_id.values() if len(p) == 2], dtype=torch.long)


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"answer {text!r} is {len(ids)} tokens for this tokenizer; the contrast needs one-token answers")
    return ids[0]


def sentiment_contrast(tokenizer, split: str = "train", task_name: str = "toy_sentiment") -> Contrast:
    from harness.tasks import load_task

    task = load_task(task_name)
    docs = list(task.dataset[split])
    prompts, positions = [], []
    for doc in docs:
        prompt = task.doc_to_text(doc)
        char = prompt.index(doc["review"]) + doc["adjective_start"]
        offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
        hits = [i for i, (s, e) in enumerate(offsets) if s <= char < e and e > s]
        if not hits:
            raise ValueError(f"no token covers the adjective of {prompt!r} at character {char}")
        prompts.append(prompt)
        positions.append(hits[0])
    choices = task.doc_to_choice(docs[0])
    delimiter = task.config.target_delimiter
    return Contrast(
        task=task_name, split=split, prompts=prompts,
        labels=torch.tensor([int(d["label"]) for d in docs]),
        read_positions=torch.tensor(positions),
        pair_ids=torch.tensor([int(d["pair_id"]) for d in docs]),
        class_tokens=(_single_token(tokenizer, delimiter + choices[0]), _single_token(tokenizer, delimiter + choices[1])),
    )


def batch(tokenizer, prompts: Sequence[str], device) -> tuple[Tensor, Tensor]:
    """Left-padded (input_ids, attention_mask)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _padded(positions: Tensor, mask: Tensor) -> Tensor:
    """Index in the left-padded tensor of each row's unpadded position."""
    return positions.to(mask.device) + (mask.shape[1] - mask.sum(-1))


@torch.no_grad()
def collect(model: nn.Module, tokenizer, contrast: Contrast, layers: Sequence[int], batch_size: int = 32,
            indices: Tensor | None = None) -> Tensor:
    """Float[N, len(layers), D] (fp32) residual stream at each item's read position."""
    device = next(model.parameters()).device
    indices = torch.arange(len(contrast)) if indices is None else indices
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        ids, mask = batch(tokenizer, [contrast.prompts[i] for i in idx], device)
        acts = residuals(model, ids, mask, layers=layers)
        rows = torch.arange(len(idx), device=device)
        where = _padded(contrast.read_positions[idx], mask)
        out.append(torch.stack([acts[layer][rows, where] for layer in layers], dim=1).float().cpu())
    return torch.cat(out)


def logit_diff(model: nn.Module, tokenizer, contrast: Contrast, indices: Tensor,
               interventions: Sequence[Intervention] = (), grad: bool = False) -> Tensor:
    """Float[n]: logit(positive answer) - logit(negative answer) at the answer position."""
    device = next(model.parameters()).device
    ids, mask = batch(tokenizer, [contrast.prompts[i] for i in indices], device)
    neg, pos = contrast.class_tokens
    # logits only at the (left-padded) last position, gathered contiguously: transformers'
    # `logits_to_keep=1` hands the unembedding a strided slice, and a bf16 matmul on a
    # non-contiguous input is ~1000x slower on CPU (60 s instead of 0.05 s per batch).
    last = torch.full((ids.shape[0], 1), ids.shape[1] - 1, dtype=torch.long, device=device)
    with torch.set_grad_enabled(grad), steer(model, list(interventions)), logits_at(model, last):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
    return (logits[:, pos] - logits[:, neg]).float()


def at_positions(layer: int, positions: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> PolicyIntervention:
    """Intervention replacing h at each row's `positions[row]` (unpadded index) by fn(h_rows, rows)."""

    def policy(hidden: Tensor, ctx: StepContext) -> Tensor:
        target = ctx.positions == positions.to(hidden.device)[:, None]  # Bool[B, T]
        rows, cols = target.nonzero(as_tuple=True)
        delta = torch.zeros_like(hidden)
        if len(rows):
            h = hidden[rows, cols]
            delta = delta.index_put((rows, cols), (fn(h, rows) - h).to(hidden.dtype))
        return delta

    return PolicyIntervention(policy, [layer])
