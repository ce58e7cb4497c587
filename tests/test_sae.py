"""SAEs: round trip, save/load, load-time mismatch errors, quality oracles, cards (training: test_sae_train.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from harness.models import ModelInfo
from tests.conftest import tiny_info


def orthonormal_sae(d_in: int = 64, k: int = 4, hook_name: str = "model.layers.2", seed: int = 0):
    """A TopK SAE whose decoder is an orthonormal basis and encoder its transpose: exact on k-sparse codes."""
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))
    sae = SAE.from_dict(TopKSAEConfig(d_in=d_in, d_sae=d_in, k=k, metadata=SAEMetadata(hook_name=hook_name)).to_dict())
    with torch.no_grad():
        sae.W_dec.copy_(q)
        sae.W_enc.copy_(q.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 3)
    return sae


def sparse_codes(n: int, d: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, d)
    for row in codes:
        row[torch.randperm(d, generator=g)[:k]] = torch.rand(k, generator=g) * 5 + 0.5
    return codes


def test_encode_decode_round_trip_and_save_load(tmp_path, tiny_dir):
    from harness.sae import LoadedSAE, load_sae

    sae = orthonormal_sae()
    loaded = LoadedSAE(sae=sae, layer=2, spec="x", source="local", directory=tmp_path, name="x")
    codes = sparse_codes(20, 64, 4)
    x = codes @ sae.W_dec + sae.b_dec
    feats = loaded.encode(x)
    assert_close(feats, codes, atol=1e-4, rtol=1e-4)
    assert_close(loaded.decode(feats), x, atol=1e-4, rtol=1e-4)
    assert ((feats > 0).sum(-1) == 4).all()
    # bf16 activations are cast to the SAE's dtype, and reconstructions back on request
    assert loaded.decode(loaded.encode(x.bfloat16()), dtype=torch.bfloat16).dtype == torch.bfloat16

    sae.save_model(tmp_path / "sae")
    again = load_sae(str(tmp_path / "sae"), tiny_info(tiny_dir))
    assert again.layer == 2 and again.source == "local" and again.d_sae == 64
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, again.sae.state_dict()[name]), name
    assert_close(again.encode(x), feats)


def test_hook_names_map_to_layers():
    from harness.sae.provision import hook_layer

    assert hook_layer("model.layers.6", "model.layers") == 6
    assert hook_layer("blocks.12.hook_resid_post", "model.layers") == 12
    assert hook_layer("blocks.7.hook_resid_pre", "model.layers") == 6
    with pytest.raises(ValueError, match="not the residual stream.*-res"):
        hook_layer("blocks.3.hook_mlp_out", "model.layers")
    with pytest.raises(ValueError, match="embeddings"):
        hook_layer("blocks.0.hook_resid_pre", "model.layers")


def test_mismatches_are_caught_at_load_time(tmp_path, tiny_dir):
    from harness.sae import check_sae_matches, load_sae

    info = tiny_info(tiny_dir)
    with pytest.raises(
        ValueError, match=r"d_in=32 but .* d_model=64; pass an SAE trained for this model, or --sae auto"
    ):
        check_sae_matches(orthonormal_sae(d_in=32), info)
    with pytest.raises(
        ValueError, match=r"reads layer 2 .* or use layer 2 \(bench: --sae-layer 2; train crl: --layers 2\)"
    ):
        check_sae_matches(orthonormal_sae(), info, layer=1)
    with pytest.raises(ValueError, match="layer 9 does not exist"):
        check_sae_matches(orthonormal_sae(hook_name="model.layers.9"), info)
    with pytest.raises(ValueError, match="not the residual stream"):
        check_sae_matches(orthonormal_sae(hook_name="blocks.2.hook_attn_out"), info)
    with pytest.raises(
        ValueError, match="SAE weights are float32 but the model's activations are bfloat16; .*--sae-dtype bfloat16"
    ):
        check_sae_matches(orthonormal_sae(), info, activation_dtype=torch.bfloat16)
    assert check_sae_matches(orthonormal_sae(hook_name="blocks.3.hook_resid_pre"), info) == 2

    # the same checks run when loading from disk
    orthonormal_sae(d_in=32).save_model(tmp_path / "narrow")
    with pytest.raises(ValueError, match="d_in=32"):
        load_sae(str(tmp_path / "narrow"), info)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no cfg.json"):
        load_sae(str(tmp_path / "empty"), info)
    with pytest.raises(ValueError, match="does not exist"):
        load_sae("./no-such-sae", info)


def test_pretrained_release_checked_before_download(tiny_dir):
    from harness.sae import load_sae

    info = tiny_info(tiny_dir, name="gemma-3-270m")
    with pytest.raises(
        ValueError, match="trained on gemma-2-2b, but the model is gemma-3-270m; pass --model gemma-2-2b"
    ):
        load_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical", info)
    with pytest.raises(ValueError, match="did you mean gemma-scope-2b-pt-res-canonical"):
        load_sae("gemma-scope-2b-pt-res-canonicl/layer_12/width_16k/canonical", info)
    with pytest.raises(ValueError, match="has no SAE 'layer_99/width_16k/canonical'"):
        load_sae("gemma-scope-2b-pt-res-canonical/layer_99/width_16k/canonical", info)


def test_auto_prefers_a_published_sae():
    from harness.sae.provision import published_sae

    gemma2 = ModelInfo(
        name="gemma-2-2b",
        path="google/gemma-2-2b",
        architecture="Gemma2ForCausalLM",
        n_layers=26,
        d_model=2304,
        vocab_size=256000,
        layers_path="model.layers",
    )
    assert published_sae(gemma2, 12) == "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"
    gpt2 = ModelInfo(
        name="gpt2",
        path="gpt2",
        architecture="GPT2LMHeadModel",
        n_layers=12,
        d_model=768,
        vocab_size=50257,
        layers_path="transformer.h",
    )
    assert published_sae(gpt2, 5) == "gpt2-small-res-jb/blocks.6.hook_resid_pre"
    assert published_sae(ModelInfo(**{**gemma2.__dict__, "name": "gemma-3-270m"}), 9) is None


# --- corpora -----------------------------------------------------------------------------


def test_corpus_files_folders_and_errors(tmp_path):
    from harness.sae.corpus import load_corpus

    (tmp_path / "a.txt").write_text("\n\n".join(f"Paragraph {i} " + "word " * 400 for i in range(40)))
    rows = [{"id": i, "text": f"Document {i}. " + "text " * 50} for i in range(30)]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    txt = load_corpus(str(tmp_path / "a.txt"))
    assert len(txt.documents) > 1 and txt.kind == "local"
    both = load_corpus(str(tmp_path))
    assert len(both.documents) == len(txt.documents) + 30
    train, held = both.split("train"), both.split("heldout")
    assert held and not {d.id for d in train} & {d.id for d in held}
    chunks = both.chunks("train", chunk_chars=500, max_chars=5000)
    assert all(len(c) <= 500 for c in chunks) and 5000 <= sum(map(len, chunks)) < 5500
    assert both.describe()["sha256"] == load_corpus(str(tmp_path)).describe()["sha256"]
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus("./missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1 is not valid JSON"):
        load_corpus(str(tmp_path / "bad.jsonl"))


def test_builtin_corpus_is_offline_and_recorded():
    from harness.sae.corpus import load_corpus

    corpus = load_corpus("builtin")
    info = corpus.describe()
    assert info["kind"] == "builtin" and info["python"] and info["characters"] > 1_000_000
    ids = {d.id.split(":")[0] for d in corpus.documents}
    assert ids == {"stdlib", "task"}
    assert any("Sentiment: positive" in d.text for d in corpus.documents)


def test_quality_matches_a_hand_written_reference(tmp_path, tiny_dir, tiny_model):
    """Our steering-based splice and metrics vs plain torch forward hooks and direct formulas."""
    from harness.activations import token_blocks
    from harness.sae import LoadedSAE
    from harness.sae.corpus import load_corpus
    from harness.sae.quality import SAEEvalConfig, measure

    model, tokenizer = tiny_model
    torch.manual_seed(0)
    sae = orthonormal_sae(k=16)
    with torch.no_grad():  # a lossy SAE, so the CE numbers are not trivial
        sae.W_dec.mul_(0.5)
    loaded = LoadedSAE(sae=sae, layer=2, spec="x", source="local", directory=tmp_path, name="x")
    texts = load_corpus("builtin").chunks("heldout")[:40]
    config = SAEEvalConfig(sequences=8, ce_sequences=4, context_size=24, batch_size=3)
    metrics, scan, blocks = measure(model, tokenizer, loaded, texts, config)

    ref_blocks = token_blocks(tokenizer, texts, 24, 8)
    assert torch.equal(blocks, ref_blocks)
    captured = []
    # a plain torch hook as the reference (output_hidden_states would leave transformers'
    # capture hooks on the shared model)
    handle = model.model.layers[2].register_forward_hook(
        lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            model(ref_blocks)
    finally:
        handle.remove()
    with torch.no_grad():
        hidden = captured[0][:, 1:].reshape(-1, 64)
        feats = sae.encode(hidden)
        recon = sae.decode(feats)
    fvu = float(((hidden - recon) ** 2).sum() / ((hidden - hidden.mean(0)) ** 2).sum())
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-3)
    assert metrics["l0"] == pytest.approx(float((feats > 0).sum(-1).float().mean()), rel=1e-4)
    assert metrics["dead_fraction"] == pytest.approx(float(((feats > 0).sum(0) == 0).float().mean()), abs=1e-4)

    def ce_with(replace):
        handle = None
        if replace is not None:

            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                new = h.clone()
                new[:, 1:] = replace(h[:, 1:])
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handle = model.model.layers[2].register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(ref_blocks[:4]).logits
        finally:
            if handle:
                handle.remove()
        return float(
            torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ref_blocks[:4, 1:].reshape(-1)
            )
        )

    clean, spliced, zero = ce_with(None), ce_with(lambda h: sae.decode(sae.encode(h))), ce_with(torch.zeros_like)
    assert metrics["ce_loss_clean"] == pytest.approx(clean, rel=1e-4)
    assert metrics["ce_loss_sae"] == pytest.approx(spliced, rel=1e-4)
    assert metrics["ce_loss_zero_ablation"] == pytest.approx(zero, rel=1e-4)
    # a random tiny model barely minds zero-ablation, so the ratio is ill-conditioned here:
    # check it against our own (reference-checked) CE values
    m = metrics
    expected = (m["ce_loss_zero_ablation"] - m["ce_loss_sae"]) / (m["ce_loss_zero_ablation"] - m["ce_loss_clean"])
    rounding = 4e-6 * (1 + abs(expected)) / abs(m["ce_loss_zero_ablation"] - m["ce_loss_clean"])
    assert m["ce_loss_recovered"] == pytest.approx(expected, abs=rounding)
    assert m["ce_loss_delta"] == pytest.approx(spliced - clean, abs=1e-4)


def test_feature_scan_logit_effects_and_neighbours(tiny_model):
    from harness.sae.cards import FeatureScan, logit_effects, neighbours

    g = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(5, 7, 11, generator=g))
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[:, 0] = False
    scan = FeatureScan(11, top=3)
    scan.update(feats[:2], 0, mask[:2])
    scan.update(feats[2:], 2, mask[2:])
    masked = (feats * mask[..., None]).reshape(-1, 11)
    best = masked.topk(3, dim=0)
    assert_close(scan.values, best.values)
    assert torch.equal(scan.where, best.indices)
    assert torch.equal(scan.fires, (masked > 0).sum(0))

    model, _ = tiny_model
    directions = torch.randn(6, 64, generator=g)
    up_ids, up_val, down_ids, down_val = logit_effects(model, directions, top=4)
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(directions))
    assert torch.equal(up_ids, logits.topk(4).indices)
    assert torch.equal(down_ids, (-logits).topk(4).indices)
    assert_close(down_val, -(-logits).topk(4).values)

    ids, cos = neighbours(directions, top=2)
    unit = torch.nn.functional.normalize(directions, dim=-1)
    sims = unit @ unit.T
    sims.fill_diagonal_(-2)
    assert torch.equal(ids, sims.topk(2).indices)
    assert_close(cos, sims.topk(2).values)


def test_sae_cli_trains_measures_and_shows_cards(tmp_path, tiny_dir, corpus_file, capsys):
    from crl_bench.cli import main

    out, results = tmp_path / "sae", tmp_path / "results"
    args = [
        "sae",
        "train",
        "--model",
        tiny_dir,
        "--layer",
        "1",
        "--corpus",
        corpus_file,
        "--width",
        "64",
        "--k",
        "4",
        "--tokens",
        "2048",
        "--context-size",
        "32",
        "--batch-tokens",
        "256",
        "--dtype",
        "float32",
        "--no-autocast",
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        "--results-dir",
        str(results),
    ]
    assert main(args) == 0
    quality = json.loads((out / "quality.json").read_text())
    assert set(quality["metrics"]) >= {"l0", "fvu", "explained_variance", "ce_loss_recovered", "dead_fraction"}
    assert quality["metrics"]["l0"] == pytest.approx(4.0)
    assert quality["training"]["tokens"] == 2048 and quality["training"]["wall_s"] > 0
    cards = json.loads((out / "feature_cards.json").read_text())["cards"]
    assert len(cards) == 64
    fired = [c for c in cards if c["contexts"]]
    assert fired and all(0 <= c["contexts"][0]["mark"] < len(c["contexts"][0]["tokens"]) for c in fired)
    assert all(len(c["promoted"]) == 10 and len(c["neighbours"]) == 5 for c in cards)
    table = (results / "saes" / "README.md").read_text()
    assert out.name in table and "cards" in table
    assert list((results / "saes").glob("*.cards.md"))

    capsys.readouterr()
    assert main(["sae", "card", "--model", tiny_dir, "--sae", str(out), "--feature", str(fired[0]["feature"])]) == 0
    assert f"feature {fired[0]['feature']}" in capsys.readouterr().out
    assert main(["sae", "card", "--model", tiny_dir, "--sae", str(out), "--feature", "999"]) == 2
    assert "feature 999 does not exist" in capsys.readouterr().err
    assert main(["sae", "eval", "--model", tiny_dir, "--sae", "./nowhere"]) == 2


def test_a_retrained_sae_never_replaces_the_record_earlier_results_used(tmp_path):
    """Issue 24: an SAE retrained with the same settings (another machine, another run) has the
    same name; its quality record goes beside the earlier SAE's, named by its weights, while a
    re-measurement of the same SAE updates its own record."""
    import json
    from types import SimpleNamespace

    from harness.sae.assess import publish

    def sae(folder, weights):
        folder.mkdir(parents=True)
        (folder / "sae_weights.safetensors").write_bytes(weights)
        (folder / "feature_cards.json").write_text(json.dumps({"cards": []}))
        return SimpleNamespace(name="layer9-w16-k4-abc", layer=9, directory=folder)

    metrics = dict(l0=4.0, fvu=0.1, ce_loss_recovered=0.9, ce_loss_clean=3.0, ce_loss_sae=3.2)
    metrics.update(ce_loss_zero_ablation=9.0, dead_fraction=0.0, eval_tokens=100)

    def record(training):
        sae_fields = {"name": "layer9-w16-k4-abc", "layer": 9, "d_sae": 16, "directory": "x"}
        return {"kind": "sae_quality", "model": "m", "sae": sae_fields, "metrics": metrics, "training": training}

    first, second = sae(tmp_path / "a", b"weights one"), sae(tmp_path / "b", b"weights two")
    results = tmp_path / "results"
    path = publish({**record({"wall_s": 1}), "heldout_corpus": {"spec": "builtin"}}, first, results)
    assert path.name == "m__layer9-w16-k4-abc.json"
    again = publish({**record({"wall_s": 1}), "heldout_corpus": {"spec": "builtin"}}, first, results)
    assert again == path  # the same SAE measured again: its own record
    other = publish({**record({"wall_s": 2}), "heldout_corpus": {"spec": "builtin"}}, second, results)
    assert other != path and other.name.startswith("m__layer9-w16-k4-abc-") and path.exists()
    assert (
        json.loads(path.read_text())["sae"]["weights_sha256"] != json.loads(other.read_text())["sae"]["weights_sha256"]
    )
    table = (results / "saes" / "README.md").read_text()
    assert table.count("| m | layer9-w16-k4-abc |") == 2
