"""`RLVectorConfig`: the settings of `crl-bench train rl-vector` (Sinii et al., arXiv 2505.18706:
a steering vector per layer trained with a GRPO objective through the frozen LM's token
log-probabilities)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rl.config import GRPOSettings


@dataclass
class RLVectorConfig(GRPOSettings):
    layers: list[int] | None = field(
        default=None, metadata={"help": "layers that get a trained vector, comma-separated (default: every layer)"}
    )
    learning_rate: float = field(
        default=1e-4,
        metadata={
            "help": "optimiser learning rate; a vector is trained in units of its layer's residual scale "
            "(the RMS of a residual coordinate on the training prompts), so one step moves a coordinate by "
            "about this share of it, whatever the model's residual norms (1e-2 and 1e-3 collapsed the embedded "
            "model to one answer on arith_mc: docs/ladder.md)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            self.layers = [int(x) for x in self.layers.split(",") if x.strip()]
        if self.vllm:
            raise ValueError(
                "--vllm generates outside this process's model, where the steering vectors are not: "
                "train the RL vector without --vllm"
            )
        super().__post_init__()
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"--layers must name layers 0 and up, got {self.layers}")
