"""Rollouts sampled from a bf16 copy of the policy, on a CPU with native bf16 arithmetic.

RLVR and the ladder's GRPO rungs train in fp32 on a CPU (bf16 backward passes are ~12x slower
there), and TRL samples the rollouts from the model it trains, in fp32. On the embedded model
that made generation most of a generation task's step: a py-spy profile of RLVR on arith_gen
(2 cores) put 45% of the samples in rollout generation and 18% in the validation's generation,
mostly in fp32 decoder matmuls, which a CPU with AVX512-BF16 or AMX does faster in bf16.
Measured on a 2-core AMD EPYC with AVX512-BF16 (RLVR, arith_gen, 4 prompts x 8 samples at
temperature 0.8): a step's generation took 11-13 s from the copy against 20 s from the fp32
model, and a 2-step run with its two validations 79 s against 88 s; the fp32 loss and backward
are the rest of a step.

`RolloutCopy` keeps a bf16 copy of the model (0.5 GiB for the 270M model) whose trainable
parameters (the LoRA adapter, or the module a ladder rung attaches) are copied from the fp32
model before each generate call and each validation; the frozen weights are cast once. The
loss, its log-probabilities and the gradients stay fp32 and are those of the fp32 model: the
rollouts come from a policy that differs from it by bf16 rounding, as vLLM's rollouts differ
from the trainer's in TRL's GPU recipes (GRPO's ratio is taken against the fp32 model's own
log-probabilities, so nothing else changes).

C-SFT samples its LoRA teacher's completions from such a copy in the same way (the teacher is
frozen, so nothing is synced; the KL targets are the fp32 teacher's distributions).

`rollout_dtype` (`rl.config.RolloutSettings`) chooses: `auto` uses the copy for multi-token
rollouts when training in fp32 on a CPU with native bf16 (one-token rollouts are a single
prefill, not worth a copy), and the trained model everywhere else.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any


def resolve_rollout_dtype(setting: str, train_dtype: str, device: str, max_new_tokens: int) -> str:
    """The dtype rollouts are sampled in: `setting` unless it is `auto` (see the module's docstring)."""
    from harness.models import cpu_has_native_bf16

    if setting != "auto":
        return setting
    on_cpu = str(device).startswith("cpu")
    if on_cpu and train_dtype == "float32" and max_new_tokens > 1 and cpu_has_native_bf16():
        return "bfloat16"
    return train_dtype


def _lora_layers(model: Any) -> dict[str, Any]:
    """{module name: peft LoRA layer} of a peft LoRA model (empty for any other model)."""
    from peft.tuners.lora import LoraLayer

    if not hasattr(model, "merge_and_unload"):
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class RolloutCopy:
    """A copy of `model` in `dtype` that samples for it. `context(copy)` is the context in which
    the copy's own trainable modules act (a ladder rung's steering), entered around each use."""

    def __init__(self, model: Any, dtype: str, context: Callable[[Any], contextlib.AbstractContextManager]):
        import torch

        from harness.models import contiguous_head

        self.source, self.context = model, context
        lora = _lora_layers(model)
        # a LoRA model is copied merged (W + BA in each adapted layer, recomputed at each sync: 0.1 s on the
        # embedded model): no per-layer adapter matmuls while sampling
        copied = copy.deepcopy(model)
        self.copy = (copied.merge_and_unload() if lora else copied).to(getattr(torch, dtype)).eval()
        self.copy.requires_grad_(False)
        # a patched instance `forward` (TRL's fused LM head) is a closure over the source model's:
        # deepcopy keeps it, and the copy would run the source
        for module in self.copy.modules():
            vars(module).pop("forward", None)
        contiguous_head(_base(self.copy))  # bf16 heads on strided inputs take torch's slow path on CPU
        modules = dict(self.copy.named_modules())
        self.merges = [(layer, modules[name.removeprefix("base_model.model.")]) for name, layer in lora.items()]
        copies = dict(self.copy.named_parameters())
        self.pairs = [  # trained parameters the copy holds as such (a rung's module); none when frozen
            (p, copies[name]) for name, p in model.named_parameters() if p.requires_grad and name in copies
        ]

    def sync(self) -> None:
        """Copy the trainable parameters' current values (cast) into the copy."""
        import torch

        with torch.no_grad():
            for source, target in self.pairs:
                target.copy_(source.detach())
            for layer, target in self.merges:
                delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
                target.weight.copy_(layer.base_layer.weight + delta)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """The synced copy, with its modules acting and the trained model's generation config."""
        self.sync()
        _base(self.copy).generation_config = _base(self.source).generation_config  # TRL overrides it per call
        with self.context(self.copy):
            yield self.copy

    def generate(self, generate: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`generate(copy, *args, **kwargs)` on the synced copy (`generate` takes the model first)."""
        with self.active() as model:
            return generate(model, *args, **kwargs)
