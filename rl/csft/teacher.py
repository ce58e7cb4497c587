"""The model C-SFT distils, on the same frozen base model as the student: an RLVR run's LoRA
adapter (peft, switched off for the student's passes), a steering artifact or a `crl-lm`
controller (added only in the teacher's passes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl.csft.config import TEACHER_HELP


@dataclass
class Teacher:
    kind: str  # "lora", "vectors" or "crl-lm"
    path: Path
    model: Any  # what to call: the peft model for a LoRA teacher, else the base model
    interventions: list[Any] = field(default_factory=list)

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        """The teacher's behaviour."""
        from harness.steering import steer

        with steer(self.model, self.interventions) if self.interventions else contextlib.nullcontext():
            yield

    def off(self) -> contextlib.AbstractContextManager:
        """The base model's behaviour (the student adds its controller on top)."""
        return self.model.disable_adapter() if self.kind == "lora" else contextlib.nullcontext()


def load_teacher(path: str | Path, model: Any, model_spec: str) -> Teacher:
    """The teacher in `path`, on `model` (the frozen base model, which a LoRA teacher wraps)."""
    from harness.artifacts import check_model, read_config

    path = Path(path).expanduser()
    config = read_config(path, "retrain the teacher") if (path / "config.json").exists() else {}
    made_for = config.get("model")
    if made_for is not None:
        check_model(made_for, model_spec, f"teacher {path}", "another --model")
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        return Teacher("lora", path, PeftModel.from_pretrained(model, str(path), is_trainable=False).eval())
    if config.get("controller") is not None:
        from rl.crl.through_lm.gate import CONTROLLER_TYPE, load_gate

        if config["controller"] != CONTROLLER_TYPE:
            raise ValueError(f"teacher {path}: controller kind {config['controller']!r} cannot be distilled yet")
        gate = load_gate(path, device=next(model.parameters()).device)
        return Teacher("crl-lm", path, model, [gate])
    if (path / "vectors.safetensors").exists():
        from harness.vectors import SteeringVectors

        return Teacher("vectors", path, model, [SteeringVectors.load(path).intervention()])
    raise FileNotFoundError(
        f"teacher {path} holds no adapter_config.json, vectors.safetensors or controller: {TEACHER_HELP}"
    )
