"""Shared-prefix log-likelihoods (issue 28): each distinct context runs once and its KV cache
serves all of its continuations, in every wrapper, with the scores of lm-eval's `hf` (fp32:
1e-5), the one-pass path's, and steering applied once per position."""

import json

import pytest
import torch
from lm_eval.api.instance import Instance

# contexts longer than the tiny model's sliding window (8), each with several multi-token
# continuations of different lengths (and one-token ones), as ARC and MMLU items are
ITEMS = [
    (
        "Question: Which of these is a mammal that lives in the sea?\nAnswer:",
        [" a whale", " a shark", " tuna", " an octopus with eight arms"],
    ),
    ("Question: What do plants need to make food?\nAnswer:", [" sunlight", " darkness and cold", " salt"]),
    ("7-3=", ["4", "5", " four"]),
    ("Review: I loved it.\nSentiment:", [" positive", " negative"]),
]
PAIRS = [(context, choice) for context, choices in ITEMS for choice in choices] + [
    (ITEMS[0][0], " a whale")
]  # and a repeat
COMMON = {"device": "cpu", "dtype": "float32", "batch_size": 3}


def _ll(lm):
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]
    return lm.loglikelihood(requests, disable_tqdm=True)


def _assert_same(ours, theirs, atol=1e-5):
    torch.testing.assert_close([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=0, atol=atol)
    assert [g for _, g in ours] == [g for _, g in theirs]


def _fed_tokens(lm) -> tuple[list, list[int]]:
    """The log-likelihoods and how many tokens each model call fed, for one scoring."""
    fed = []
    handle = lm.model.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(int(kwargs["attention_mask"][:, -kwargs["input_ids"].shape[1] :].sum())),
        with_kwargs=True,
    )
    try:
        return _ll(lm), fed
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def both_paths(tiny_dir):
    from harness.lm_models import LeanHFLM

    return LeanHFLM(pretrained=tiny_dir, **COMMON), LeanHFLM(pretrained=tiny_dir, shared_prefix=False, **COMMON)


def test_each_context_runs_once_with_the_scores_of_lm_eval_hf(tiny_dir, both_paths):
    from lm_eval.models.huggingface import HFLM

    shared_lm, one_pass_lm = both_paths
    shared, fed = _fed_tokens(shared_lm)
    one_pass, fed_one_pass = _fed_tokens(one_pass_lm)
    _assert_same(shared, _ll(HFLM(pretrained=tiny_dir, **COMMON)))
    _assert_same(one_pass, shared)
    contexts = sum(len(shared_lm.tok_encode(context)) for context, _ in ITEMS)
    continuations = sum(len(shared_lm.tok_encode(c + x)) - len(shared_lm.tok_encode(c)) - 1 for c, x in PAIRS)
    # every distinct context once, then only the continuation tokens after it
    assert sum(fed) == contexts + continuations < sum(fed_one_pass)


@pytest.mark.parametrize("positions", ["all", "last", "generated"])
def test_steering_acts_once_per_position_in_both_passes(both_paths, positions):
    """A vector at every position, at the context's last token (the answer position), or at the
    continuation tokens (scored as if generated): the same log-likelihoods from both paths."""
    from harness.steering import AddVectors

    shared, one_pass = both_paths
    base = _ll(shared)
    torch.manual_seed(0)
    vector = AddVectors({1: torch.randn(64) * 4}, positions=positions)
    try:
        shared.active = one_pass.active = [vector]
        steered = _ll(shared)
        _assert_same(steered, _ll(one_pass))
    finally:
        shared.active = one_pass.active = []
    moved = [abs(a - b) > 1e-4 for (a, _), (b, _) in zip(steered, base)]
    assert any(moved)
    if positions == "generated":  # continuation tokens are steered, so one-token continuations never move
        one_token = [len(shared.tok_encode(c + x)) - len(shared.tok_encode(c)) == 1 for c, x in PAIRS]
        assert not any(m for m, single in zip(moved, one_token) if single) and any(one_token)


def test_crl_decides_once_per_context_at_its_last_token(tiny_dir, random_controller, tmp_path):
    from rl.crl.lm import CRLSteeredLM

    logs = {}
    scores = {}
    for shared in (True, False):
        logs[shared] = tmp_path / f"decisions-{shared}.jsonl"
        lm = CRLSteeredLM(
            pretrained=tiny_dir,
            controller=str(random_controller),
            log_interventions=str(logs[shared]),
            shared_prefix=shared,
            **COMMON,
        )
        contexts = [c for c, _ in ITEMS]
        requests = [
            Instance("loglikelihood", {}, p, i, metadata=("items", contexts.index(p[0]), 1))
            for i, p in enumerate(PAIRS)
        ]
        scores[shared] = lm.loglikelihood(requests, disable_tqdm=True)
    _assert_same(scores[True], scores[False])
    decisions = [json.loads(line) for line in logs[True].read_text().splitlines()]
    assert sorted(d["item"] for d in decisions) == list(range(len(ITEMS)))  # one per distinct context
    one_pass = {(d["item"], d["position"], d["feature"]) for d in map(json.loads, logs[False].read_text().splitlines())}
    assert {(d["item"], d["position"], d["feature"]) for d in decisions} == one_pass
