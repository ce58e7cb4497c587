"""What the one GRPO trainer (`rl.grpo`) trains, and how it is saved: a `Parameterisation`.

RLVR gives TRL a peft config (LoRA). The ladder's rungs attach a module to the frozen model
(`ModuleParameterisation`): it acts through the one steering mechanism (`harness.steering`),
so generation and the loss both go through it, and checkpoints hold only that module (and the
optimiser state), never the model.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any


class Parameterisation:
    """What a GRPO run trains and how it is saved. The base model stays frozen in every case."""

    method = "grpo"  # the run folder's and the manifest's name: <runs>/<model>/<method>/<task>/seed<k>
    title = "GRPO"  # the learning curve's title
    frozen_skip: tuple[str, ...] = ()  # parameter names that may train (left out of the frozen checksum)

    def peft_config(self) -> Any | None:
        return None

    def attach(self, model: Any, tokenizer: Any, task: Any, docs: list[dict], prompts: list[str], device: str) -> None:
        """Add the trainable modules to the frozen `model` (before the trainer is built); `docs`
        are the training documents and `prompts` their prompts."""

    def active(self, model: Any) -> contextlib.AbstractContextManager:
        """The context in which the trainable modules act (generation, loss and validation)."""
        return contextlib.nullcontext()

    def trainer_class(self) -> type:
        from rl.prefix import PrefixSharingGRPOTrainer

        return PrefixSharingGRPOTrainer

    def describe(self, trainable: int) -> str:
        return f"{trainable:,} trainable parameters"

    def save(self, model: Any, run_dir: Path, record: dict[str, Any]) -> None:
        """Write the trained artifact and its `config.json` (`record`: the run's settings)."""
        raise NotImplementedError


class ModuleParameterisation(Parameterisation):
    """A module (`build`) on the frozen model, held as its attribute `module_name`, added to the
    residual stream through `harness.steering` (it has `layers` and `delta`); checkpoints hold it
    in `checkpoint_file`."""

    module_name = "crl_bench_module"
    checkpoint_file = "module.safetensors"

    @property
    def frozen_skip(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.module_name,)

    def build(self, model: Any, tokenizer: Any, task: Any, docs: list[dict], prompts: list[str], device: str) -> Any:
        raise NotImplementedError

    def attach(self, model: Any, tokenizer: Any, task: Any, docs: list[dict], prompts: list[str], device: str) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        model.add_module(self.module_name, self.build(model, tokenizer, task, docs, prompts, device).to(device))

    def module(self, model: Any) -> Any:
        return getattr(model, self.module_name)

    def active(self, model: Any) -> contextlib.AbstractContextManager:
        from harness.steering import steer

        return steer(model, [self.module(model)])

    def trainer_class(self) -> type:
        from safetensors.torch import load_file, save_file

        from rl.prefix import PrefixSharingGRPOTrainer

        name, file_name = self.module_name, self.checkpoint_file

        class ModuleGRPOTrainer(PrefixSharingGRPOTrainer):
            """TRL's GRPOTrainer whose checkpoints hold only the module trained on the frozen model."""

            def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
                folder = Path(output_dir or self.args.output_dir)
                folder.mkdir(parents=True, exist_ok=True)
                state = getattr(self.model, name).state_dict()
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / file_name))

            def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
                state = load_file(str(Path(resume_from_checkpoint) / file_name))
                getattr(model or self.model, name).load_state_dict(state)

        return ModuleGRPOTrainer
