"""Contrastive prompts and the activations the fitters read.

`task_contrast` builds the contrast of any task; which one depends on the task:

- **toy_sentiment** (`sentiment_contrast`): the label contrast read at the sentiment adjective.
- **binary label** (multiple-choice tasks whose two choices are the same one-token answers for
  every item, e.g. boolq " no"/" yes", sst2): the label contrast read at the answer position
  (the prompt's last token); items of opposite label are paired in a seeded order. The
  prediction is the logit difference of the two answers, so DAS and patching apply.
- **correctness** (every other multiple-choice task, e.g. arith_mc, arc_easy): each training
  item gives two sequences, prompt + target delimiter + the correct choice (class 1) and
  prompt + the same delimiter + one incorrect choice drawn with the seed (class 0), read at
  the completion's last token; the two sequences of an item are a pair.
- **correctness, generation** (generate_until tasks, e.g. arith_gen, gsm8k): prompt + the gold
  target (class 1) against prompt + the gold target with its last number changed by a
  seeded non-zero offset (class 0), read at the last token.

Prompts are zero-shot `doc_to_text` (the few-shot examples lm-eval adds at evaluation are
left out: the directions are read from the item itself).

The sentiment task (`toy_sentiment`, in the ToyMovieReview style of Tigges et al.): prompts
are the task's own `doc_to_text`, the classes are its labels (1 = positive), activations are
read at the sentiment adjective (the row's `adjective_start`, mapped to its token), and the
opposite-label reviews of a `pair_id` are the pairs that DAS and directional patching use.
The prediction is the logit difference " positive" - " negative" at the answer position.

All model calls go through `harness.steering` (left padding; positions are indices within
each unpadded prompt, BOS included).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from harness.activations import residuals
from harness.padding import batch
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
    class_tokens: tuple[int, int] | None  # token ids of the class-0 and class-1 answers, when one-token
    kind: str = "label"  # label (read where the answer is predicted) | correctness (read after the completion)

    def __len__(self) -> int:
        return len(self.prompts)

    def head(self, n: int | None) -> "Contrast":
        """The first `n` items (all when n is None)."""
        if n is None:
            return self
        return Contrast(
            self.task,
            self.split,
            self.prompts[:n],
            self.labels[:n],
            self.read_positions[:n],
            self.pair_ids[:n],
            self.class_tokens,
            self.kind,
        )

    @property
    def has_readout(self) -> bool:
        """Whether the model's prediction at the read-out is a two-answer logit difference
        (what DAS and directional patching need)."""
        return self.class_tokens is not None

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
        raise ValueError(
            f"answer {text!r} is {len(ids)} tokens for this tokenizer; the contrast needs one-token answers"
        )
    return ids[0]


def sentiment_contrast(
    tokenizer, split: str = "train", task_name: str = "toy_sentiment", docs: Sequence[dict] | None = None
) -> Contrast:
    from harness.tasks import load_task

    task = load_task(task_name)
    docs = list(task.dataset[split]) if docs is None else list(docs)
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
        task=task_name,
        split=split,
        prompts=prompts,
        labels=torch.tensor([int(d["label"]) for d in docs]),
        read_positions=torch.tensor(positions),
        pair_ids=torch.tensor([int(d["pair_id"]) for d in docs]),
        class_tokens=(
            _single_token(tokenizer, delimiter + choices[0]),
            _single_token(tokenizer, delimiter + choices[1]),
        ),
    )


def _last_token(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"]) - 1


def binary_choices(task: Any, doc: dict) -> tuple[str, str] | None:
    """The two answers (with the target delimiter) when every item of `task` shares them."""
    if task.OUTPUT_TYPE != "multiple_choice" or not isinstance(task.config.doc_to_choice, list):
        return None
    choices = task.doc_to_choice(doc)
    if len(choices) != 2:
        return None
    return tuple(task.config.target_delimiter + c for c in choices)


def _perturb_last_number(text: str, rng: random.Random) -> str:
    matches = list(re.finditer(r"-?\d+", text))
    if not matches:
        raise ValueError(f"the target {text!r} has no number to perturb for the correctness contrast")
    last = matches[-1]
    offset = rng.choice([d for d in range(-9, 10) if d])
    return text[: last.start()] + str(int(last.group()) + offset) + text[last.end() :]


def task_contrast(tokenizer, task: Any, docs: Sequence[dict], split: str, seed: int = 0) -> Contrast:
    """The contrast of `docs` (documents of lm-eval Task `task`); see the module docstring."""
    name = task.config.task
    docs = list(docs)
    if not docs:
        raise ValueError(f"no {split} documents of {name} to build a contrast from")
    if name == "toy_sentiment" or {"adjective_start", "pair_id"} <= set(docs[0]):
        return sentiment_contrast(tokenizer, split, name, docs)
    rng = random.Random(f"{seed}:{name}:{split}")
    answers = binary_choices(task, docs[0])
    if answers is not None and all(len(tokenizer(a, add_special_tokens=False)["input_ids"]) == 1 for a in answers):
        prompts = [task.doc_to_text(d) for d in docs]
        labels = [_target_index(task, d) for d in docs]
        by_label = {0: [i for i, y in enumerate(labels) if y == 0], 1: [i for i, y in enumerate(labels) if y == 1]}
        for group in by_label.values():
            rng.shuffle(group)
        pair_ids = [-1] * len(docs)
        for pid, (i, j) in enumerate(zip(by_label[0], by_label[1])):
            pair_ids[i] = pair_ids[j] = pid
        return Contrast(
            name,
            split,
            prompts,
            torch.tensor(labels),
            torch.tensor([_last_token(tokenizer, p) for p in prompts]),
            torch.tensor(pair_ids),
            tuple(_single_token(tokenizer, a) for a in answers),
            kind="label",
        )
    prompts, labels, pair_ids = [], [], []
    for index, doc in enumerate(docs):
        prompt = task.doc_to_text(doc)
        delimiter = task.config.target_delimiter
        if task.OUTPUT_TYPE == "multiple_choice":
            choices = task.doc_to_choice(doc)
            gold = _target_index(task, doc)
            wrong = rng.choice([i for i in range(len(choices)) if i != gold])
            good, bad = choices[gold], choices[wrong]
        elif task.OUTPUT_TYPE == "generate_until":
            target = task.doc_to_target(doc)
            good = target if isinstance(target, str) else str(target)
            bad = _perturb_last_number(good, rng)
        else:
            raise ValueError(
                f"task {name!r} has output_type {task.OUTPUT_TYPE!r}; contrasts exist for "
                "multiple_choice and generate_until tasks"
            )
        for label, completion in ((1, good), (0, bad)):
            prompts.append(prompt + delimiter + completion)
            labels.append(label)
            pair_ids.append(index)
    return Contrast(
        name,
        split,
        prompts,
        torch.tensor(labels),
        torch.tensor([_last_token(tokenizer, p) for p in prompts]),
        torch.tensor(pair_ids),
        None,
        kind="correctness",
    )


def _target_index(task: Any, doc: dict) -> int:
    target = task.doc_to_target(doc)
    return target if isinstance(target, int) else task.doc_to_choice(doc).index(target)


def _padded(positions: Tensor, mask: Tensor) -> Tensor:
    """Index in the left-padded tensor of each row's unpadded position."""
    return positions.to(mask.device) + (mask.shape[1] - mask.sum(-1))


@torch.no_grad()
def collect(
    model: nn.Module,
    tokenizer,
    contrast: Contrast,
    layers: Sequence[int],
    batch_size: int = 32,
    indices: Tensor | None = None,
) -> Tensor:
    """Float[N, len(layers), D] (fp32) residual stream at each item's read position."""
    device = next(model.parameters()).device
    indices = torch.arange(len(contrast)) if indices is None else indices
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        ids, mask = batch(tokenizer, [contrast.prompts[i] for i in idx], device)
        acts = residuals(model, ids, mask, layers=layers)
        rows = torch.arange(len(idx), device=device)
        where = _padded(contrast.read_positions[idx], mask)
        out.append(torch.stack([acts[layer][rows, where] for layer in layers], dim=1).float().cpu())
    return torch.cat(out)


def logit_diff(
    model: nn.Module,
    tokenizer,
    contrast: Contrast,
    indices: Tensor,
    interventions: Sequence[Intervention] = (),
    grad: bool = False,
) -> Tensor:
    """Float[n]: logit(positive answer) - logit(negative answer) at the answer position."""
    device = next(model.parameters()).device
    ids, mask = batch(tokenizer, [contrast.prompts[i] for i in indices], device)
    if contrast.class_tokens is None:
        raise ValueError(f"the {contrast.kind} contrast of {contrast.task} has no two-answer readout")
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
