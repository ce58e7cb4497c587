"""The settings every RL-trained method shares (the budget above all, so runs stay matched)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.config import Dtype, RunConfig
from rl.budget import Budget


@dataclass
class RLTrainConfig(RunConfig):
    """Settings every RL-trained method shares (RLVR here; CRL adds its own)."""

    task: str = field(default="arith_mc", metadata={"help": "lm-eval task (its training split and reward)"})
    budget: str = field(default="cpu", metadata={"help": "budget preset (smoke, cpu, gpu) or a YAML/JSON file"})
    steps: int | None = field(default=None, metadata={"help": "override the budget's optimisation steps"})
    prompts_per_step: int | None = field(default=None, metadata={"help": "override the budget's prompts per step"})
    samples_per_prompt: int | None = field(default=None, metadata={"help": "override the budget's samples per prompt"})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "override the budget's max new tokens (generation tasks)"}
    )
    prompts: int | None = field(default=None, metadata={"help": "override the budget's distinct training prompts"})
    seed: int = field(default=0, metadata={"help": "training seed (one of the budget's seeds for matched runs)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "optimiser learning rate"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    eval_every: int = field(
        default=10, metadata={"help": "validation score every N steps (0: only at the start and end)"}
    )
    val_limit: int | None = field(default=64, metadata={"help": "validation documents for the learning curve"})
    checkpoint_every: int = field(default=10, metadata={"help": "save a checkpoint every N steps"})
    resume: bool = field(
        default=True, metadata={"help": "resume from the newest checkpoint of this run (--no-resume: start over)"}
    )
    max_loss: float = field(
        default=1e3, metadata={"help": "stop when |loss| or the gradient norm exceeds this (exploding)"}
    )
    dtype: Dtype = field(default="auto", metadata={"help": "training dtype; auto = float32 on CPU, bfloat16 on GPU"})
    batch_size: int = field(default=16, metadata={"help": "batch size of the validation scoring"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.checkpoint_every < 1 or self.eval_every < 0:
            raise ValueError("--checkpoint-every must be >= 1 and --eval-every >= 0")
        self.resolved_budget(generation=False)  # a bad budget fails here, before any model load

    def resolved_budget(self, generation: bool) -> Budget:
        return Budget.resolve(
            self.budget,
            generation=generation,
            steps=self.steps,
            prompts_per_step=self.prompts_per_step,
            samples_per_prompt=self.samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
            prompts=self.prompts,
        )

    def identity(self) -> dict[str, Any]:
        """What decides the trained weights: the settings (not where files go, resuming, or the
        eval batch size), a budget file's content, and what the run reads, by content (the
        model's files, the task's definition and data: `harness.identity`)."""
        from harness.identity import inputs

        settings = self.fingerprint_settings()
        for name in ("results_dir", "runs_dir", "resume", "batch_size", "device"):
            settings.pop(name, None)
        if Path(self.budget).is_file():  # a budget file: what it says, not only its name
            settings["budget"] = {"file": self.budget, "content": Path(self.budget).read_text()}
        settings["inputs"] = inputs(self.model, self.task)
        return settings

    def fingerprint(self) -> str:
        from harness.manifest import fingerprint

        return fingerprint(self.identity())

    def fingerprint_settings(self) -> dict[str, Any]:
        """The settings the fingerprint hashes (subclasses drop what old runs did not have)."""
        return asdict(self)

    def task_budget(self, task: Any) -> Budget:
        """The budget in the task's regime (see `rl.budget`)."""
        return self.resolved_budget(generation=task.OUTPUT_TYPE == "generate_until").for_task(task)
