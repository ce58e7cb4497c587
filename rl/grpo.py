"""What crl-bench changes in TRL's GRPO, in one place.

TRL's fused LM head (`trl.trainer.utils`, 1.16) scores only the completion tokens on devices
with Triton; everywhere else it scores every position of prompt and completion, full
vocabulary, then masks the prompt out: fixed tile shapes spare compilers such as Neuron's a
recompilation per batch. On a CPU nothing is compiled, so that is pure waste: on arith_gen a
rollout is ~230 prompt tokens and ~16 completion tokens, and every prompt position pays for
262k logits forward and backward. `score_completions_only` makes the CPU take TRL's own compact
path (the same per-token log-probabilities, computed for the completion tokens only).
"""

from __future__ import annotations

from typing import Any


def score_completions_only() -> bool:
    """Route CPU tensors through TRL's compact scoring path; True when it is in place (TRL
    versions without the switch keep their own behaviour)."""
    from trl.trainer import utils

    original = getattr(utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "crl_bench_compact", False):
        return True

    def compact(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    compact.crl_bench_compact = True  # type: ignore[attr-defined]
    utils._use_triton = compact
    return True
