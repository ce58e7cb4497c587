"""`crl-bench train rl-vector`: one dense steering vector per layer, added to the residual stream
at every position, trained by the one GRPO trainer (`rl.grpo`) with everything else of RLVR
(prompts, rewards, sampling, budget, checkpoints): only what trains differs. The frozen model
generates and scores its rollouts through the vectors (`harness.steering`), so the loss's
gradients reach them through the model's own token log-probabilities.

Each vector is trained in units of its layer's residual scale (the RMS of one residual
coordinate over the training prompts' tokens, BOS left out), so one learning rate suits models
whose residual norms differ by orders of magnitude (~3,000 per token on the embedded Gemma 3).
It starts at zero: step 0 is the base model.

The run directory `<runs>/<model>/rl-vector/<task>/seed<k>/` is a steering artifact
(`harness.vectors`: `vectors.safetensors`, `config.json`, positions `all`, coefficient 1):
`vector_steered` evaluates it from the plain lm-eval CLI (`--model_args steer=<run dir>`).
Checkpoints hold the vectors and the optimiser state, not the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.steering import StepContext
from rl import grpo
from rl.parameterisation import ModuleParameterisation
from rl.vector.config import RLVectorConfig

CHECKPOINT_FILE = "rl_vectors.safetensors"
MODULE = "crl_bench_rl_vectors"  # the attribute of the frozen model that holds the trained vectors
SCALE_PROMPTS = 32


class TrainedVectors(nn.Module):
    """Float[L, D] trained vectors (zero at the start), added at every real token of their layers."""

    def __init__(self, layers: list[int], scale: Tensor, d_model: int):
        super().__init__()
        self.layers = list(layers)
        self.raw = nn.Parameter(torch.zeros(len(layers), d_model, dtype=torch.float32))
        self.register_buffer("scale", scale.float())  # Float[L]: residual RMS per coordinate

    def vectors(self) -> Tensor:
        return self.raw * self.scale[:, None]

    def delta(self, hidden: Tensor, ctx: StepContext) -> Tensor:
        vector = self.vectors()[self.layers.index(ctx.layer)].to(hidden.dtype)
        return ctx.mask[..., None].to(hidden.dtype) * vector


def residual_scale(model: Any, tokenizer: Any, prompts: list[str], layers: list[int]) -> Tensor:
    """Float[len(layers)]: the RMS of one residual coordinate after each layer, over the real
    tokens of the first prompts (BOS left out)."""
    from harness.activations import token_residuals

    found = token_residuals(model, tokenizer, prompts[:SCALE_PROMPTS], layers)
    return torch.stack([found[layer].pow(2).mean().sqrt() for layer in layers]).cpu()


class Vectors(ModuleParameterisation):
    """The RL steering vector: `TrainedVectors` on the frozen model, saved as a steering artifact."""

    method = "rl-vector"
    title = "RL steering vector (GRPO)"
    module_name, checkpoint_file = MODULE, CHECKPOINT_FILE

    def __init__(self, config: RLVectorConfig):
        self.config = config

    def build(self, model: Any, tokenizer: Any, task: Any, docs: list[dict], prompts: list[str], device: str) -> Any:
        from harness.models import find_decoder_layers

        _, blocks = find_decoder_layers(model)
        layers = self.config.layers if self.config.layers is not None else list(range(len(blocks)))
        if max(layers) >= len(blocks):
            raise ValueError(
                f"--layers {layers}: the model has {len(blocks)} decoder layers (valid: 0..{len(blocks) - 1})"
            )
        d_model = model.get_input_embeddings().weight.shape[-1]
        return TrainedVectors(layers, residual_scale(model, tokenizer, prompts, layers), d_model)

    def describe(self, trainable: int) -> str:
        layers = self.config.layers if self.config.layers is not None else "all"
        return f"vectors at layers {layers} ({trainable:,} trainable parameters)"

    def save(self, model: Any, run_dir: Path, record: dict[str, Any]) -> None:
        from harness.vectors import SteeringVectors

        module = self.module(model)
        vectors = module.vectors().detach().cpu()
        SteeringVectors(
            vectors={layer: vectors[i] for i, layer in enumerate(module.layers)},
            coefficient=1.0,
            positions="all",
            method="rl_vector",
            model=self.config.model,
            extra={**record, "residual_scale": module.scale.tolist()},
        ).save(run_dir, kind=self.method)


def train(config: RLVectorConfig) -> Path:
    """Train (or resume) one RL steering-vector run; returns its run directory."""
    return grpo.train(config, Vectors(config))
