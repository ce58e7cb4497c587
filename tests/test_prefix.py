"""Shared prompts computed once (`rl.prefix`): the GRPO loss's per-token log-probabilities and
their gradients, and greedy generation, are TRL's own, for LoRA and for a steering module."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch


def _rows(tokenizer, prompts: list[str], samples: int, completion_tokens: int = 5):
    """GRPO's layout: each prompt repeated `samples` times, left-padded, then right-padded
    completions of different lengths."""
    torch.manual_seed(0)
    encoded = [tokenizer(p)["input_ids"] for p in prompts for _ in range(samples)]
    width = max(len(e) for e in encoded)
    prompt_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    prompt_mask = torch.zeros_like(prompt_ids)
    for i, e in enumerate(encoded):
        prompt_ids[i, width - len(e) :], prompt_mask[i, width - len(e) :] = torch.tensor(e), 1
    completion = torch.randint(10, 2000, (len(encoded), completion_tokens))
    completion_mask = torch.ones_like(completion)
    for i in range(len(encoded)):
        completion_mask[i, 2 + i % (completion_tokens - 2) :] = 0  # completions of 2..4 tokens, then padding
    completion = completion.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return torch.cat([prompt_ids, completion], 1), torch.cat([prompt_mask, completion_mask], 1), completion_tokens


def _trainer(shared: bool):
    from rl.prefix import PrefixSharingGRPOTrainer

    trainer = PrefixSharingGRPOTrainer.__new__(PrefixSharingGRPOTrainer)  # only what the log-prob pass reads
    trainer.accelerator = SimpleNamespace(
        autocast=contextlib.nullcontext, is_main_process=True, unwrap_model=lambda model: model
    )
    trainer.shared_prefix = shared
    return trainer


@pytest.mark.parametrize("trained", ["lora", "steering"])
def test_shared_prefix_log_probs_and_gradients_are_trls(tiny_dir, trained):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from harness.steering import AddVectors, steer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    vector = torch.zeros(64, requires_grad=True)
    if trained == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        params = [p for p in model.parameters() if p.requires_grad]
        active = contextlib.nullcontext
    else:
        model.requires_grad_(False)
        params = [vector]
        with torch.no_grad():
            vector.normal_(0, 0.5)
        active = lambda: steer(model, [AddVectors({1: vector})])  # noqa: E731
    model.train()
    ids, mask, keep = _rows(tokenizer, ["1+2=", "The cat sat on the mat and then", "7*8="], samples=3)
    results = {}
    for shared in (False, True):
        for p in params:
            p.grad = None
        with active():
            logps, entropies, _ = _trainer(shared)._get_per_token_logps_and_entropies(
                model, ids, mask, keep, batch_size=6, compute_entropy=True
            )
        completion_mask = mask[:, -keep:].float()
        ((logps * completion_mask).sum() + (entropies * completion_mask).sum()).backward()
        results[shared] = (logps.detach(), entropies.detach(), [p.grad.clone() for p in params])
    (a_logps, a_ent, a_grads), (b_logps, b_ent, b_grads) = results[False], results[True]
    completion_mask = mask[:, -keep:].bool()
    torch.testing.assert_close(b_logps[completion_mask], a_logps[completion_mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_ent[completion_mask], a_ent[completion_mask], rtol=1e-5, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in a_grads)
    for a, b in zip(a_grads, b_grads):
        # float rounding differs by processor: the absolute tolerance scales with the gradient's size
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_shared_prefix_generation_is_generates(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.padding import batch
    from rl.prefix import shared_prefix_generate

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ids, mask = batch(tokenizer, ["1+2=", "1+2=", "The cat sat on", "The cat sat on", "9-4="], "cpu")
    settings = dict(
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
    shared = shared_prefix_generate(model, model.generate, input_ids=ids, attention_mask=mask, **settings)
    assert torch.equal(plain.sequences, shared.sequences)
    # every step's logits, left-padded rows included (their positions follow generate's numbering)
    for a, b in zip(plain.logits, shared.logits):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
