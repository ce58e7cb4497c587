"""The settings every RL-trained method shares (the budget above all, so runs stay matched)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config import GENERATION_BATCH_SIZE, Dtype, RunConfig
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
    generation_batch_size: int = field(
        default=GENERATION_BATCH_SIZE,
        metadata={"help": "rows per generate call of the validation scoring on generation tasks"},
    )

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
        for name in ("results_dir", "runs_dir", "resume", "batch_size", "generation_batch_size", "device"):
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
class RolloutSettings:
    """How multi-token rollouts are sampled (a mixin of the settings of methods that sample them:
    the GRPO trainer's and C-SFT's teacher completions; `rl.rollout_copy`)."""

    rollout_dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto",
        metadata={
            "help": "dtype multi-token samples are drawn in (GRPO: the rollouts and the validation score; C-SFT: "
            "the teacher's completions): auto = bfloat16, from a bf16 copy of the model, when training in float32 "
            "on a CPU with native bf16 (generation is most of such a step), else the training dtype; float32 / "
            "bfloat16 force it (the loss and its gradients stay in the training dtype)"
        },
    )

    def fingerprint_settings(self) -> dict[str, Any]:
        settings = super().fingerprint_settings()  # type: ignore[misc]
        if settings.get("rollout_dtype") == "auto":  # runs from before the setting keep their fingerprint
            del settings["rollout_dtype"]
        return settings


@dataclass
class GRPOSettings(RolloutSettings, RLTrainConfig):
    """Settings of every method trained by the one GRPO trainer (`rl.grpo`)."""

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
    reward: Literal["task", "random"] = field(
        default="task",
        metadata={
            "help": "task: the task's own metric; random: a control, each rollout rewarded by a seeded coin flip "
            "with the step's mean task reward (the same mean, no information about which rollout was right); "
            "its run lives beside the real one, as <method>-random-reward"
        },
    )
    vllm: bool = field(
        default=False, metadata={"help": "generate with TRL's vLLM integration (needs `pip install vllm` and a GPU)"}
    )
    shared_prefix: bool = field(
        default=True,
        metadata={
            "help": "run each distinct prompt once per micro-batch, its KV cache serving all its completions, in "
            "generation and in the loss (the same log-probabilities to float rounding; off with gradient "
            "checkpointing); --no-shared-prefix: TRL's own row-by-row passes"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"--micro-batch must be at least 1, got {self.micro_batch}")
        if self.vllm:
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError("--vllm needs the vllm package: pip install vllm (on a machine with a GPU)")

    def fingerprint_settings(self) -> dict[str, Any]:
        settings = super().fingerprint_settings()
        if settings.get("reward") == "task":  # runs from before the control existed keep their fingerprint
            del settings["reward"]
        settings.pop("shared_prefix", None)  # how the same loss is computed, not what is trained
        return settings

    def micro_batches(self, total: int, device: str) -> tuple[int, int]:
        """(completions per micro-batch, micro-batches per step) for a step of `total` completions:
        the largest divisor of `total` up to the micro-batch size (TRL needs whole micro-batches)."""
        cap = self.micro_batch or (CPU_MICRO_BATCH if str(device).startswith("cpu") else GPU_MICRO_BATCH)
        size = max(d for d in range(1, total + 1) if total % d == 0 and d <= max(1, cap))
        return size, total // size
