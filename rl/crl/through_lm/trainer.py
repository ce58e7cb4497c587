"""`crl-bench train crl-lm`: CRL trained through the LM (the differentiable counterpart of FSRL,
arXiv 2509.12934). The controller (`rl.crl.through_lm.gate.FeatureGate`) reads the residual at its layer
and adds, at every token, a few candidate SAE features with non-negative coefficients; it is
trained by the one GRPO trainer (`rl.grpo`) with everything else of RLVR (prompts, rewards,
sampling, budget, checkpoints), the gradients flowing through the frozen model into it. The
candidates are chosen as `train crl` chooses them (`rl.crl.candidates`), without labels.

The run directory `<runs>/<model>/crl-lm/<task>/seed<k>/` holds `controller.safetensors` and
`config.json` (`"controller": "crl-lm-topk-v1"`); checkpoints hold the controller and the
optimiser state, not the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rl import grpo
from rl.crl.through_lm.config import CRLThroughLMConfig
from rl.crl.through_lm.gate import FeatureGate
from rl.parameterisation import ModuleParameterisation

CHECKPOINT_FILE = "controller.safetensors"
MODULE = "crl_bench_feature_gate"  # the attribute of the frozen model that holds the controller
SAMPLE_PROMPTS = 32


class ThroughLM(ModuleParameterisation):
    method = "crl-lm"
    title = "CRL through the LM (GRPO)"
    module_name, checkpoint_file = MODULE, CHECKPOINT_FILE

    def __init__(self, config: CRLThroughLMConfig):
        self.config = config
        self.sae: Any = None

    def build(self, model: Any, tokenizer: Any, task: Any, docs: list[dict], prompts: list[str], device: str) -> Any:
        from harness.activations import token_residuals
        from harness.models import model_info
        from harness.sae import load_sae
        from rl.crl.candidates import choose_candidates
        from rl.crl.rollouts import build_problem
        from rl.crl.trainer import measure_bank

        config = self.config
        sae = load_sae(config.sae, model_info(config.model), config.layer, device=device, corpus=config.sae_corpus)
        self.sae = sae
        problem = build_problem(task, docs, tokenizer, config.seed)
        scales, _, counts = measure_bank(model, tokenizer, {sae.layer: sae}, problem.prompts[:64], config.batch_size)
        ids = choose_candidates(
            model,
            tokenizer,
            sae,
            problem,
            scales[sae.layer],
            counts[sae.layer],
            config.candidates,
            config.candidate_rule,
        )
        d_model = model.get_input_embeddings().weight.shape[-1]
        torch.manual_seed(config.seed)
        gate = FeatureGate(d_model, len(ids), sae.layer, hidden=config.hidden, k=config.k)
        gate.prepare(
            token_residuals(model, tokenizer, prompts[:SAMPLE_PROMPTS], [sae.layer])[sae.layer].cpu(),
            sae.directions().float()[ids].cpu(),
            scales[sae.layer][ids],
            ids,
        )
        return gate

    def describe(self, trainable: int) -> str:
        layer = self.config.layer if self.config.layer is not None else getattr(self.sae, "layer", "of the SAE")
        return f"a feature controller at layer {layer} ({trainable:,} trainable parameters)"

    def save(self, model: Any, run_dir: Path, record: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from harness.manifest import write_json

        gate = self.module(model)
        state = {k: v.detach().contiguous().cpu() for k, v in gate.state_dict().items()}
        save_file(state, str(run_dir / CHECKPOINT_FILE))
        write_json(
            run_dir / "config.json",
            {
                **record,
                **gate.describe(),
                "model": self.config.model,
                "d_model": int(gate.mean.shape[0]),
                "hidden": self.config.hidden,
                "layers_resolved": gate.layers,
                "sae_resolved": self.sae.name if self.sae is not None else None,
            },
        )


def train(config: CRLThroughLMConfig) -> Path:
    """Train (or resume) one run of CRL through the LM; returns its run directory."""
    return grpo.train(config, ThroughLM(config))
