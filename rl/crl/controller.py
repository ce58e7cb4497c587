"""The CRL controller: a small policy that, at each steered token position, reads the
residual stream at its layer and picks one SAE feature (or "no intervention") and a
coefficient; the intervention adds coefficient x typical activation x decoder direction
through the one steering mechanism (`harness.steering`).

- `FeatureBank`: the SAE decoder directions of each controlled layer and each feature's
  typical activation (its mean activation where it fires, measured on the task's prompts),
  so coefficient 1 adds a feature at the strength it naturally has.
- `Controller`: LayerNorm-free standardisation of the residual (mean and scale measured on
  the task's prompts; Gemma's residual is ~98% a constant vector), a shared MLP trunk with
  a per-layer embedding, and three heads: feature logits (d_sae + 1, the last is no-op),
  coefficient logits (over `COEFS`), and a value (PPO's critic). Two policies:
  - `flat`: one categorical over the d_sae features and the no-op; its most probable action
    (greedy) is the argmax;
  - `gated`: a gate (intervene or not) times a categorical over the features, returned as
    the same d_sae + 1 log-probabilities (so sampling, PPO and the logs are unchanged); its
    most probable action is decided stage by stage: intervene when the gate says so (p > 1/2),
    with the most probable feature. With ~30 decisions per completion and a no-op prior of
    ~94%, no single feature of a flat policy can outweigh the no-op, so a flat greedy
    controller never steers a generated token however much it learns; a gated one steers
    where its gate has learnt to.
- `ControllerRun`: the `PolicyIntervention` for one batch, in `sample`, `greedy` or `replay`
  mode, recording every decision: (row, token position, token, layer, feature,
  coefficient, log-probability, value, and the residual it read, for the PPO update).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harness.steering import PolicyIntervention, StepContext

COEFS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
POLICIES = ("flat", "gated")
CONTROLLER_TYPES = {"flat": "crl-mlp-v1", "gated": "crl-mlp-gated-v1"}  # config.json's "controller", per policy


@dataclass
class FeatureBank:
    """Per controlled layer: the candidate features' decoder directions Float[n, D], typical
    activations Float[n] and SAE ids Long[n] (all features when no candidate set is chosen)."""

    layers: list[int]
    directions: dict[int, Tensor]
    scales: dict[int, Tensor]
    ids: dict[int, Tensor] | None = None

    def sae_id(self, layer: int, index: int) -> int | None:
        """The SAE feature id of candidate `index` at `layer` (None for the no-op)."""
        if index >= self.d_sae:
            return None
        return int(self.ids[layer][index]) if self.ids is not None else index

    @property
    def d_sae(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    def delta(self, layer: int, features: Tensor, coefs: Tensor) -> Tensor:
        """Float[n, D]: coefs x scale[f] x W_dec[f]; zero where the feature is the no-op."""
        directions, scales = self.directions[layer], self.scales[layer]
        noop = features >= self.d_sae
        safe = features.clamp(max=self.d_sae - 1)
        delta = directions[safe] * (scales[safe] * coefs)[:, None]
        return delta.masked_fill(noop[:, None], 0.0)


class Controller(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_sae: int,
        n_layers: int,
        hidden: int = 256,
        n_coefs: int = len(COEFS),
        noop_prior: float = 0.5,
        policy: str = "flat",
    ):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.d_sae, self.policy = d_sae, policy
        self.register_buffer("mean", torch.zeros(n_layers, d_model))
        self.register_buffer("scale", torch.ones(n_layers, d_model))
        self.trunk = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.layer_embedding = nn.Embedding(n_layers, hidden)
        self.feature_head = nn.Linear(hidden, d_sae + 1 if policy == "flat" else d_sae)
        self.gate_head = nn.Linear(hidden, 1) if policy == "gated" else None
        self.coef_head = nn.Linear(hidden, n_coefs)
        self.value_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            # start near uniform over the features, with `noop_prior` of the mass on "no
            # intervention": an untrained controller (greedy) leaves the model alone
            self.feature_head.weight.mul_(0.01)
            self.feature_head.bias.zero_()
            if self.gate_head is not None:
                self.gate_head.weight.mul_(0.01)
                self.gate_head.bias.fill_(math.log((1 - noop_prior) / noop_prior) if 0 < noop_prior < 1 else 0.0)
            elif 0 < noop_prior < 1:
                self.feature_head.bias[d_sae] = math.log(noop_prior / (1 - noop_prior) * d_sae)

    def forward(self, h: Tensor, layer_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h Float[n, D], layer_index Long[n] -> feature logits [n, d_sae+1], coef logits [n, C], value [n].
        The gated policy's feature logits are log-probabilities: log p(intervene) + log p(feature |
        intervene) for the features, log p(no intervention) last."""
        x = (h.float() - self.mean[layer_index]) / self.scale[layer_index]
        z = self.trunk(x) + self.layer_embedding(layer_index)
        logits = self.feature_head(z)
        if self.gate_head is not None:
            gate = self.gate_head(z)
            logits = torch.cat(
                [nn.functional.logsigmoid(gate) + logits.log_softmax(-1), nn.functional.logsigmoid(-gate)], -1
            )
        return logits, self.coef_head(z), self.value_head(z).squeeze(-1)

    def most_probable(self, feature_probs: Tensor) -> Tensor:
        """Long[n]: the greedy feature index (d_sae = no-op) from probabilities [n, d_sae+1]
        (after masking): the argmax (flat), or stage by stage (gated): the most probable
        feature where intervening is more probable than not, else the no-op."""
        if self.policy == "flat":
            return feature_probs.argmax(-1)
        intervene = feature_probs[:, :-1].sum(-1) > feature_probs[:, -1]
        return torch.where(
            intervene, feature_probs[:, :-1].argmax(-1), torch.full_like(intervene, self.d_sae, dtype=torch.long)
        )

    @torch.no_grad()
    def standardise_from(self, samples: dict[int, Tensor]) -> None:
        """Set the input standardisation from residual samples Float[n, D] per layer index."""
        for index, h in samples.items():
            h = h.float()
            self.mean[index] = h.mean(0)
            self.scale[index] = h.std(0).clamp_min(1e-3 * h.std(0).mean().clamp_min(1e-6))


def distributions(feature_logits: Tensor, coef_logits: Tensor, masked: Tensor | None):
    """Categoricals over features (masked features excluded; the no-op never is) and coefficients."""
    if masked is not None and masked.any():
        feature_logits = feature_logits.masked_fill(masked.to(feature_logits.device)[None, :], float("-inf"))
    return torch.distributions.Categorical(logits=feature_logits), torch.distributions.Categorical(logits=coef_logits)


@dataclass
class Decision:
    """One decision of the controller at one (row, position, layer): what it chose and how
    likely that was. `feature` is the SAE feature id (None: no intervention); `feature_index`
    and `coef_index` index the controller's own action space (the bank's candidates, then the
    no-op; `COEFS`); `logp` and `value` are the policy's log-probability and value at the time."""

    row: int  # the row of the batch it was made in (`Rollouts.run` renumbers it to its rows)
    position: int  # token index within the unpadded sequence
    token: int  # the input token there (-1 when the forward was given embeddings)
    layer: int
    feature: int | None
    coef: float  # multiple of the feature's typical activation
    feature_index: int
    coef_index: int
    logp: float
    value: float
    layer_index: int  # the layer's index among the controlled layers


@dataclass
class ControllerRun:
    """A `PolicyIntervention` for one batch of forward passes (see the module docstring).

    `where(ctx) -> Bool[B, T]` picks the decision positions. In `replay` mode,
    `row_actions[row]` maps (position, layer) -> (feature index, coef index), or layer -> one
    action used at every decision of that row at that layer. `overrides` force single
    decisions in any mode (the others are taken as the mode says): what the interaction
    analysis (`crl_bench.analyses.interactions`) uses to ablate one choice and let the later ones react.
    """

    controller: Controller
    bank: FeatureBank
    where: Callable[[StepContext], Tensor]
    mode: str = "sample"  # sample | greedy | replay | off (no decisions: the unsteered model)
    masked: Tensor | None = None  # Bool[d_sae + 1] features excluded from sampling
    generator: torch.Generator | None = None
    row_actions: dict[int, dict[int, tuple[int, int]]] | None = None
    # any mode: row -> {(position, layer): (feature index, coef index)} forced there (ablations)
    overrides: dict[int, dict[tuple[int, int], tuple[int, int]]] | None = None
    # sample mode: (rows, positions, layer) -> Float[n, 2] uniforms for the feature and the
    # coefficient (inverse-CDF sampling): common random numbers, so that two runs draw the
    # same action wherever the controller sees the same residual (the interaction analysis)
    uniforms: Callable[[Tensor, Tensor, int], Tensor] | None = None
    keep_residuals: bool = True
    records: list[Decision] = field(default_factory=list)
    residuals: list[Tensor] = field(default_factory=list)

    def intervention(self) -> PolicyIntervention:
        return PolicyIntervention(self.policy, list(self.bank.layers))

    @torch.no_grad()
    def policy(self, hidden: Tensor, ctx: StepContext) -> Tensor | None:
        if self.mode == "off":
            return None
        chosen = self.where(ctx) & ctx.mask
        rows, cols = chosen.nonzero(as_tuple=True)
        if len(rows) == 0:
            return None
        layer_index = self.bank.layers.index(ctx.layer)
        h = hidden[rows, cols].float()
        index = torch.full((len(rows),), layer_index, dtype=torch.long, device=h.device)
        feature_logits, coef_logits, value = self.controller(h, index)
        features_d, coefs_d = distributions(feature_logits, coef_logits, self.masked)
        sampling = features_d.probs
        if self.mode == "sample" and self.uniforms is not None:
            u = self.uniforms(rows, ctx.positions[rows, cols], ctx.layer).to(h.device)
            features, coefs = _inverse_cdf(sampling, u[:, 0]), _inverse_cdf(coefs_d.probs, u[:, 1])
        elif self.mode == "sample":
            features = _sample(sampling, self.generator)
            coefs = _sample(coefs_d.probs, self.generator)
        elif self.mode == "greedy":
            features, coefs = self.controller.most_probable(features_d.probs), coefs_d.probs.argmax(-1)
        elif self.mode == "replay":
            positions_now = ctx.positions[rows, cols].tolist()
            pairs = []
            for r, p in zip(rows.tolist(), positions_now):
                actions = self.row_actions[r]
                pairs.append(actions[(p, ctx.layer)] if (p, ctx.layer) in actions else actions[ctx.layer])
            features = torch.tensor([p[0] for p in pairs], device=h.device)
            coefs = torch.tensor([p[1] for p in pairs], device=h.device)
        else:
            raise ValueError(f"mode must be sample, greedy, replay or off, got {self.mode!r}")
        if self.overrides:
            features, coefs = features.clone(), coefs.clone()
            for i, (r, p) in enumerate(zip(rows.tolist(), ctx.positions[rows, cols].tolist())):
                forced = self.overrides.get(r, {}).get((p, ctx.layer))
                if forced is not None:
                    features[i], coefs[i] = forced
        logp = features_d.log_prob(features) + coefs_d.log_prob(coefs)
        coef_values = torch.tensor(COEFS, device=h.device)[coefs]
        delta_rows = self.bank.delta(ctx.layer, features, coef_values)
        positions = ctx.positions[rows, cols]
        tokens = ctx.input_ids[rows, cols] if ctx.input_ids is not None else torch.full_like(rows, -1)
        for i in range(len(rows)):
            self.records.append(
                Decision(
                    row=int(rows[i]),
                    position=int(positions[i]),
                    token=int(tokens[i]),
                    layer=ctx.layer,
                    feature=self.bank.sae_id(ctx.layer, int(features[i])),
                    coef=float(COEFS[int(coefs[i])]),
                    feature_index=int(features[i]),
                    coef_index=int(coefs[i]),
                    logp=float(logp[i]),
                    value=float(value[i]),
                    layer_index=layer_index,
                )
            )
            if self.keep_residuals:
                self.residuals.append(h[i].cpu())
        delta = torch.zeros_like(hidden)
        delta[rows, cols] = delta_rows.to(hidden.dtype)
        return delta


def _sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Per row, the first index whose cumulative probability exceeds u (a draw from probs)."""
    cdf = probs.float().cumsum(-1)
    return (
        torch.searchsorted(cdf, (u.float() * cdf[:, -1])[:, None].contiguous(), right=True)
        .squeeze(-1)
        .clamp(max=probs.shape[-1] - 1)
    )


def common_uniforms(seed: int, docs: list[int]) -> Callable[[Tensor, Tensor, int], Tensor]:
    """Uniforms keyed by (seed, document, position, layer): `docs[row]` is each row's document."""
    import numpy as np

    def uniforms(rows: Tensor, positions: Tensor, layer: int) -> Tensor:
        return torch.tensor(
            np.array(
                [
                    np.random.default_rng([seed, docs[r], p, layer]).random(2)
                    for r, p in zip(rows.tolist(), positions.tolist())
                ]
            )
        )

    return uniforms


def at_decision(decision: Tensor) -> Callable[[StepContext], Tensor]:
    """Decide at one position per row: `decision[row]` (index within the unpadded sequence)."""

    def where(ctx: StepContext) -> Tensor:
        return ctx.positions == decision.to(ctx.positions.device)[:, None]

    return where


def from_last_prompt_token(ctx: StepContext) -> Tensor:
    """Decide at the prompt's last token and at every generated token (generation setting)."""
    return ctx.positions >= ctx.prompt_lengths[:, None] - 1


def load_controller(run_dir, device: Any = "cpu") -> tuple[Controller, FeatureBank]:
    """The controller and feature bank saved in a CRL run directory (safetensors only)."""
    from pathlib import Path

    from harness.artifacts import read_config, read_tensors

    run_dir = Path(run_dir)
    rebuild = "retrain it with `crl-bench train crl` (or `crl-bench bench --force`)"
    config = read_config(run_dir, rebuild)
    layers = list(config["layers_resolved"])
    names = {f"{kind}.{l}" for kind in ("directions", "scales", "ids") for l in layers}
    tensors = read_tensors(run_dir / "bank.safetensors", rebuild)
    if not {f"directions.{l}" for l in layers} | {f"scales.{l}" for l in layers} <= set(tensors) <= names:
        raise ValueError(f"{run_dir / 'bank.safetensors'} does not hold the feature bank of layers {layers}; {rebuild}")
    bank = FeatureBank(
        layers,
        {l: tensors[f"directions.{l}"].to(device) for l in layers},
        {l: tensors[f"scales.{l}"].to(device) for l in layers},
        {l: tensors[f"ids.{l}"].to(device) for l in layers} if f"ids.{layers[0]}" in tensors else None,
    )
    controller = Controller(
        config["d_model"],
        config["d_sae"],
        len(layers),
        config["hidden"],
        policy={v: k for k, v in CONTROLLER_TYPES.items()}[config["controller"]],
    )
    expected = set(controller.state_dict())
    controller.load_state_dict(read_tensors(run_dir / "controller.safetensors", rebuild, expected))
    return controller.to(device).eval(), bank
