"""Distributed alignment search (DAS) for one direction (Geiger et al.; as used by Tigges et al.).

A unit vector u is trained so that the *interchange intervention* along it — replacing the
component of a base run's activation along u with the component of a source run's
activation, `h_base + ((h_source - h_base) . u) u` — makes the model predict the source's
label: the objective is the logit difference of the source label over the base label
(the paper's choice). The LLM stays frozen; only u trains.

`fit_das` is model-agnostic: it optimises any differentiable `objective(u) -> loss`;
`contrast_das` builds the language-model objective from a contrast's opposite-label pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def interchange(h_base: Tensor, h_source: Tensor, u: Tensor) -> Tensor:
    """Float[..., D]: h_base with its component along unit vector u taken from h_source."""
    return h_base + ((h_source - h_base) @ u.to(h_base.dtype))[..., None] * u.to(h_base.dtype)


def fit_das(
    objective: Callable[[Tensor], Tensor],
    d_model: int,
    steps: int = 60,
    lr: float = 0.01,
    seed: int = 0,
    init: Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Tensor:
    """Unit vector Float[D] minimising `objective(u)` over the sphere (Adam on an unnormalised
    parameter, normalised in the forward pass). `init` (e.g. the mean difference) speeds it up."""
    generator = torch.Generator().manual_seed(seed)
    start = init.float().clone() if init is not None else torch.randn(d_model, generator=generator)
    raw = (start / start.norm()).requires_grad_(True)
    optimiser = torch.optim.Adam([raw], lr=lr)
    for step in range(steps):
        optimiser.zero_grad()
        loss = objective(raw / raw.norm())
        if not torch.isfinite(loss):
            raise RuntimeError(f"DAS loss became {loss.item()} at step {step}; lower the learning rate (--das-lr)")
        loss.backward()
        optimiser.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    with torch.no_grad():
        return (raw / raw.norm()).detach()


def contrast_das(
    model: torch.nn.Module,
    tokenizer,
    contrast,
    layer: int,
    acts_layer: Tensor,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> Tensor:
    """DAS on a contrast with a two-answer readout (`Contrast.has_readout`): each step
    interchanges u's component at the read position between `batch` base/source items of
    opposite-label pairs (both directions) and maximises the source label's logit difference.

    `model` should be fp32 on CPU (bf16 backward passes are ~12x slower there);
    `acts_layer` is Float[N, D], the items' activations at `layer` (the source values).
    """
    from baselines.contrast import at_positions, logit_diff

    if not contrast.has_readout:
        raise ValueError(f"DAS needs a two-answer readout; the {contrast.kind} contrast of {contrast.task} has none")
    pairs = contrast.pairs()
    if len(pairs) == 0:
        raise ValueError(f"the {contrast.split} contrast of {contrast.task} has no opposite-label pairs for DAS")
    base = torch.cat([pairs[:, 0], pairs[:, 1]])
    source = torch.cat([pairs[:, 1], pairs[:, 0]])
    order = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed))
    base, source = base[order], source[order]
    cursor = {"i": 0}

    def objective(u: Tensor) -> Tensor:
        start = cursor["i"] % len(base)
        cursor["i"] += batch
        b, s = base[start : start + batch], source[start : start + batch]
        h_src = acts_layer[s]
        patch = at_positions(
            layer,
            contrast.read_positions[b],
            lambda h, rows: interchange(h.float(), h_src[rows.cpu()].to(h.device), u.to(h.device)),
        )
        diff = logit_diff(model, tokenizer, contrast, b, [patch], grad=True)
        sign = (contrast.labels[s].float() * 2 - 1).to(diff.device)
        return -(sign * diff).mean()

    return fit_das(objective, acts_layer.shape[-1], steps=steps, lr=lr, seed=seed, on_step=on_step)
