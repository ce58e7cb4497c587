"""`CRLThroughLMConfig`: the settings of `crl-bench train crl-lm` (see `rl.crl.through_lm.trainer`);
`FeatureControllerSettings`: those of its controller, shared with C-SFT (`rl.csft`), which
trains the same controller by distillation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rl.config import GRPOSettings


@dataclass
class FeatureControllerSettings:
    """The feature controller (`rl.crl.through_lm.gate.FeatureGate`): which SAE, layer and
    candidate features, how many added per token, and its width."""

    sae: str = field(
        default="auto",
        metadata={"help": "SAE whose features the controller adds (as bench's --sae); auto trains one if needed"},
    )
    sae_corpus: str = field(default="builtin", metadata={"help": "corpus for an auto SAE that has to be trained"})
    layer: int | None = field(default=None, metadata={"help": "controlled layer (default: the SAE's own)"})
    candidates: int = field(default=128, metadata={"help": "features the controller may add (0: the whole dictionary)"})
    candidate_rule: Literal["auto", "attribution", "frequency"] = field(
        default="auto",
        metadata={
            "help": "how the candidates are picked (as `train crl`): attribution for one-token tasks, else frequency"
        },
    )
    k: int = field(default=4, metadata={"help": "features added per token at most (top-k of the coefficients)"})
    hidden: int = field(default=64, metadata={"help": "controller width"})

    def check_controller(self) -> None:
        if self.k < 1 or self.hidden < 1:
            raise ValueError(f"--k and --hidden must be at least 1, got {self.k} and {self.hidden}")


@dataclass
class CRLThroughLMConfig(FeatureControllerSettings, GRPOSettings):
    learning_rate: float = field(default=1e-3, metadata={"help": "controller learning rate"})

    def __post_init__(self) -> None:
        if self.vllm:
            raise ValueError(
                "--vllm generates outside this process's model, where the controller is not: "
                "train crl-lm without --vllm"
            )
        super().__post_init__()
        self.check_controller()
