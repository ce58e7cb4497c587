"""`crl-bench train rlvr`: the RLVR reference, a LoRA adapter trained end to end with TRL's
`GRPOTrainer` on a task's training split, rewarded by the task's own scoring.

What is ours and what is TRL/peft's: TRL does the sampling, the group-relative advantages,
the loss, the optimiser, checkpointing and resuming; peft builds and saves the adapter. The
one GRPO trainer (`rl.grpo`, shared with the RL steering vector) assembles the pieces from
the shared contracts, and this module says what trains (a LoRA adapter):

- prompts: `harness.prompts.task_prompts` (lm-eval's own few-shot context for each training
  document, the document never among its own examples);
- reward: `harness.rewards.task_reward` (the task's metric), wrapped to pass only the
  document's fields and to count what was spent;
- budget: `rl.budget.Budget` (shared with CRL), in the task's regime: multiple-choice tasks
  answer with one token, **sampled among the task's choices** (each choice must be one
  token; a +100 `sequence_bias` on the choice tokens restricts sampling to them: a base model
  may put under 1% of its mass on the choices, e.g. toy_sentiment, so unrestricted samples
  would almost never be an answer). TRL's loss uses the full-vocabulary log-probability of
  the sampled choice; with group-normalised advantages (zero-sum within a prompt's group)
  the gradient of the choices' shared normaliser cancels, so this is the policy gradient of
  the policy restricted to the choices. Generation tasks generate up to `max_new_tokens`,
  stopping at the task's one-token `until` strings (e.g. a newline; TRL stops and masks
  at the model's end-of-sequence ids, which we extend), and the completion is cut at all
  `until` strings when scored, as lm-eval does;
- precision: fp32 on CPU by default (bf16 backward passes are ~12x slower than fp32 there),
  bf16 on GPU.

A run directory `<runs>/<model>/rlvr/<task>/seed<k>/` ends up with the PEFT adapter
(`adapter_config.json`, `adapter_model.safetensors`: what `rlvr_lora` and lm-eval's `hf`
with `peft=` load), `config.json`, `manifest.json` (budget and what was spent), and the
learning curve `curve.csv` / `curve.png` (also copied, with the manifest, to
`results/<model>/rlvr/<task>/<budget>-seed<k>/`).
Checkpoints go to `checkpoints/` every `checkpoint_every` steps; a rerun resumes from the
newest one (`--no-resume` starts over). A NaN or exploding loss stops the run with the
last good checkpoint kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.manifest import write_json
from rl import grpo
from rl.parameterisation import Parameterisation
from rl.rlvr.config import RLVRConfig


class LoRA(Parameterisation):
    """RLVR: a LoRA adapter on the frozen model (peft), saved as PEFT files."""

    method = "rlvr"
    title = "RLVR (LoRA, GRPO)"
    frozen_skip = ("lora_",)

    def __init__(self, config: RLVRConfig):
        self.config = config

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=0.0,
            target_modules=self.config.lora_targets,
            task_type="CAUSAL_LM",
        )

    def describe(self, trainable: int) -> str:
        return f"LoRA r={self.config.lora_r} ({trainable:,} trainable parameters)"

    def save(self, model: Any, run_dir: Path, record: dict[str, Any]) -> None:
        model.save_pretrained(str(run_dir))
        write_json(run_dir / "config.json", record)


def train(config: RLVRConfig) -> Path:
    """Train (or resume) one RLVR run; returns its run directory."""
    return grpo.train(config, LoRA(config))
