"""Distributed alignment search (DAS) for one direction (Geiger et al.; as used by Tigges et al.).

A unit vector u is trained so that the *interchange intervention* along it — replacing the
component of a base run's activation along u with the component of a source run's
activation, `h_base + ((h_source - h_base) . u) u` — makes the model predict the source's
label: the objective is the logit difference of the source label over the base label
(the paper's choice). The LLM stays frozen; only u trains.

`fit_das` is model-agnostic: it optimises any differentiable `objective(u) -> loss`; the
language-model objective is built by `baselines.contrast.das_objective`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def interchange(h_base: Tensor, h_source: Tensor, u: Tensor) -> Tensor:
    """Float[..., D]: h_base with its component along unit vector u taken from h_source."""
    return h_base + ((h_source - h_base) @ u.to(h_base.dtype))[..., None] * u.to(h_base.dtype)


def fit_das(objective: Callable[[Tensor], Tensor], d_model: int, steps: int = 60, lr: float = 0.01,
            seed: int = 0, init: Tensor | None = None, on_step: Callable[[int, float], None] | None = None) -> Tensor:
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
            on_step(step, float(loss))
    with torch.no_grad():
        return (raw / raw.norm()).detach()
