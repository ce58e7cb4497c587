"""Integration tests on the embedded Gemma 3 270M (on CPU, in the dtype `auto` picks); marked slow, run in CI."""

import pytest
import torch
from lm_eval.api.instance import Instance

from harness.models import model_info
from harness.vectors import SteeringVectors

pytestmark = pytest.mark.slow

PAIRS = [
    (f"Review: I thought this movie was {adj}, I {verb} it.\nSentiment:", f" {label}")
    for adj, verb in (("great", "loved"), ("awful", "hated"), ("dull", "disliked"))
    for label in ("positive", "negative")
]


def _ll(lm):
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]
    return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def test_embedded_model_description():
    info = model_info("gemma-3-270m")
    assert (info.n_layers, info.d_model, info.vocab_size) == (18, 640, 262144)


def test_embedded_wrappers_agree_with_lm_eval_and_sentiment_is_read(embedded_dir, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.models.huggingface import HFLM

    from harness.lm_models import LeanHFLM, VectorSteeredLM
    from harness.models import cpu_dtype

    # the dtype our `auto` picks on this CPU, named explicitly: lm-eval's own `auto` is the checkpoint's (bf16)
    common = {"device": "cpu", "dtype": cpu_dtype(), "batch_size": 6}
    base = _ll(LeanHFLM(pretrained="gemma-3-270m", **common))
    torch.testing.assert_close(base, _ll(HFLM(pretrained=embedded_dir, **common)), rtol=0, atol=2e-2)
    # the base model prefers the right label for plain reviews
    assert base[0] > base[1] and base[3] > base[2]
    vectors = SteeringVectors({6: torch.nn.functional.normalize(torch.randn(640), dim=0)}, coefficient=300.0)
    vectors.save(tmp_path / "steer")
    ours = _ll(VectorSteeredLM(pretrained="gemma-3-270m", steer=str(tmp_path / "steer"), **common))
    theirs = _ll(
        SteeredModel(
            pretrained=embedded_dir, steer_path=str(vectors.export_lmeval_steered(tmp_path / "s.pt")), **common
        )
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-2)
    assert max(abs(a - b) for a, b in zip(ours, base)) > 0.05


def test_shared_prefix_generation_matches_generate_on_left_padded_prompts(embedded_dir):
    """GRPO's generation with each distinct prompt prefilled once samples what `generate` samples,
    left-padded rows included (the tiny model cannot tell: a prefix numbered from the padding's
    start instead of the first real token left its greedy tokens unchanged, but not the embedded
    model's, where it changed 6 of 8 rows)."""
    from harness.models import load_causal_lm
    from harness.padding import batch
    from harness.prompts import task_prompts
    from harness.tasks import load_task
    from rl.prefix import shared_prefix_generate

    model, tokenizer = load_causal_lm(embedded_dir, dtype="float32", device="cpu")
    task = load_task("arith_gen")
    prompts = [p for p in task_prompts(task, list(task.training_docs())[:4]) for _ in range(2)]
    ids, mask = batch(tokenizer, prompts, "cpu")
    assert len(set(mask.sum(-1).tolist())) > 1  # prompts of different lengths: padded rows
    settings = dict(max_new_tokens=16, do_sample=True, temperature=0.8, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
    torch.manual_seed(0)
    shared = shared_prefix_generate(model, model.generate, input_ids=ids, attention_mask=mask, **settings)
    assert torch.equal(plain, shared)
