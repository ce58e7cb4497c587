"""The controller of CRL trained through the LM: at every token it reads the residual stream at
its layer and outputs sparse non-negative coefficients over candidate SAE features (the top k
of a ReLU), added as coefficient x typical activation x decoder direction. Differentiable end
to end, so the GRPO loss's gradients reach it through the frozen model (`rl.crl.through_lm.trainer`);
every intervention is still a handful of named SAE features."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harness.steering import PolicyIntervention, StepContext

CONTROLLER_TYPE = "crl-lm-topk-v1"  # config.json's "controller"


class FeatureGate(nn.Module):
    def __init__(self, d_model: int, n_features: int, layer: int, hidden: int = 64, k: int = 4):
        super().__init__()
        self.layer, self.k = layer, min(k, n_features)
        self.register_buffer("mean", torch.zeros(d_model))
        self.register_buffer("std", torch.ones(d_model))
        self.register_buffer("directions", torch.zeros(n_features, d_model))  # candidate decoder rows
        self.register_buffer("strengths", torch.ones(n_features))  # each feature's typical activation
        self.register_buffer("ids", torch.arange(n_features))  # SAE feature ids of the candidates
        self.trunk = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, n_features))
        with torch.no_grad():  # near zero at the start: step 0 is (almost) the base model, and gradients flow
            self.trunk[-1].weight.mul_(0.01)
            self.trunk[-1].bias.zero_()

    @property
    def layers(self) -> list[int]:
        return [self.layer]

    @torch.no_grad()
    def prepare(self, residuals: Tensor, directions: Tensor, strengths: Tensor, ids: Tensor) -> None:
        """Input standardisation from residual samples Float[n, D]; the candidates' directions,
        typical activations and SAE ids."""
        self.mean.copy_(residuals.float().mean(0))
        std = residuals.float().std(0)
        self.std.copy_(std.clamp_min(1e-3 * std.mean().clamp_min(1e-6)))
        self.directions.copy_(directions.float())
        self.strengths.copy_(strengths.float())
        self.ids.copy_(ids)

    def coefficients(self, hidden: Tensor) -> Tensor:
        """Float[..., n]: the top-k of ReLU(trunk(standardised residual)), zero elsewhere.

        The gradient is straight-through: it reaches every candidate's pre-activation, as if all
        were added. A hard top-k (and ReLU) would pass gradient only to the features already
        chosen, so a helpful feature outside the first top-k could never be learnt."""
        pre = self.trunk((hidden.detach().float() - self.mean) / self.std)
        values, index = torch.relu(pre).topk(self.k, dim=-1)
        hard = torch.zeros_like(pre).scatter(-1, index, values)
        return pre + (hard - pre).detach()

    def delta(self, hidden: Tensor, ctx: StepContext) -> Tensor:
        coefs = self.coefficients(hidden) * self.strengths
        return (coefs @ self.directions).to(hidden.dtype)

    def describe(self) -> dict[str, Any]:
        return {"controller": CONTROLLER_TYPE, "layer": self.layer, "k": self.k, "n_features": len(self.ids)}


@dataclass
class GateRecord:
    """One feature the controller added at one (row, position): its SAE id and coefficient (a
    multiple of the feature's typical activation), as `crl_steered` logs CRL decisions."""

    row: int
    position: int
    token: int
    layer: int
    feature: int
    coef: float


@dataclass
class GateRun:
    """The controller as a `PolicyIntervention` for one batch: it acts at every token and records
    the features it adds at the positions `where(ctx)` picks (the answer position, generated tokens)."""

    gate: FeatureGate
    where: Callable[[StepContext], Tensor]
    records: list[GateRecord] = field(default_factory=list)

    def intervention(self) -> PolicyIntervention:
        return PolicyIntervention(self.policy, self.gate.layers)

    @torch.no_grad()
    def policy(self, hidden: Tensor, ctx: StepContext) -> Tensor:
        coefs = self.gate.coefficients(hidden)
        rows, cols = (self.where(ctx) & ctx.mask).nonzero(as_tuple=True)
        for r, c in zip(rows.tolist(), cols.tolist()):
            token = int(ctx.input_ids[r, c]) if ctx.input_ids is not None else -1
            for f in coefs[r, c].nonzero().flatten().tolist():
                self.records.append(
                    GateRecord(
                        r, int(ctx.positions[r, c]), token, ctx.layer, int(self.gate.ids[f]), float(coefs[r, c, f])
                    )
                )
        return ((coefs * self.gate.strengths) @ self.gate.directions).to(hidden.dtype)


def load_gate(run_dir: Any, device: Any = "cpu") -> FeatureGate:
    """The controller saved in a `crl-bench train crl-lm` run directory (safetensors only)."""
    from pathlib import Path

    from harness.artifacts import read_config, read_tensors

    run_dir = Path(run_dir)
    rebuild = "retrain it with `crl-bench train crl-lm`"
    config = read_config(run_dir, rebuild)
    gate = FeatureGate(config["d_model"], config["n_features"], config["layer"], config["hidden"], config["k"])
    gate.load_state_dict(read_tensors(run_dir / "controller.safetensors", rebuild, set(gate.state_dict())))
    return gate.to(device).eval()
