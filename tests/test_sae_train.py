"""SAE training on the tiny model: the loss moves down, a killed run resumes, several layers train
from one forward pass (and resume), and the auto SAEs of several layers are provisioned together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import sae_train_config as train_config
from tests.conftest import tiny_info


def heldout_fvu(tiny_model, directory: Path, corpus_file: str) -> float:
    from harness.activations import residuals, token_blocks
    from harness.sae import load_sae
    from harness.sae.corpus import load_corpus

    model, tokenizer = tiny_model
    loaded = load_sae(str(directory), tiny_info(str(Path(model.config._name_or_path))))
    blocks = token_blocks(tokenizer, load_corpus(corpus_file).chunks("heldout"), 32, 16)
    x = residuals(model, blocks, layers=[2])[2][:, 1:].reshape(-1, 64)
    recon = loaded.decode(loaded.encode(x))
    return float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_training_moves_the_loss_down(tmp_path, tiny_dir, tiny_model, corpus_file):
    from harness.sae.train import train_sae

    short = train_sae(train_config(tiny_dir, corpus_file, tmp_path / "short", tokens=256))
    long = train_sae(train_config(tiny_dir, corpus_file, tmp_path / "long", tokens=8192))
    fvu_short, fvu_long = heldout_fvu(tiny_model, short, corpus_file), heldout_fvu(tiny_model, long, corpus_file)
    assert fvu_long < 0.8 * fvu_short, (fvu_short, fvu_long)

    manifest = json.loads((long / "manifest.json").read_text())
    assert manifest["training_tokens"] == 8192 and manifest["train_wall_s"] > 0
    assert manifest["corpus"]["kind"] == "local" and len(manifest["corpus"]["sha256"]) == 64
    assert json.loads((long / "cfg.json").read_text())["metadata"]["hook_name"] == "model.layers.2"
    assert not (long / "checkpoints").exists() and not long.with_name("long.partial").exists()
    # a finished SAE is reused, not retrained
    stamp = (long / "sae_weights.safetensors").stat().st_mtime_ns
    train_sae(train_config(tiny_dir, corpus_file, tmp_path / "long", tokens=8192))
    assert (long / "sae_weights.safetensors").stat().st_mtime_ns == stamp


def test_killed_training_resumes_from_its_checkpoint(tmp_path, tiny_dir, corpus_file, monkeypatch, capsys):
    from sae_lens.training import sae_trainer

    from harness.sae.train import train_sae

    config = train_config(tiny_dir, corpus_file, tmp_path / "sae", tokens=4096, checkpoints=3)
    original_step = sae_trainer.SAETrainer.step

    def crash_late(self, batch):
        if self.n_training_samples >= 2560:
            raise RuntimeError("simulated crash")
        return original_step(self, batch)

    monkeypatch.setattr(sae_trainer.SAETrainer, "step", crash_late)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(config)
    partial = tmp_path / "sae.partial"
    assert not (tmp_path / "sae").exists() and any((partial / "checkpoints").iterdir())

    starts = []
    original_fit = sae_trainer.SAETrainer.fit

    def record_fit(self):
        starts.append(self.n_training_samples)
        return original_fit(self)

    monkeypatch.setattr(sae_trainer.SAETrainer, "step", original_step)
    monkeypatch.setattr(sae_trainer.SAETrainer, "fit", record_fit)
    directory = train_sae(config)
    assert "resuming SAE training" in capsys.readouterr().out
    assert starts and starts[0] >= 1024, starts  # continued, not restarted
    assert (directory / "sae_weights.safetensors").exists() and not partial.exists()


def test_saes_of_several_layers_train_from_one_forward_and_resume(
    tmp_path, tiny_dir, tiny_model, corpus_file, monkeypatch
):
    """train_saes: one sae-lens multi-SAE run trains a layer-1 and a layer-2 SAE; each lands in the
    directory train_sae would give it, learns (held-out FVU well below an SAE trained on 256
    tokens), names its partner in its manifest, is reused when finished, and a killed joint run
    resumes from its checkpoint."""
    from sae_lens.training import multi_sae_trainer, sae_trainer

    from harness.sae.train import train_sae, train_saes

    configs = [train_config(tiny_dir, corpus_file, tmp_path / f"l{layer}", layer=layer) for layer in (1, 2)]
    original_step, original_fit = sae_trainer.SAETrainer.step, multi_sae_trainer.MultiSAETrainer.fit

    def crash_late(self, batch):
        if self.n_training_samples >= 2560:
            raise RuntimeError("simulated crash")
        return original_step(self, batch)

    starts = []

    def record_fit(self):
        starts.append(self.n_training_samples)
        return original_fit(self)

    monkeypatch.setattr(multi_sae_trainer.MultiSAETrainer, "fit", record_fit)
    monkeypatch.setattr(sae_trainer.SAETrainer, "step", crash_late)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_saes(configs)
    monkeypatch.setattr(sae_trainer.SAETrainer, "step", original_step)
    assert not any((tmp_path / f"l{layer}").exists() for layer in (1, 2))
    one, two = train_saes(configs)
    assert len(starts) == 2 and starts[1] >= 1024, starts  # resumed, not restarted
    assert (one, two) == (tmp_path / "l1", tmp_path / "l2") and not list(tmp_path.glob("joint-*"))

    short = train_sae(train_config(tiny_dir, corpus_file, tmp_path / "short", tokens=256))
    assert heldout_fvu(tiny_model, two, corpus_file) < 0.8 * heldout_fvu(tiny_model, short, corpus_file)
    for directory, layer, partner in ((one, 1, "l2"), (two, 2, "l1")):
        manifest = json.loads((directory / "manifest.json").read_text())
        assert (manifest["layer"], manifest["training_tokens"], manifest["trained_jointly_with"]) == (
            layer,
            4096,
            [partner],
        )
        assert json.loads((directory / "cfg.json").read_text())["metadata"]["hook_name"] == f"model.layers.{layer}"
    stamp = (two / "sae_weights.safetensors").stat().st_mtime_ns
    train_saes(configs)  # finished: reused
    assert (two / "sae_weights.safetensors").stat().st_mtime_ns == stamp and len(starts) == 2


def test_auto_saes_of_several_layers_are_trained_together(tiny_dir, monkeypatch):
    """train_auto_saes: the layers no published SAE serves go to one train_saes call (each layer
    once); a single layer is left to load_sae, which trains it alone; a bad layer fails first."""
    import harness.sae.train
    from harness.sae.provision import train_auto_saes

    calls = []
    monkeypatch.setattr(harness.sae.train, "train_saes", lambda configs: calls.append(configs))
    info = tiny_info(tiny_dir)
    assert train_auto_saes(info, [2, 1, 2], corpus="builtin", tokens=4096) == [1, 2]
    assert [(c.layer, c.corpus, c.tokens) for c in calls[0]] == [(1, "builtin", 4096), (2, "builtin", 4096)]
    assert train_auto_saes(info, [3]) == [3] and len(calls) == 1
    with pytest.raises(ValueError, match="layer"):
        train_auto_saes(info, [1, 9])
