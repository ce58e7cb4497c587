"""The one steering mechanism: interventions on the decoder blocks' residual stream.

Every activation intervention in crl-bench (steering vectors, SAE features, the CRL
controller, patching for analysis) goes through `steer()`. An intervention says at which
layers it acts and, given the residual stream after a decoder block for the positions the
model is processing right now, returns the delta to add.

Semantics that every method relies on:

- **Pad-aware.** The delta at padding positions is zeroed here, whatever the intervention
  returns, using the attention mask of the current model call.
- **KV-cached generation.** Under a KV cache each forward sees only the new token(s), so
  each position is steered exactly once; `StepContext.positions` gives each token's index
  within its own (unpadded) sequence, so position-dependent interventions behave the same
  with and without a cache.
- **One session per batch.** The first forward inside a `steer()` block is the prompt:
  it fixes each row's prompt length, which is what `positions="last"` (the answer
  position of a one-token task) and `positions="generated"` refer to. Enter `steer()` once
  per batch (our lm-eval wrappers do so in `_model_call` / `_model_generate`). A
  log-likelihood request's prompt is its context: the wrappers pass `prompt_lengths`, so
  `"last"` is the context's last token (the answer position) and `"generated"` the
  continuation tokens, whether the continuation runs in the context's pass or after it.
- **Removable.** Hooks are removed on exit, exceptions included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from harness.models import find_decoder_layers

Positions = Literal["all", "last", "generated"]
POSITIONS: tuple[str, ...] = ("all", "last", "generated")


@dataclass
class StepContext:
    """What an intervention knows about the current forward pass, at one layer.

    Shapes: B = batch, T = positions processed in this call (1 per step under a KV cache).
    """

    layer: int
    mask: Tensor  # Bool[B, T]: real (non-padding) tokens
    positions: Tensor  # Long[B, T]: index of each token within its unpadded sequence
    prompt_lengths: Tensor  # Long[B]: real tokens in each row's prompt (first call of the session)
    past_length: int  # tokens already in the KV cache
    call_index: int  # 0 for the first forward of the session (the prompt)
    input_ids: Tensor | None  # Long[B, T] when the model was called with token ids

    def select(self, positions: Positions) -> Tensor:
        """Bool[B, T] mask of the positions named by `positions`."""
        if positions == "all":
            return self.mask
        if positions == "last":
            return self.mask & (self.positions == self.prompt_lengths[:, None] - 1)
        if positions == "generated":
            return self.mask & (self.positions >= self.prompt_lengths[:, None])
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


class Intervention(Protocol):
    """Anything with `layers` and a `delta(hidden, ctx)` returning Float[B, T, D] or None."""

    layers: Sequence[int]

    def delta(self, hidden: Tensor, ctx: StepContext) -> Tensor | None: ...


@dataclass
class AddVectors:
    """Add `coefficient * vectors[layer]` at the chosen positions (activation addition)."""

    vectors: dict[int, Tensor]  # layer -> Float[D]
    coefficient: float = 1.0
    positions: Positions = "all"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def delta(self, hidden: Tensor, ctx: StepContext) -> Tensor:
        # Same arithmetic as lm-eval's `steered` model (vector cast to the model dtype,
        # then scaled), so both give bit-identical activations.
        vector = self.vectors[ctx.layer].to(device=hidden.device, dtype=hidden.dtype) * self.coefficient
        return ctx.select(self.positions)[..., None].to(hidden.dtype) * vector


@dataclass
class PolicyIntervention:
    """A per-token policy: `policy(hidden Float[B,T,D], ctx) -> delta Float[B,T,D] | None`."""

    policy: Callable[[Tensor, StepContext], Tensor | None]
    layers: Sequence[int]

    def delta(self, hidden: Tensor, ctx: StepContext) -> Tensor | None:
        return self.policy(hidden, ctx)


@dataclass
class Session:
    """Per-batch state recorded from the model's own forward calls."""

    calls: int = 0
    mask: Tensor | None = None
    positions: Tensor | None = None
    prompt_lengths: Tensor | None = None
    past_length: int = 0
    input_ids: Tensor | None = None
    steered_positions: int = field(default=0)  # how many (row, position, layer) deltas were applied
    given_prompt_lengths: Tensor | None = None  # set by the caller: the prompt ends there, not at the first call's end

    def on_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        current = input_ids if input_ids is not None else embeds
        if current is None:
            raise ValueError("steered model was called without input_ids or inputs_embeds")
        batch, length = current.shape[:2]
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            past = _cache_length(kwargs)
            full = torch.ones(batch, past + length, dtype=torch.long, device=current.device)
        elif attention_mask.ndim == 2:
            full = attention_mask.long()
            past = full.shape[1] - length
        else:
            raise ValueError(
                "steering needs the 2-D (batch, sequence) attention mask; the model was called "
                f"with a {attention_mask.ndim}-D mask. Pass the tokenizer's attention_mask instead."
            )
        self.positions = (full.cumsum(-1) - 1)[:, -length:]
        self.mask = full[:, -length:].bool()
        if self.calls == 0:
            given = self.given_prompt_lengths
            self.prompt_lengths = full.sum(-1) if given is None else given.to(full.device)
        self.past_length = past
        self.input_ids = input_ids
        self.calls += 1

    def context(self, layer: int) -> StepContext:
        return StepContext(
            layer=layer,
            mask=self.mask,
            positions=self.positions,
            prompt_lengths=self.prompt_lengths,
            past_length=self.past_length,
            call_index=self.calls - 1,
            input_ids=self.input_ids,
        )


def _cache_length(kwargs: dict[str, Any]) -> int:
    cache_position = kwargs.get("cache_position")
    if cache_position is not None and cache_position.numel():
        return int(cache_position[0])
    for key in ("past_key_values", "cache"):  # transformers >= 5.24 passes the KV cache as `cache`
        past = kwargs.get(key)
        if past is not None and hasattr(past, "get_seq_length"):
            return int(past.get_seq_length())
    position_ids = kwargs.get("position_ids")  # no mask and no cache argument: unpadded, so positions are shared
    if position_ids is not None and position_ids.numel():
        return int(position_ids.reshape(-1)[0])
    return 0


def _apply(intervention: Intervention, layer: int, session: Session, module, args, output):
    hidden = output[0] if isinstance(output, tuple) else output
    ctx = session.context(layer)
    if ctx.mask is None or ctx.mask.shape != hidden.shape[:2]:
        raise RuntimeError(
            f"layer {layer} saw hidden states of shape {tuple(hidden.shape)} but the model call "
            f"had mask shape {None if ctx.mask is None else tuple(ctx.mask.shape)}; steer() must "
            "wrap calls of the model it was given"
        )
    delta = intervention.delta(hidden, ctx)
    if delta is None:
        return output
    if delta.shape != hidden.shape:
        raise ValueError(
            f"intervention at layer {layer} returned a delta of shape {tuple(delta.shape)}; "
            f"it must match the hidden states {tuple(hidden.shape)}"
        )
    keep = ctx.mask[..., None].to(hidden.dtype)  # never steer padding
    steered = hidden + delta.to(hidden.dtype) * keep
    session.steered_positions += int(ctx.mask.sum())
    return (steered, *output[1:]) if isinstance(output, tuple) else steered


@contextmanager
def steer(
    model: nn.Module, interventions: Sequence[Intervention], prompt_lengths: Tensor | None = None
) -> Iterator[Session]:
    """Apply `interventions` to every forward of `model` inside the block.

    `prompt_lengths` (Long[B]) says where each row's prompt ends when the first call is not the
    whole prompt, or is more than it: a log-likelihood request's continuation tokens fed after
    its context (scored as if generated), or a continuation pass over a cached context.
    Yields the `Session` (batch state and a count of steered positions).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _, layers = find_decoder_layers(base)
    session = Session(given_prompt_lengths=prompt_lengths)
    handles = []
    try:
        handles.append(base.register_forward_pre_hook(session.on_call, with_kwargs=True))
        for intervention in interventions:
            for layer in intervention.layers:
                if not 0 <= layer < len(layers):
                    raise ValueError(
                        f"cannot steer layer {layer}: the model has {len(layers)} decoder layers "
                        f"(valid: 0..{len(layers) - 1})"
                    )
                hook = partial(_apply, intervention, layer, session)
                handles.append(layers[layer].register_forward_hook(hook))
        yield session
    finally:
        for handle in handles:
            handle.remove()
