"""The one steering mechanism on a tiny Gemma 3: exact deltas, padding, positions, cleanup (KV-cached
steering on every layout: tests/test_layouts.py)."""

import pytest
import torch
from torch.testing import assert_close

from harness.models import describe
from harness.steering import AddVectors, PolicyIntervention, steer


def _layer_outputs(model, batch, layer):
    captured = {}
    handle = model.model.layers[layer].register_forward_hook(
        lambda m, a, out: captured.__setitem__("h", (out[0] if isinstance(out, tuple) else out).detach().clone())
    )
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    return captured["h"]


def _left_padded(tokenizer, texts):
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True)


def test_add_vector_adds_exactly_coef_times_vector_on_real_tokens_only(tiny_model):
    model, tokenizer = tiny_model
    batch = _left_padded(tokenizer, ["a short one", "a much longer prompt than the other one"])
    vector = torch.randn(64)
    clean = _layer_outputs(model, batch, 2)
    with steer(model, [AddVectors({2: vector}, coefficient=3.0)]):
        steered = _layer_outputs(model, batch, 2)
    mask = batch["attention_mask"].bool()
    assert_close(steered[mask] - clean[mask], (3.0 * vector).expand(int(mask.sum()), -1), rtol=1e-4, atol=1e-4)
    assert_close(steered[~mask], clean[~mask])  # padding is never steered
    assert (~mask).any()


def test_position_selection_last_and_generated(tiny_model):
    model, tokenizer = tiny_model
    batch = _left_padded(tokenizer, ["one two", "one two three four five"])
    seen = []

    def policy(hidden, ctx):
        seen.append(
            (ctx.select("last").clone(), ctx.select("generated").clone(), ctx.positions.clone(), ctx.mask.clone())
        )
        return None

    with torch.no_grad(), steer(model, [PolicyIntervention(policy, layers=[1])]):
        model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    last, generated, positions, mask = seen[0]
    lengths = batch["attention_mask"].sum(-1)
    # the prompt pass: "last" marks each row's final prompt token, nothing is "generated" yet
    assert last.sum(-1).tolist() == [1, 1]
    assert positions[last].tolist() == (lengths - 1).tolist()
    assert not generated.any()
    # decoding passes: one new token per row, all of them "generated"
    assert all(g.shape == (2, 1) and g.all() for _, g, _, _ in seen[1:])
    assert len(seen) == 3


@pytest.mark.parametrize("texts", [["one two three"], ["one two three", "four five six"]])
def test_positions_count_on_through_decoding_without_padding(tiny_model, texts):
    """Unpadded batches decode without an attention mask, and transformers >= 5.24 passes the
    KV cache as `cache` (no `past_key_values`, no `cache_position`): the positions still
    count on from the prompt, so generated tokens are "generated"."""
    model, tokenizer = tiny_model
    batch = tokenizer(texts, return_tensors="pt")
    assert batch["attention_mask"].all()
    seen = []

    def policy(hidden, ctx):
        seen.append((ctx.positions.clone(), ctx.select("generated").clone()))
        return None

    with torch.no_grad(), steer(model, [PolicyIntervention(policy, layers=[1])]):
        model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    n = batch["input_ids"].shape[1]
    assert [p.tolist() for p, _ in seen] == [[list(range(n))] * len(texts), [[n]] * len(texts), [[n + 1]] * len(texts)]
    assert not seen[0][1].any() and all(g.all() for _, g in seen[1:])


def test_hooks_are_removed_after_an_exception(tiny_model):
    model, tokenizer = tiny_model
    batch = tokenizer(["hello"], return_tensors="pt")
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, [AddVectors({0: torch.ones(64)}), AddVectors({3: torch.ones(64)})]):
            model(**batch)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_layer_and_bad_delta_name_the_fix(tiny_model):
    model, tokenizer = tiny_model
    batch = tokenizer(["hello"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"4 decoder layers \(valid: 0..3\)"):
        with steer(model, [AddVectors({7: torch.ones(64)})]):
            pass
    bad = PolicyIntervention(lambda h, ctx: torch.zeros(3), layers=[0])
    with pytest.raises(ValueError, match="must match the hidden states"):
        with torch.no_grad(), steer(model, [bad]):
            model(**batch)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_model_description(tiny_model):
    info = describe(tiny_model[0], name="tiny")
    assert (info.n_layers, info.d_model, info.layers_path) == (4, 64, "model.layers")
    assert info.hook_points[-1] == "model.layers.3"
    with pytest.raises(ValueError, match="pass a layer in 0..3"):
        info.check_layer(4)
    with pytest.raises(ValueError, match=r"d_model=64; pass a vector of shape \(64,\)"):
        info.check_vector(torch.zeros(65))
