"""Circuit overlap: which model components carry each method's effect on the task metric.

For a one-token multiple-choice task, the metric is the logit difference at the answer
position between the correct choice and the mean of the other choices. A method changes
the model's activations (a steering intervention, or a LoRA adapter); **attribution
patching** estimates, for every node, how much of the metric change patching that node's
method activation into the base run would cause: (a_method - a_base) . d metric / d a,
with the gradient taken on the base run, summed over positions and averaged over items
(Syed et al. 2023; Marks et al. 2024 for SAE features). Nodes:

- every attention head's output (the input of `o_proj`, one slice per head) and every
  MLP's output, at every layer;
- every SAE feature at the SAE layer: the feature's activation times its decoder direction
  (the SAE's error term is left as it is).

The top nodes are then checked by **real activation patching**: the method's activations
at those nodes are written into the base run, and the share of the method's metric change
they recover is measured. Patching one method's activations at another method's top nodes
gives the share of, e.g., RLVR's gain the CRL circuit carries.

Works for any Hugging Face decoder whose blocks have an attention output projection and an MLP
that `harness.models` knows by name (`self_attn.o_proj` and `mlp` in Gemma, Llama, Mistral,
Qwen; `attn.c_proj` and `mlp` in GPT-2).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

Node = tuple[str, int, int]  # ("head", layer, head) | ("mlp", layer, 0) | ("sae", layer, feature)


@dataclass
class Batch:
    ids: Tensor
    mask: Tensor
    correct: list[int]  # per row: the correct choice's token id
    others: list[list[int]]  # per row: the other choices' token ids


def make_batches(tokenizer: Any, problem: Any, batch_size: int, device: Any) -> list[Batch]:
    """Batches of a one-token-choice `rl.crl.rollouts.Problem`'s prompts with their choice tokens."""
    from harness.padding import batch

    if problem.kind != "one-token-choices":
        raise ValueError(
            "circuits are measured on one-token multiple-choice tasks (the logit difference of the "
            f"correct answer); this task's choices are {problem.kind}"
        )
    out = []
    for start in range(0, len(problem.prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(problem.prompts))))
        ids, mask = batch(tokenizer, [problem.prompts[r] for r in rows], device)
        correct = [problem.choice_tokens[r][problem.gold[r]] for r in rows]
        others = [[t for i, t in enumerate(problem.choice_tokens[r]) if i != problem.gold[r]] for r in rows]
        out.append(Batch(ids, mask, correct, others))
    return out


def metric(logits: Tensor, b: Batch) -> Tensor:
    """Float[B]: logit(correct) - mean logit(other choices) at the last position."""
    last = logits[:, -1].float()
    rows = torch.arange(len(b.correct), device=last.device)
    others = torch.stack([last[r, o].mean() for r, o in enumerate(b.others)])
    return last[rows, torch.tensor(b.correct, device=last.device)] - others


@dataclass
class Recorder:
    """Hooks that record (and optionally patch) head outputs, MLP outputs and the SAE-layer residual."""

    model: Any
    n_heads: int
    sae_layer: int | None = None
    keep_grad: bool = False
    patch: dict[tuple, Tensor] = field(
        default_factory=dict
    )  # ("head", l, h) / ("mlp", l) -> value; ("resid", l) -> delta
    seen: dict[tuple, Tensor] = field(default_factory=dict)

    @contextmanager
    def active(self) -> Iterator["Recorder"]:
        from harness.models import attention_output, find_decoder_layers, mlp_of

        _, blocks = find_decoder_layers(self.model)
        handles = []

        def keep(key: tuple, value: Tensor) -> None:
            if self.keep_grad and value.requires_grad:
                value.retain_grad()
            self.seen[key] = value

        for l, block in enumerate(blocks):

            def pre_o(module, args, l=l):
                z = args[0]
                b, t, width = z.shape
                z = z.view(b, t, self.n_heads, width // self.n_heads)
                if any(k[0] == "head" and k[1] == l for k in self.patch):
                    z = z.clone()
                    for (kind, layer, *rest), value in self.patch.items():
                        if kind == "head" and layer == l:
                            z[:, :, rest[0]] = value.to(z.dtype)
                keep(("z", l), z)
                return (z.reshape(b, t, width), *args[1:])

            def post_mlp(module, args, output, l=l):
                if ("mlp", l) in self.patch:
                    output = self.patch[("mlp", l)].to(output.dtype)
                keep(("mlp", l), output)
                return output

            handles.append(attention_output(block).register_forward_pre_hook(pre_o))
            handles.append(mlp_of(block).register_forward_hook(post_mlp))
            if l == self.sae_layer:

                def post_block(module, args, output, l=l):
                    hidden = output[0] if isinstance(output, tuple) else output
                    if ("resid", l) in self.patch:
                        hidden = hidden + self.patch[("resid", l)].to(hidden.dtype)
                    keep(("resid", l), hidden)
                    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

                handles.append(block.register_forward_hook(post_block))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _run(
    model: Any,
    b: Batch,
    n_heads: int,
    sae_layer: int | None,
    interventions: Any = (),
    grad: bool = False,
    patch: dict | None = None,
) -> tuple[Tensor, dict[tuple, Tensor]]:
    from harness.sparse_logits import logits_at
    from harness.steering import steer

    if callable(interventions):  # per batch (a CRL controller decides at each batch's answer positions)
        interventions = interventions(b)
    recorder = Recorder(model, n_heads, sae_layer, keep_grad=grad, patch=patch or {})
    last = torch.full((len(b.ids), 1), b.ids.shape[1] - 1, dtype=torch.long, device=b.ids.device)
    # steering hooks first, so the recorder sees (and patches) the steered residual
    with torch.set_grad_enabled(grad), steer(model, list(interventions)), recorder.active(), logits_at(model, last):
        if grad:
            embeds = model.get_input_embeddings()(b.ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, attention_mask=b.mask, use_cache=False).logits
        else:
            logits = model(input_ids=b.ids, attention_mask=b.mask, use_cache=False).logits
    return metric(logits, b), recorder.seen


def attribution(
    base_model: Any, method_model: Any, batches: list[Batch], n_heads: int, sae: Any = None, interventions: Any = ()
) -> tuple[dict[Node, float], dict[str, float]]:
    """Attribution-patching scores of every node for one method (mean over items), and the
    base and method metrics. `method_model` may be `base_model` with `interventions` (a list,
    or a function of the batch returning one)."""
    scores: dict[Node, float] = {}
    totals = {"base": 0.0, "method": 0.0, "n": 0}
    layer = sae.layer if sae is not None else None
    for b in batches:
        m_base, base_acts = _run(base_model, b, n_heads, layer, grad=True)
        m_base.sum().backward()
        with torch.no_grad():
            m_method, method_acts = _run(method_model, b, n_heads, layer, interventions)
        totals["base"] += float(m_base.detach().sum())
        totals["method"] += float(m_method.sum())
        totals["n"] += len(b.correct)
        real = b.mask.bool()[..., None]
        for key, a_base in base_acts.items():
            if a_base.grad is None:
                continue
            diff = method_acts[key].float() - a_base.detach().float()
            grad = a_base.grad.float()
            kind, l = key
            if kind == "z":  # [B, T, H, hd]
                effect = ((diff * grad).sum(-1) * real).sum((0, 1))
                for h in range(effect.shape[0]):
                    scores[("head", l, h)] = scores.get(("head", l, h), 0.0) + float(effect[h])
            elif kind == "mlp":
                scores[("mlp", l, 0)] = scores.get(("mlp", l, 0), 0.0) + float(
                    ((diff * grad).sum(-1) * real[..., 0]).sum()
                )
            elif kind == "resid" and sae is not None:
                f_base = sae.encode(a_base.detach()[real[..., 0]]).float()
                f_method = sae.encode(method_acts[key][real[..., 0]]).float()
                directional = grad[real[..., 0]] @ sae.directions().float().to(grad.device).T  # [N, F]
                effect = ((f_method - f_base) * directional).sum(0)
                for f in torch.nonzero(effect).flatten().tolist():
                    scores[("sae", l, f)] = scores.get(("sae", l, f), 0.0) + float(effect[f])
        base_model.zero_grad(set_to_none=True)
    n = max(1, totals["n"])
    return {k: v / n for k, v in scores.items()}, {"base": totals["base"] / n, "method": totals["method"] / n}


def top_nodes(scores: dict[Node, float], k: int, kinds: tuple[str, ...]) -> list[Node]:
    """The k nodes of the given kinds with the largest |attribution|, best first."""
    ranked = sorted((n for n in scores if n[0] in kinds), key=lambda n: -abs(scores[n]))
    return [n for n in ranked[:k] if scores[n] != 0]


@torch.no_grad()
def patched_metric(
    base_model: Any,
    method_model: Any,
    batches: list[Batch],
    n_heads: int,
    nodes: list[Node],
    sae: Any = None,
    interventions: Any = (),
) -> float:
    """Mean metric of the base model with the method's activations written in at `nodes`."""
    layer = sae.layer if sae is not None else None
    total, count = 0.0, 0
    for b in batches:
        _, method_acts = _run(method_model, b, n_heads, layer, interventions)
        base_acts = _run(base_model, b, n_heads, layer)[1] if any(n[0] == "sae" for n in nodes) else {}
        patch: dict[tuple, Tensor] = {}
        for kind, l, index in nodes:
            if kind == "head":
                patch[("head", l, index)] = method_acts[("z", l)][:, :, index]
            elif kind == "mlp":
                patch[("mlp", l)] = method_acts[("mlp", l)]
        features = [n[2] for n in nodes if n[0] == "sae"]
        if features:
            real = b.mask.bool()
            decoder = sae.directions().float().to(b.ids.device)[features]  # [k, D]
            delta = torch.zeros_like(base_acts[("resid", layer)], dtype=torch.float32)
            f_base = sae.encode(base_acts[("resid", layer)][real]).float()[:, features]
            f_method = sae.encode(method_acts[("resid", layer)][real]).float()[:, features]
            delta[real] = (f_method - f_base) @ decoder
            patch[("resid", layer)] = delta
        m, _ = _run(base_model, b, n_heads, layer, patch=patch)
        total += float(m.sum())
        count += len(b.correct)
    return total / max(1, count)


MIN_CHANGE = 0.05


def recovered(patched: float, base: float, method: float, min_change: float = MIN_CHANGE) -> float | None:
    """Share of the method's metric change that the patched run recovers; None when the method
    changes the metric (mean logit difference) by less than `min_change`, where a share is a
    ratio of two near-zero numbers and says nothing."""
    change = method - base
    return None if abs(change) < min_change else (patched - base) / change


def node_overlap(
    a: list[Node], b: list[Node], universe: list[Node], n_permutations: int = 2000, seed: int = 20261124
) -> dict[str, float]:
    """Jaccard of two node sets with a permutation p-value (b replaced by random sets of the same
    size from `universe`)."""
    from crl_bench.analyses.overlap import jaccard

    observed = jaccard(a, b)
    rng = np.random.default_rng(seed)
    index = {n: i for i, n in enumerate(universe)}
    ai = [index[n] for n in a if n in index]
    hits = sum(
        jaccard(ai, list(rng.choice(len(universe), size=len(b), replace=False))) >= observed
        for _ in range(n_permutations)
    )
    return {"jaccard": observed, "p": (1 + hits) / (1 + n_permutations)}
