"""The training budget shared by RLVR and CRL, and what a run actually spent.

A comparison is matched when every trained method gets the same `Budget`: the same
optimisation steps, prompts per step, samples (rollouts) per prompt, max new tokens and
seeds. `Spent` is what a run used, counted as it happens (and restored on resume): the
leaderboard reports it next to the scores.

Presets (`--budget NAME`, or a YAML/JSON file with any of the fields; single fields can be
overridden by their own flags):

- `smoke`: a few steps, for tests;
- `laptop`: what `make bench` trains on the embedded model on a 2-core CPU (the `laptop`
  bench profile): a quarter of the `cpu` one-token budget (10 x 4 x 8: on toy_sentiment RLVR,
  CRL and C-SFT reach their best validation score by step 10 of the 20 this preset had before)
  and 64 generation rollouts (4 x 2 x 8: on arith_gen the `cpu` budget's 256 taught neither
  RLVR nor CRL anything, docs/notebook.md; this run shows the generation regime end to end,
  it learns nothing), so that the whole bench stays short
  (results/<model>/bench_timings/laptop-laptop.md);
- `cpu`: the embedded model on a 2-core CPU, aiming at 15 minutes of RLVR training per task
  (generation tasks get fewer steps and smaller groups: each rollout costs ~20-30 tokens
  instead of one);
- `gpu`: a real model on one GPU.

The regime comes from the task: multiple-choice tasks are one-token answers
(`max_new_tokens` is 1 whatever the budget says); generation tasks generate up to
`max_new_tokens`, capped by the task's own `max_gen_toks`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# "generation" holds what differs for generation tasks.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 3, "prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 8, "seeds": [0]},
    "laptop": {
        "steps": 10,
        "prompts_per_step": 4,
        "samples_per_prompt": 8,
        "max_new_tokens": 32,
        "seeds": [0],
        "generation": {"steps": 4, "prompts_per_step": 2, "samples_per_prompt": 8},
    },
    "cpu": {
        "steps": 40,
        "prompts_per_step": 4,
        "samples_per_prompt": 8,
        "max_new_tokens": 32,
        "seeds": [0],
        "generation": {"steps": 16, "samples_per_prompt": 4},
    },
    "gpu": {"steps": 300, "prompts_per_step": 16, "samples_per_prompt": 16, "max_new_tokens": 256, "seeds": [0, 1, 2]},
}


@dataclass
class Budget:
    steps: int = 60
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    max_new_tokens: int = 32
    prompts: int | None = None  # distinct training prompts cycled through (None: as many as the steps use)
    seeds: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        from harness.config import check_fields

        check_fields(self)
        for name in ("steps", "prompts_per_step", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"budget {name} must be at least 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(
                f"budget samples_per_prompt must be at least 2 (group-relative advantages need a group), "
                f"got {self.samples_per_prompt}"
            )
        if self.prompts is not None and self.prompts < 1:
            raise ValueError(f"budget prompts must be at least 1 (or unset), got {self.prompts}")
        if not self.seeds:
            raise ValueError("budget seeds must name at least one seed")

    @classmethod
    def resolve(cls, name: str = "cpu", generation: bool = False, **overrides: Any) -> "Budget":
        """A preset name or a YAML/JSON file (its `generation` entry applies to generation
        tasks), with `overrides` (None values ignored) on top."""
        if name in PRESETS:
            values = dict(PRESETS[name])
        elif Path(name).is_file():
            from harness.config import read_yaml

            values = read_yaml(name, "budget file") or {}
            if not isinstance(values, dict):
                raise ValueError(
                    f"budget file {name}: expected a mapping of field -> value, got {type(values).__name__}"
                )
            known = {f.name for f in fields(cls)} | {"generation"}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"budget file {name}: unknown fields {unknown}; known: {sorted(known)}")
        else:
            raise ValueError(f"unknown budget {name!r}: use a preset ({', '.join(PRESETS)}) or a YAML/JSON file")
        for_generation = values.pop("generation", None) or {}
        if generation:
            values.update(for_generation)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def for_task(self, task: Any) -> "Budget":
        """This budget in the task's regime (one-token answers: max_new_tokens = 1)."""
        if task.OUTPUT_TYPE == "multiple_choice":
            return Budget(**{**asdict(self), "max_new_tokens": 1})
        if task.OUTPUT_TYPE == "generate_until":
            cap = (task.config.generation_kwargs or {}).get("max_gen_toks")
            tokens = min(self.max_new_tokens, cap) if cap else self.max_new_tokens
            return Budget(**{**asdict(self), "max_new_tokens": tokens})
        raise ValueError(
            f"task {task.config.task!r} has output_type {task.OUTPUT_TYPE!r}; RL training needs a "
            "multiple_choice or generate_until task"
        )

    @property
    def rollouts(self) -> int:
        """Rollouts the budget allows: steps x prompts per step x samples per prompt."""
        return self.steps * self.prompts_per_step * self.samples_per_prompt

    @property
    def distinct_prompts(self) -> int:
        return self.prompts or self.steps * self.prompts_per_step

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rollouts": self.rollouts}


def budget_label(budget: dict[str, Any]) -> str:
    """`<steps>x<prompts>x<samples>`: an RL budget's label on the leaderboard and in results/."""
    return f"{budget['steps']}x{budget['prompts_per_step']}x{budget['samples_per_prompt']}"


@dataclass
class Spent:
    """What a run used, counted while it trains (and carried over a resume)."""

    steps: int = 0
    rollouts: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0  # the whole run: loading, validation and training
    train_s: float = 0.0  # optimisation steps only (rollouts and updates; no loading or validation)
    trainable_parameters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> "Spent":
        return cls(**json.loads(Path(path).read_text())) if Path(path).exists() else cls()
