"""Shared prompts, computed once: the GRPO trainer's generation and loss with each distinct prompt
run through the model once per micro-batch, its KV cache serving every completion of it.

GRPO samples `samples_per_prompt` completions of each prompt, and TRL runs each (prompt,
completion) row whole: on arith_gen a prompt is ~230 tokens and a completion ~27, so with 8
samples per prompt most of the forward, backward and prefill work recomputes the same prompt.
Here the prompt (all but its last token) runs once per distinct prompt, with gradients, and its
KV cache is gathered to the rows (`Cache.reorder_cache`, differentiable); the rows then run only
their last prompt token and completion on top of it. The per-token log-probabilities and the
gradients are TRL's (the same positions, masks and fused LM head), to float rounding
(`tests/test_prefix.py`). Generation prefills each distinct prompt once in the same way, then
samples as `generate` does.

`--no-shared-prefix` (`GRPOSettings.shared_prefix`) turns both off. Multimodal inputs and MoE
auxiliary losses always take TRL's own path. Steering modules trained this way must act at every
position (the ladder's do): a steering session reads the prompt's length from its first call,
which is here the prefix of the distinct prompts.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from trl import GRPOTrainer


def _distinct(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(distinct prompt ids, their masks, each row's index among them), or None when no two rows share one."""
    key = torch.cat([ids, mask.to(ids.dtype)], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if len(unique) == len(ids):
        return None
    width = ids.size(1)
    return unique[:, :width], unique[:, width:].to(mask.dtype), inverse


def cache_kwarg(model: Any) -> str:
    """The name under which the model's forward and `generate` take a KV cache (`cache` from
    transformers 5.24 on, `past_key_values` before)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def prefix_cache(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, positions_from_mask: bool = False
) -> tuple[Any, int] | None:
    """The KV cache of each row's prompt but its last token, computed once per distinct prompt and
    gathered to the rows; and that prefix's length. None when no two rows share a prompt.

    The positions must follow the convention of the passes that continue from the cache:
    `generate` numbers a left-padded row's tokens from its first real one (`positions_from_mask`),
    a plain forward (TRL's scoring) from the padding's start."""
    found = _distinct(ids, mask)
    if found is None or ids.size(1) < 2:
        return None
    unique, unique_mask, inverse = found
    extra = {}
    if positions_from_mask:
        extra["position_ids"] = (unique_mask[:, :-1].long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=unique[:, :-1], attention_mask=unique_mask[:, :-1], use_cache=True, logits_to_keep=1, **extra)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.reorder_cache(inverse.to(ids.device))
    return cache, ids.size(1) - 1


def shared_prefix_generate(model: Any, generate: Any, *args: Any, **kwargs: Any) -> Any:
    """`generate` with each distinct prompt prefilled once (the rows' caches gathered from it)."""
    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    name = cache_kwarg(model)
    if args or ids is None or mask is None or kwargs.get(name) is not None:
        return generate(*args, **kwargs)
    with torch.no_grad():
        found = prefix_cache(model, ids, mask, positions_from_mask=True)
    if found is None:
        return generate(*args, **kwargs)
    return generate(*args, **{**kwargs, name: found[0]})


def generate_on(shared: bool, model: Any, *args: Any, **kwargs: Any) -> Any:
    """`model`'s own `generate`, with each distinct prompt prefilled once when `shared`."""
    if shared:
        return shared_prefix_generate(model, model.generate, *args, **kwargs)
    return model.generate(*args, **kwargs)


class PrefixSharingGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with shared prompts computed once, in generation and in the loss, and
    rollouts sampled from a copy of the policy in `rollout_dtype` where that is set
    (`rl.rollout_copy`; `rollout_context(model)`: the context in which a model's trainable
    modules act)."""

    shared_prefix = True
    rollout_dtype: str | None = None
    rollout_context = staticmethod(lambda model: contextlib.nullcontext())

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        self.rollout_copy = None
        if self.rollout_dtype is not None:
            from rl.rollout_copy import RolloutCopy

            self.rollout_copy = RolloutCopy(
                model, self.rollout_dtype, self.rollout_context
            )  # before `generate` is patched
        if getattr(model, "crl_bench_generate", False) or (not self.shared_prefix and self.rollout_copy is None):
            return
        if self.rollout_copy is not None:
            model.generate = functools.partial(
                self.rollout_copy.generate, functools.partial(generate_on, self.shared_prefix)
            )
        else:
            model.generate = functools.partial(shared_prefix_generate, model, model.generate)
        model.crl_bench_generate = True

    def _prepare_inputs(self, generation_batch: Any) -> Any:
        """TRL shuffles a step's rows before splitting them into micro-batches; here each prompt's
        samples stay together, so a micro-batch shares its prompts (the step's gradient is the same
        sum over its rows whatever their order)."""
        if not self.shared_prefix:
            return super()._prepare_inputs(generation_batch)
        import trl.trainer.grpo_trainer as trl_grpo

        original = trl_grpo.shuffle_sequence_dict
        trl_grpo.shuffle_sequence_dict = lambda batch: batch
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            trl_grpo.shuffle_sequence_dict = original

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        if not self.shared_prefix or compute_aux_loss or any(v is not None for v in multimodal.values()):
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                compute_entropy,
                compute_aux_loss,
                **multimodal,
            )
        batch_size = batch_size or input_ids.size(0)
        prompt = input_ids.size(1) - logits_to_keep
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            # the prefix through the bare module, the rest through `model`: under DDP one wrapped forward per backward
            found = prefix_cache(self.accelerator.unwrap_model(model), ids[:, :prompt], mask[:, :prompt])
            if found is None:  # no shared prompt in this chunk: TRL's own pass
                logps, entropies, _ = super()._get_per_token_logps_and_entropies(
                    model, ids, mask, logits_to_keep, None, compute_entropy
                )
            else:
                cache, cached = found
                rest = ids[:, cached:]  # the last prompt token, then the completion
                labels = rest.masked_fill(mask[:, cached:] == 0, -100)
                labels[:, :-logits_to_keep] = -100
                with self.accelerator.autocast():
                    outputs = model(
                        input_ids=rest,
                        attention_mask=mask,
                        labels=labels,
                        fused_lm_head=True,
                        **{cache_kwarg(model): cache},
                    )
                logps = outputs.log_probs[:, -logits_to_keep:]
                entropies = outputs.entropy[:, -logits_to_keep:] if compute_entropy else None
            all_logps.append(logps)
            if compute_entropy:
                all_entropies.append(entropies)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return torch.cat(all_logps, dim=0), entropies, None
