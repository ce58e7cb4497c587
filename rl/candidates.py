"""Which SAE features a CRL controller may choose among (`--candidates`), picked before
training and without labels (`--candidate-rule`):

- `attribution` (one-token multiple-choice tasks): the features that move the choices' logits
  apart most, to first order through the rest of the network;
- `likelihood` (generation tasks): the features that, added where the controller acts, lower
  the likelihood of the model's own greedy completion most, to first order: the ones that can
  change what is generated (confident tokens have saturated gradients, so the positions where
  the model hesitates dominate);
- `gold` (generation tasks): the features that, added where the model, fed the training
  documents' own worked solutions (the task's targets), predicts a token other than the
  solution's, most raise the solution's token over the model's, to first order: the ones
  that can fix what the model gets wrong. It reads the targets of training documents only
  (the data the reward is computed from), never a validation or test document;
- `frequency`: the features that fire most often on the task's prompts.

`auto` is `attribution` for one-token tasks and `frequency` otherwise. All but `gold` use no
labels."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

CANDIDATE_RULES = ("auto", "attribution", "likelihood", "gold", "frequency")


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


def choice_attribution(model: Any, tokenizer: Any, problem: Any, layer: int, directions: torch.Tensor,
                       scale: torch.Tensor, n_prompts: int = 32, batch_size: int = 8) -> torch.Tensor:
    """Float[d_sae]: how far each feature, added at its typical activation at the answer
    position of `layer`, moves the choices' logits apart, to first order through the whole
    rest of the network: per prompt, the gradients g_c of each choice's logit with respect to
    the residual, then the spread over choices of g_c . (scale_f W_dec[f]), averaged over
    prompts. Uses no labels (the gold answer is never read)."""
    from baselines.contrast import batch
    from harness.models import find_decoder_layers
    from harness.sparse_logits import logits_at

    _, blocks = find_decoder_layers(model)
    device = next(model.parameters()).device
    weighted = (directions.float() * scale.float()[:, None]).to(device)
    total = torch.zeros(directions.shape[0], dtype=torch.float64)
    docs = list(range(min(n_prompts, len(problem.prompts))))
    with _block_output(blocks[layer]) as captured:
        for start in range(0, len(docs), batch_size):
            chunk = docs[start:start + batch_size]
            ids, mask = batch(tokenizer, [problem.prompts[d] for d in chunk], device)
            last = torch.full((len(chunk), 1), ids.shape[1] - 1, dtype=torch.long, device=device)
            with torch.enable_grad(), logits_at(model, last):
                embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits[:, -1]
                tokens = [problem.choice_tokens[d] for d in chunk]
                groups = [list(range(len(chunk)))] if len({len(t) for t in tokens}) == 1 else [[r] for r in range(len(chunk))]
                for rows in groups:  # rows are independent: one backward per choice serves them all
                    grads = torch.stack([torch.autograd.grad(sum(logits[r, tokens[r][c]] for r in rows), captured["h"],
                                                             retain_graph=True)[0][rows, -1]
                                         for c in range(len(tokens[rows[0]]))], 1).float()  # [R, C, D]
                    total += (grads @ weighted.T).std(1).sum(0).double().cpu()
    return (total / max(1, len(docs))).float()


def _cut_at(tokenizer: Any, tokens: list[int], until: list[str]) -> int:
    """How many of `tokens` a generation keeps: up to and including the token that completes
    the first `until` string (as lm-eval's generate_until cuts), else all of them."""
    for k in range(1, len(tokens) + 1):
        if any(u in tokenizer.decode(tokens[:k]) for u in until):
            return k
    return len(tokens)


def likelihood_attribution(model: Any, tokenizer: Any, problem: Any, layer: int, directions: torch.Tensor,
                           scale: torch.Tensor, max_new_tokens: int, n_prompts: int = 16,
                           batch_size: int = 4) -> torch.Tensor:
    """Float[d_sae]: how far each feature, added at its typical activation at one of the
    positions a generation controller acts on (the prompt's last token and each generated
    token), lowers the log-likelihood of the model's own greedy completion, to first order:
    relu(-g_t . (scale_f W_dec[f])) with g_t the gradient of the completion's log-likelihood
    with respect to the residual at position t, averaged over positions and prompts. Uses no
    labels (the gold answer is never read)."""
    from baselines.contrast import batch
    from harness.models import find_decoder_layers
    from harness.sparse_logits import logits_at
    from tqdm.auto import tqdm

    _, blocks = find_decoder_layers(model)
    device = next(model.parameters()).device
    weighted = (directions.float() * scale.float()[:, None]).to(device)
    until = [u for u in (problem.task.config.generation_kwargs or {}).get("until", []) if u]
    total, positions = torch.zeros(directions.shape[0], dtype=torch.float64), 0
    prompts = problem.prompts[:n_prompts]
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"candidates (likelihood, layer {layer})",
                      unit="batch", leave=False):
        ids, mask = batch(tokenizer, prompts[start:start + batch_size], device)
        with torch.no_grad():
            sequences = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        generated = sequences[:, ids.shape[1]:]
        kept = [_cut_at(tokenizer, row.tolist(), until) for row in generated]
        full_mask = torch.cat([mask, torch.ones_like(generated)], 1)
        with _block_output(blocks[layer]) as captured, torch.enable_grad():
            embeds = model.get_input_embeddings()(sequences).detach().requires_grad_(True)
            acts_at = torch.arange(ids.shape[1] - 1, sequences.shape[1] - 1, device=device).expand(len(ids), -1)
            with logits_at(model, acts_at):  # the logits that predict each generated token
                logits = model(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False).logits
            acting = logits.float().log_softmax(-1)
            chosen = acting.gather(-1, generated[..., None])[..., 0]
            keep_mask = torch.arange(generated.shape[1], device=device)[None] < torch.tensor(kept, device=device)[:, None]
            grads = torch.autograd.grad((chosen * keep_mask).sum(), captured["h"])[0]
        at = grads[:, ids.shape[1] - 1:-1][keep_mask].float()  # [positions, D]
        total += torch.relu(-(at @ weighted.T)).sum(0).double().cpu()
        positions += int(keep_mask.sum())
    return (total / max(1, positions)).float()


def gold_attribution(model: Any, tokenizer: Any, problem: Any, layer: int, directions: torch.Tensor,
                     scale: torch.Tensor, n_prompts: int = 32, batch_size: int = 4) -> torch.Tensor:
    """Float[d_sae]: how far each feature, added at its typical activation at `layer`, raises
    the target's token over the model's own choice where the two differ, to first order:
    with each training prompt followed by its document's target (teacher forcing), at every
    target position whose argmax is not the target's token, relu(g_t . (scale_f W_dec[f]))
    with g_t the gradient of (target logit - argmax logit) with respect to the residual at
    that position, averaged over those positions. Reads the targets of `problem`'s documents
    (the training split's), nothing else."""
    from baselines.contrast import batch
    from harness.models import find_decoder_layers
    from harness.sparse_logits import logits_at
    from tqdm.auto import tqdm

    _, blocks = find_decoder_layers(model)
    device = next(model.parameters()).device
    weighted = (directions.float() * scale.float()[:, None]).to(device)
    task = problem.task
    delimiter = task.config.target_delimiter
    total, positions = torch.zeros(directions.shape[0], dtype=torch.float64), 0
    docs = list(range(min(n_prompts, len(problem.prompts))))
    for start in tqdm(range(0, len(docs), batch_size), desc=f"candidates (gold, layer {layer})", unit="batch",
                      leave=False):
        chunk = docs[start:start + batch_size]
        prompts = [problem.prompts[d] for d in chunk]
        targets = [task.doc_to_target(problem.docs[d]) for d in chunk]
        if not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"--candidate-rule gold needs the task's targets as text; {task.config.task} gives "
                             f"{type(targets[0]).__name__} (use likelihood or frequency)")
        ids, mask = batch(tokenizer, [p + delimiter + t for p, t in zip(prompts, targets)], device)
        prompt_lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
        pad = (mask.shape[1] - mask.sum(-1)).tolist()
        # the positions that predict each target token (left padding: the row's offset)
        starts = [pad[r] + prompt_lengths[r] - 1 for r in range(len(chunk))]
        width = max(ids.shape[1] - 1 - s for s in starts)
        index = torch.stack([torch.arange(s, s + width, device=device).clamp(max=ids.shape[1] - 2) for s in starts])
        valid = torch.stack([torch.arange(width, device=device) < ids.shape[1] - 1 - s for s in starts])
        following = torch.gather(ids, 1, (index + 1).clamp(max=ids.shape[1] - 1))
        with _block_output(blocks[layer]) as captured, torch.enable_grad():
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            with logits_at(model, index):
                logits = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits.float()
            wrong = valid & (logits.argmax(-1) != following)
            if not wrong.any():
                continue
            gap = logits.gather(-1, following[..., None])[..., 0] - logits.max(-1).values
            grads = torch.autograd.grad((gap * wrong).sum(), captured["h"])[0]
        at = torch.gather(grads, 1, index[..., None].expand(-1, -1, grads.shape[-1]))[wrong].float()  # [positions, D]
        total += torch.relu(at @ weighted.T).sum(0).double().cpu()
        positions += int(wrong.sum())
    return (total / max(1, positions)).float()


def choose_candidates(model: Any, tokenizer: Any, sae: Any, problem: Any, scale: torch.Tensor,
                      counts: torch.Tensor, n: int, rule: str = "auto", max_new_tokens: int = 32) -> torch.Tensor:
    """Long[n]: the SAE features the controller may add at one layer (all when `n <= 0`),
    the top `n` under `rule` (see the module docstring)."""
    d_sae = scale.shape[0]
    if n <= 0 or n >= d_sae:
        return torch.arange(d_sae)
    if rule == "auto":
        rule = "attribution" if problem.kind == "one-token-choices" else "frequency"
    if rule == "attribution":
        if problem.kind != "one-token-choices":
            raise ValueError("--candidate-rule attribution needs a one-token multiple-choice task; "
                             "use likelihood (generation) or frequency")
        score = choice_attribution(model, tokenizer, problem, sae.layer, sae.directions(), scale)
    elif rule == "likelihood":
        if problem.kind != "generation":
            raise ValueError("--candidate-rule likelihood needs a generation task; use attribution "
                             "(one-token multiple choice) or frequency")
        score = likelihood_attribution(model, tokenizer, problem, sae.layer, sae.directions(), scale, max_new_tokens)
    elif rule == "gold":
        if problem.kind != "generation":
            raise ValueError("--candidate-rule gold needs a generation task; use attribution "
                             "(one-token multiple choice) or frequency")
        score = gold_attribution(model, tokenizer, problem, sae.layer, sae.directions(), scale)
    else:
        score = counts.float()
    return score.topk(n).indices.sort().values
