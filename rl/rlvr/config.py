"""`RLVRConfig`: the settings of `crl-bench train rlvr` (LoRA + TRL's GRPO)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rl.config import RLTrainConfig

# Completions per micro-batch by default. A step's loss is the same whatever the split (TRL
# normalises by the step's completion tokens) and its completions are generated together; only
# the memory of the backward pass (activations: micro-batch x tokens x layers) changes. On the
# embedded model, arith_gen's 32 completions in one micro-batch peaked at 19.3 GB of RSS.
CPU_MICRO_BATCH = 8
GPU_MICRO_BATCH = 64


def activation_bytes(model_config: Any, tokens: int, micro: int, dtype: str) -> float:
    """What one micro-batch's backward pass keeps, roughly: s·b·h·(34 + 5·a·s/h) bytes of
    activations per layer in 16-bit (Korthikanti et al. 2022, arXiv 2205.05198), doubled in
    fp32, for a Hugging Face model config. TRL scores tokens through its chunked LM head, so no
    full-vocabulary logits are kept."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 1)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", 0)
    per_layer = tokens * micro * hidden * (34 + 5 * heads * tokens / max(1, hidden))
    return per_layer * layers * (2 if dtype == "float32" else 1)


@dataclass
class RLVRConfig(RLTrainConfig):
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(default="all-linear", metadata={"help": "modules LoRA adapts (peft target_modules)"})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient to the base model (0: no reference model)"})
    micro_batch: int | None = field(
        default=None,
        metadata={
            "help": "completions per forward/backward pass, the step's prompts x samples split into micro-batches "
            f"with gradient accumulation (default: {CPU_MICRO_BATCH} on CPU, {GPU_MICRO_BATCH} on a GPU)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass (less memory, more time)"}
    )
    vllm: bool = field(
        default=False, metadata={"help": "generate with TRL's vLLM integration (needs `pip install vllm` and a GPU)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"--micro-batch must be at least 1, got {self.micro_batch}")
        if self.vllm:
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError("--vllm needs the vllm package: pip install vllm (on a machine with a GPU)")

    def micro_batches(self, total: int, device: str) -> tuple[int, int]:
        """(completions per micro-batch, micro-batches per step) for a step of `total` completions:
        the largest divisor of `total` up to the micro-batch size (TRL needs whole micro-batches)."""
        cap = self.micro_batch or (CPU_MICRO_BATCH if str(device).startswith("cpu") else GPU_MICRO_BATCH)
        size = max(d for d in range(1, total + 1) if total % d == 0 and d <= max(1, cap))
        return size, total // size
