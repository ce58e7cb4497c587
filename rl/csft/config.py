"""`CSFTConfig`: the settings of `crl-bench train csft` (see `rl.csft.trainer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl.config import RLTrainConfig, RolloutSettings
from rl.crl.through_lm.config import FeatureControllerSettings

TEACHER_HELP = (
    "the model to distil: an RLVR run directory (its LoRA adapter, e.g. <runs>/<model>/rlvr/<task>/seed0), "
    "a steering artifact (vectors.safetensors) or a `crl-bench train crl-lm` run directory"
)


@dataclass
class CSFTConfig(RolloutSettings, FeatureControllerSettings, RLTrainConfig):
    teacher: str = field(default="", metadata={"help": TEACHER_HELP})
    learning_rate: float = field(default=1e-3, metadata={"help": "controller learning rate"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature of the teacher's completions (generation tasks)"}
    )
    micro_batch: int = field(default=8, metadata={"help": "teacher completions per forward/backward pass"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_controller()
        if self.micro_batch < 1:
            raise ValueError(f"--micro-batch must be at least 1, got {self.micro_batch}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")

    def check_teacher(self) -> Path:
        """The teacher's directory (checked when training starts: bench plans C-SFT before RLVR has run)."""
        if not self.teacher:
            raise ValueError(f"--teacher is required: {TEACHER_HELP}")
        if not Path(self.teacher).expanduser().is_dir():
            raise ValueError(f"--teacher {self.teacher}: no such directory; {TEACHER_HELP}")
        return Path(self.teacher).expanduser()

    def identity(self) -> dict[str, Any]:
        """The settings, and the teacher by content (its weights and config), not by path."""
        from harness.identity import folder_digest

        settings = super().identity()
        teacher = Path(self.teacher).expanduser()
        settings["teacher"] = folder_digest(teacher, "*.safetensors") + ":" + folder_digest(teacher, "*config.json")
        return settings

    def fingerprint_settings(self) -> dict[str, Any]:
        settings = super().fingerprint_settings()
        settings.pop("micro_batch", None)  # the same loss whatever the split
        return settings
