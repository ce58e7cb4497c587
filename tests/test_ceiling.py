"""The single-feature steering ceiling (`crl_bench.analyses.ceiling`): unsteered it is plain greedy decoding; at a
deviation from the gold solution it finds a feature that puts the gold token back on top, and
that feature, replayed through the steering mechanism, gives the same completion."""

from __future__ import annotations

import re

import pytest
import torch

LAYER = 3  # the tiny model's last decoder layer
GOOD = 5
PROMPT = "Question: Tom has 3 apples and buys 4 more. How many apples?\nAnswer:"


@pytest.fixture(scope="module")
def setup(tiny_model):
    model, tokenizer = tiny_model
    embed = model.get_input_embeddings().weight.detach()  # tied: also the unembedding
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)[
            0, ids.shape[1] :
        ].tolist()
    target = next(t for t in range(1000, embed.shape[0]) if t != greedy[0])
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(16, 64), dim=-1)
    directions[GOOD] = embed[target] / embed[target].norm()  # pushes `target` through the tied head
    return model, tokenizer, ids, greedy, target, directions


def _decode(setup, gold, scales, steer_on=True, top=4, only=None):
    from crl_bench.analyses.ceiling import oracle_decode

    model, tokenizer, *_, directions = setup
    return oracle_decode(
        model,
        tokenizer,
        LAYER,
        directions,
        scales,
        PROMPT,
        gold,
        max_new_tokens=4,
        until=[],
        top=top,
        steer_on=steer_on,
        only=only,
    )


def test_unsteered_is_greedy_and_a_followed_solution_needs_no_fix(setup):
    model, tokenizer, ids, greedy, target, directions = setup
    text, events = _decode(setup, [target], torch.full((16,), 100.0), steer_on=False)
    assert text == tokenizer.decode(greedy) and events == []
    text, events = _decode(setup, greedy, torch.full((16,), 100.0))  # the model already writes the solution
    assert text == tokenizer.decode(greedy) and events == []


def test_a_deviation_is_fixed_by_a_feature_that_replays_to_the_same_completion(setup):
    from harness.steering import PolicyIntervention, steer
    from rl.crl.controller import COEFS

    model, tokenizer, ids, greedy, target, directions = setup
    scales = torch.full((16,), 100.0)
    text, events = _decode(setup, [target], scales)
    assert len(events) == 1 and events[0]["step"] == 0
    assert (events[0]["gold"], events[0]["model"]) == (target, greedy[0])
    feature, coef = events[0]["feature"], events[0]["coef"]
    assert feature is not None and coef in COEFS
    completion = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert completion[0] == target
    # the same feature at the prompt's last token, through the one steering mechanism
    prompt_last = ids.shape[1] - 1

    def policy(hidden, ctx):
        at = (ctx.positions == prompt_last)[..., None].to(hidden.dtype)
        return at * (directions[feature] * scales[feature] * coef).to(hidden.dtype)

    with torch.no_grad(), steer(model, [PolicyIntervention(policy, [LAYER])]):
        replay = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert tokenizer.decode(replay[0, ids.shape[1] :]) == text
    # the weakest coefficient that works is kept: the next weaker one with that feature does not
    weaker = [c for c in COEFS if c < coef]
    if weaker:

        def weak(hidden, ctx):
            at = (ctx.positions == prompt_last)[..., None].to(hidden.dtype)
            return at * (directions[feature] * scales[feature] * weaker[-1]).to(hidden.dtype)

        with torch.no_grad(), steer(model, [PolicyIntervention(weak, [LAYER])]):
            logits = model(input_ids=ids).logits[0, -1]
        assert int(logits.argmax()) != target


def test_only_fixes_the_deviations_it_names(setup):
    model, tokenizer, ids, greedy, target, directions = setup
    scales = torch.full((16,), 100.0)
    assert _decode(setup, [target], scales, only="^this token does not exist$") == (tokenizer.decode(greedy), [])
    named = "^" + re.escape(tokenizer.decode([target])) + "$"
    text, events = _decode(setup, [target], scales, only=named)
    assert tokenizer(text, add_special_tokens=False)["input_ids"][0] == target and events[0]["feature"] is not None


def test_an_unfixable_deviation_is_recorded_and_left_greedy(setup):
    model, tokenizer, ids, greedy, target, directions = setup
    text, events = _decode(setup, [target], torch.full((16,), 1e-6))  # features far too weak to move anything
    assert text == tokenizer.decode(greedy)
    assert events == [{"step": 0, "gold": target, "model": greedy[0], "feature": None, "coef": None}]


def test_ceiling_config_refuses_what_it_cannot_do():
    from crl_bench.analyses.ceiling import CeilingConfig

    with pytest.raises(ValueError, match="--top must be at least 1"):
        CeilingConfig(top=0)
    with pytest.raises(ValueError, match="--limit must be at least 1"):
        CeilingConfig(limit=0)
    with pytest.raises(ValueError, match="not a regular expression"):
        CeilingConfig(only="([+-]")


def test_ceiling_run_writes_its_record_and_refuses_a_multiple_choice_task(
    tiny_dir, tiny_sae_dir, tmp_path, monkeypatch
):
    import json

    from crl_bench.cli import main

    monkeypatch.setenv("CRL_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ceiling"
    args = [
        "ceiling",
        "--model",
        tiny_dir,
        "--sae",
        tiny_sae_dir,
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--top",
        "2",
        "--bank-prompts",
        "8",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    record = json.loads((out / "arith_gen" / "ceiling.json").read_text())
    s = record["summary"]
    assert (s["n"], s["layer"], s["split"]) == (2, 2, "validation")
    assert len(record["greedy"]["scores"]) == len(record["oracle"]["scores"]) == 2
    assert record["greedy"]["deviations"] == [[], []]  # unsteered: nothing tried
    assert (
        s["deviations"] == sum(len(row) for row in record["oracle"]["deviations"]) >= 1
    )  # random model leaves the solution
    assert record["manifest"]["kind"] == "ceiling" and record["manifest"]["dtype"] == "float32"
    assert "| oracle |" in (out / "arith_gen" / "ceiling.md").read_text()
    assert main(args[:1] + ["--task", "toy_sentiment"] + args[1:]) == 2  # a multiple-choice task: refused


def test_a_killed_ceiling_run_resumes_where_it_stopped(tiny_dir, tiny_sae_dir, tmp_path, monkeypatch):
    import json

    from crl_bench.analyses import ceiling
    from harness.models import model_slug

    monkeypatch.setenv("CRL_BENCH_CACHE", str(tmp_path / "cache"))
    config = ceiling.CeilingConfig(
        model=tiny_dir,
        sae=tiny_sae_dir,
        limit=3,
        max_new_tokens=2,
        top=1,
        bank_prompts=8,
        device="cpu",
        dtype="float32",
        out=str(tmp_path / "ceiling"),
    )
    real, calls = ceiling.oracle_decode, []

    def dies_after_four(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(kwargs["steer_on"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ceiling, "oracle_decode", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        ceiling.run(config)
    partial = tmp_path / "cache" / "ceiling" / model_slug(tiny_dir) / "arith_gen-validation.jsonl"
    assert len(partial.read_text().splitlines()) == 4  # the greedy pass and one oracle document, kept
    calls.clear()
    monkeypatch.setattr(ceiling, "oracle_decode", lambda *a, **k: calls.append(k["steer_on"]) or real(*a, **k))
    path = ceiling.run(config)
    assert calls == [True, True]  # only the two oracle documents left
    assert json.loads(path.read_text())["summary"]["n"] == 3 and len(partial.read_text().splitlines()) == 6
    calls.clear()
    config.top, config.limit = 2, 4  # other oracle settings and one more document: the greedy decodes are reused
    ceiling.run(config)
    assert calls == [False, True, True, True, True]
