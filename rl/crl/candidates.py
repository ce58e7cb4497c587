"""Which SAE features a CRL controller may choose among (`--candidates`), picked before
training and without labels (`--candidate-rule`):

- `attribution` (one-token multiple-choice tasks): the features that move the choices' logits
  apart most, to first order through the rest of the network;
- `frequency`: the features that fire most often on the task's prompts.

`auto` is `attribution` for one-token tasks and `frequency` otherwise.

Two more rules for generation tasks (`likelihood`: features that can change the greedy
completion; `gold`: features that raise the training solutions' tokens) were tried for CRL
setting 3 and did not help; they were retired (their findings: docs/notebook.md)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch


@contextmanager
def _block_output(block: Any) -> Iterator[dict[str, torch.Tensor]]:
    """While open, the yielded dict's "h" is `block`'s latest output (the residual after it),
    still in the autograd graph."""
    captured: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = block.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def choice_attribution(
    model: Any,
    tokenizer: Any,
    problem: Any,
    layer: int,
    directions: torch.Tensor,
    scale: torch.Tensor,
    n_prompts: int = 32,
    batch_size: int = 8,
) -> torch.Tensor:
    """Float[d_sae]: how far each feature, added at its typical activation at the answer
    position of `layer`, moves the choices' logits apart, to first order through the whole
    rest of the network: per prompt, the gradients g_c of each choice's logit with respect to
    the residual, then the spread over choices of g_c . (scale_f W_dec[f]), averaged over
    prompts. Uses no labels (the gold answer is never read)."""
    from harness.models import find_decoder_layers
    from harness.padding import batch
    from harness.sparse_logits import logits_at

    _, blocks = find_decoder_layers(model)
    device = next(model.parameters()).device
    weighted = (directions.float() * scale.float()[:, None]).to(device)
    total = torch.zeros(directions.shape[0], dtype=torch.float64)
    docs = list(range(min(n_prompts, len(problem.prompts))))
    with _block_output(blocks[layer]) as captured:
        for start in range(0, len(docs), batch_size):
            chunk = docs[start : start + batch_size]
            ids, mask = batch(tokenizer, [problem.prompts[d] for d in chunk], device)
            last = torch.full((len(chunk), 1), ids.shape[1] - 1, dtype=torch.long, device=device)
            with torch.enable_grad(), logits_at(model, last):
                embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits[:, -1]
                tokens = [problem.choice_tokens[d] for d in chunk]
                groups = (
                    [list(range(len(chunk)))]
                    if len({len(t) for t in tokens}) == 1
                    else [[r] for r in range(len(chunk))]
                )
                for rows in groups:  # rows are independent: one backward per choice serves them all
                    grads = torch.stack(
                        [
                            torch.autograd.grad(
                                sum(logits[r, tokens[r][c]] for r in rows), captured["h"], retain_graph=True
                            )[0][rows, -1]
                            for c in range(len(tokens[rows[0]]))
                        ],
                        1,
                    ).float()  # [R, C, D]
                    total += (grads @ weighted.T).std(1).sum(0).double().cpu()
    return (total / max(1, len(docs))).float()


def choose_candidates(
    model: Any,
    tokenizer: Any,
    sae: Any,
    problem: Any,
    scale: torch.Tensor,
    counts: torch.Tensor,
    n: int,
    rule: str = "auto",
) -> torch.Tensor:
    """Long[n]: the SAE features the controller may add at one layer (all when `n <= 0`),
    the top `n` under `rule` (see the module docstring)."""
    d_sae = scale.shape[0]
    if n <= 0 or n >= d_sae:
        return torch.arange(d_sae)
    if rule == "auto":
        rule = "attribution" if problem.kind == "one-token-choices" else "frequency"
    if rule == "attribution":
        if problem.kind != "one-token-choices":
            raise ValueError("--candidate-rule attribution needs a one-token multiple-choice task; use frequency")
        score = choice_attribution(model, tokenizer, problem, sae.layer, sae.directions(), scale)
    else:
        score = counts.float()
    return score.topk(n).indices.sort().values
