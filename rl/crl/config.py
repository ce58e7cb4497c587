"""`CRLConfig`: the settings of `crl-bench train crl` (the RL budget and bookkeeping are the
shared `rl.config.RLTrainConfig`'s; see `rl.crl.trainer` for what each setting does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from rl.config import RLTrainConfig

Setting = Literal["one-token", "multi-layer", "generation"]
SETTINGS: tuple[str, ...] = get_args(Setting)


@dataclass
class CRLConfig(RLTrainConfig):
    setting: Setting = field(
        default="one-token",
        metadata={"help": "one-token (multiple choice, one layer), multi-layer, or generation (one layer)"},
    )
    sae: str = field(
        default="auto",
        metadata={
            "help": "SAE (as bench's --sae); auto trains one per layer if needed; "
            "'{layer}' in the spec is replaced by each layer (multi-layer)"
        },
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "controlled layers (default: the SAE's layer; multi-layer: 1/3 and 1/2 of the depth)"},
    )
    sae_corpus: str = field(default="builtin", metadata={"help": "corpus for an auto SAE that has to be trained"})
    algorithm: Literal["ppo", "grpo"] = field(
        default="ppo", metadata={"help": "ppo (value head) or grpo (group-relative, critic-free)"}
    )
    hidden: int = field(default=256, metadata={"help": "controller width"})
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each step's decisions"})
    clip: float = field(default=0.2, metadata={"help": "PPO clipping range"})
    value_coef: float = field(default=0.5, metadata={"help": "weight of the value loss (ppo)"})
    entropy_coef: float = field(default=0.01, metadata={"help": "entropy bonus (0: off)"})
    mask_share: float = field(
        default=0.5, metadata={"help": "mask a feature chosen in more than this share of recent decisions (0: off)"}
    )
    mask_steps: int = field(default=5, metadata={"help": "steps a masked feature stays masked"})
    mask_window: int = field(default=3, metadata={"help": "steps of decisions the share is measured over"})
    learning_rate: float = field(default=3e-3, metadata={"help": "controller learning rate"})
    candidates: int = field(
        default=128, metadata={"help": "features the controller chooses among per layer (0: the whole dictionary)"}
    )
    candidate_rule: Literal["auto", "attribution", "frequency"] = field(
        default="auto",
        metadata={
            "help": "how the candidates are picked, without labels: attribution (they move the choices' logits "
            "apart; one-token tasks) or frequency (they fire most often on the prompts); auto: attribution for "
            "one-token tasks, else frequency"
        },
    )
    noop_prior: float | None = field(
        default=None,
        metadata={
            "help": "initial probability of 'no intervention' per decision (default: 0.5; generation: "
            "1 - 2 / max new tokens, about two interventions per completion)"
        },
    )
    policy: Literal["auto", "flat", "gated"] = field(
        default="auto",
        metadata={
            "help": "flat (one categorical over the features and the no-op) or gated (intervene-or-not gate x "
            "feature; greedy intervenes where the gate says so); auto: gated for generation, else flat"
        },
    )
    baseline: Literal["auto", "value", "group", "unsteered"] = field(
        default="auto",
        metadata={
            "help": "advantage baseline: value (R - V(h), ppo's critic), group (R normalised in its prompt's "
            "group), unsteered (R - the same prompt's reward with no intervention); auto: unsteered for "
            "generation, else value for ppo and group for grpo"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline == "value" and self.algorithm == "grpo":
            raise ValueError(
                "--baseline value needs the value head of --algorithm ppo; grpo is critic-free "
                "(use --baseline group or unsteered)"
            )
        if isinstance(self.layers, str):
            self.layers = [int(x) for x in self.layers.split(",") if x]
        if self.setting != "multi-layer" and self.layers and len(self.layers) > 1:
            raise ValueError(
                f"the {self.setting} setting controls one layer; use --setting multi-layer for {self.layers}"
            )

    @property
    def method(self) -> str:
        return f"crl-{self.setting}"

    @property
    def resolved_policy(self) -> str:
        if self.policy != "auto":
            return self.policy
        return "gated" if self.setting == "generation" else "flat"

    def fingerprint_settings(self) -> dict[str, Any]:
        settings = super().fingerprint_settings()
        if self.resolved_policy == "flat":  # what every run before the gated policy was: their caches stay valid
            settings.pop("policy")
        if self.candidate_rule == "auto":  # the rule of every run before there was a choice
            settings.pop("candidate_rule")
        return settings

    def identity(self) -> dict[str, Any]:
        """RL's identity plus the SAE's files when `--sae` names local folders (one, or one per
        layer through a `{layer}` pattern): replacing them retrains instead of reusing."""
        import glob

        from harness.identity import folder_digest

        settings = super().identity()
        folders = sorted(glob.glob(self.sae.replace("{layer}", "*"))) if "{layer}" in self.sae else [self.sae]
        local = [Path(f) for f in folders if Path(f).expanduser().is_dir()]
        if local:
            settings["inputs"]["sae"] = {f.name: folder_digest(f.expanduser(), full=False) for f in local}
        return settings

    @property
    def resolved_baseline(self) -> str:
        if self.baseline != "auto":
            return self.baseline
        if self.setting == "generation":
            return "unsteered"
        return "value" if self.algorithm == "ppo" else "group"
