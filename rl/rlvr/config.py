"""`RLVRConfig`: the settings of `crl-bench train rlvr` (LoRA + TRL's GRPO)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rl.config import GRPOSettings


@dataclass
class RLVRConfig(GRPOSettings):
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(default="all-linear", metadata={"help": "modules LoRA adapts (peft target_modules)"})
