"""Every piece that names modules, on each layout users run (issue 23): tiny random Gemma 3, Gemma 2
(soft-capping, a sliding window shorter than the prompts), GPT-2, Qwen2 and Llama (no pad
token). KV-cached steering, lean log-likelihoods against lm-eval's `hf`, circuits' attention
and MLP nodes, and generation through `crl_steered`'s hook path."""

import copy

import pytest
import torch

from harness.models import attention_output, find_decoder_layers, mlp_of
from harness.steering import PolicyIntervention, steer

LAYOUTS = ["gemma3", "gemma2", "gpt2", "qwen2", "llama"]
# the MLP's output projection in each layout: the one weight the circuits test changes
MLP_OUT = {"gemma3": "down_proj", "gemma2": "down_proj", "gpt2": "c_proj", "qwen2": "down_proj", "llama": "down_proj"}


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request, architecture_dirs, tiny_dir):
    from harness.models import load_causal_lm

    path = tiny_dir if request.param == "gemma3" else architecture_dirs[request.param]
    model, tokenizer = load_causal_lm(path, dtype="float32", device="cpu")
    return request.param, path, model.eval(), tokenizer


def test_pad_token_is_end_of_sequence_where_the_tokenizer_has_none(layout):
    name, _, _, tokenizer = layout
    assert tokenizer.pad_token is not None
    if name in ("gpt2", "llama"):  # saved without one, as GPT-2's and Llama 3's tokenizers are
        assert tokenizer.pad_token == tokenizer.eos_token


def test_kv_cached_steering_steers_each_token_once_and_matches_no_cache(layout):
    _, _, model, tokenizer = layout
    tokenizer.padding_side = "left"
    # the longer prompt is past Gemma 2's sliding window (4), so its local layers mask
    batch = tokenizer(["the movie was", "I think that this film was really"], return_tensors="pt", padding=True)
    torch.manual_seed(1)
    direction = torch.nn.functional.normalize(torch.randn(64), dim=0)
    counts: list[int] = []

    def policy(hidden, ctx):  # depends on the hidden state itself, as a CRL controller would
        counts.append(int(ctx.mask.sum()))
        return torch.tanh(hidden @ direction)[..., None] * direction * 5.0

    outputs, cached_counts = {}, []
    for use_cache in (True, False):
        counts.clear()
        with torch.no_grad(), steer(model, [PolicyIntervention(policy, layers=[1])]):
            outputs[use_cache] = model.generate(
                **batch, max_new_tokens=5, do_sample=False, use_cache=use_cache, pad_token_id=tokenizer.pad_token_id
            )
        if use_cache:
            cached_counts = list(counts)
    assert torch.equal(outputs[True], outputs[False])
    assert cached_counts == [int(batch["attention_mask"].sum())] + [2] * 4  # the prompt once, then each new token


def test_lean_loglikelihoods_equal_lm_eval_hf(layout):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.lm_models import LeanHFLM

    _, _, model, tokenizer = layout
    pairs = [
        ("Review: I loved it.\nSentiment:", " positive"),
        ("Question: What is 2+2?\nAnswer:", " four, of course"),
        ("A longer context, past the sliding window of the local layers, with several words", " and a tail"),
    ]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    common = {"tokenizer": tokenizer, "batch_size": 2}  # the loaded fp32 model, as RLVR's validation passes it
    ours = LeanHFLM(pretrained=model, **common).loglikelihood(requests, disable_tqdm=True)
    theirs = HFLM(pretrained=model, **common).loglikelihood(requests, disable_tqdm=True)
    torch.testing.assert_close([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=1e-5, atol=1e-4)
    assert [g for _, g in ours] == [g for _, g in theirs]


def test_circuit_nodes_patch_the_one_changed_mlp(layout):
    from crl_bench.analyses.circuits import attribution, make_batches, patched_metric, recovered, top_nodes
    from harness.tasks import load_task
    from rl.crl.rollouts import build_problem

    name, _, model, tokenizer = layout
    _, blocks = find_decoder_layers(model)
    assert all(attention_output(b) is not None and mlp_of(b) is not None for b in blocks)
    tokenizer.padding_side = "right"
    task = load_task("arith_mc")  # one-token choices under every stand-in's tokenizer (Qwen2's splits " positive")
    problem = build_problem(task, list(task.validation_docs())[:6], tokenizer, seed=0)
    batches = make_batches(tokenizer, problem, 3, "cpu")
    method = copy.deepcopy(model)
    _, method_blocks = find_decoder_layers(method)
    with torch.no_grad():
        getattr(mlp_of(method_blocks[2]), MLP_OUT[name]).weight.mul_(3.0)
    scores, metrics = attribution(model, method, batches, n_heads=2)
    assert metrics["method"] != pytest.approx(metrics["base"])
    assert all(scores.get(("mlp", layer, 0), 0.0) == 0 for layer in (0, 1))  # nothing upstream moved
    assert ("mlp", 2, 0) in top_nodes(scores, 3, ("head", "mlp"))
    patched = patched_metric(model, method, batches, 2, [("mlp", 2, 0)])
    assert recovered(patched, metrics["base"], metrics["method"], min_change=1e-9) == pytest.approx(1.0, abs=1e-4)
