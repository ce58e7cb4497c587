"""`RLVRConfig`: the settings of `crl-bench train rlvr` (LoRA + TRL's GRPO)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rl.config import RLTrainConfig


@dataclass
class RLVRConfig(RLTrainConfig):
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(default="all-linear", metadata={"help": "modules LoRA adapts (peft target_modules)"})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient to the base model (0: no reference model)"})
