"""CorrSteer (issue 26): features ranked by the correlation of their activation with correctness,
coefficients from the correct documents, each validated by intervention; the result is a steering
artifact that `vector_steered` evaluates."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import PLANTED_LAYER


def test_selection_picks_the_planted_feature_from_synthetic_activations():
    from baselines.corrsteer import correlations, select

    torch.manual_seed(0)
    n, features = 400, 32
    correct = (torch.rand(n) < 0.4).float()
    acts = torch.rand(n, features).clamp_min(0.5) - 0.5  # noise, sparse-ish
    acts[:, 7] += 3.0 * correct + 0.3 * torch.rand(n)  # fires on the documents the model gets right
    acts[:, 3] += 1.0 * correct + 2.0 * torch.rand(n)  # weaker
    acts[:, 11] += 3.0 * (1 - correct)  # fires on the wrong ones: never selected
    acts[:, 20] = 1.0  # constant: no correlation
    ranked = select(acts, correct, top=3)
    assert [e["feature"] for e in ranked[:2]] == [7, 3] and 11 not in [e["feature"] for e in ranked]
    assert ranked[0]["coefficient"] == pytest.approx(float(acts[correct.bool(), 7].mean()))
    assert correlations(acts, correct)[20] == 0 and correlations(acts, torch.ones(n))[7] == 0


def test_corrsteer_on_the_tiny_model_writes_an_artifact_vector_steered_reads(tiny_dir, planted, tmp_path, monkeypatch):
    """Training documents of mixed answers (the model is right where the answer is its favourite
    digit), the planted SAE at layer 3: CorrSteer ranks, validates, chooses and saves."""
    from baselines.corrsteer import CorrSteerConfig, train
    from harness.lm_models import VectorSteeredLM
    from harness.vectors import SteeringVectors

    config = CorrSteerConfig(
        model=tiny_dir,
        task="arith_mc",
        sae=planted["sae"],
        train_limit=48,
        val_limit=8,
        candidates=4,
        counts=[1, 2],
        device="cpu",
        dtype="float32",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    run_dir = train(config)
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["layer"] == PLANTED_LAYER and selection["positions"] == "last"
    assert all(e["correlation"] > 0 for e in selection["ranked"]) and len(selection["ranked"]) <= 4
    assert set(selection["kept"]) <= {e["feature"] for e in selection["ranked"]}
    assert all(e["validation"] >= selection["base_validation"] for e in selection["chosen"])
    artifact = SteeringVectors.load(run_dir)
    assert artifact.method == "corrsteer" and set(artifact.vectors) == {PLANTED_LAYER}
    features = (tmp_path / "results").glob("*/corrsteer/arith_mc/features.md")
    assert "| feature | correlation |" in next(features).read_text()
    # the vector is the chosen features' coefficient x decoder direction, summed
    from harness.models import model_info
    from harness.sae import load_sae

    directions = load_sae(planted["sae"], model_info(tiny_dir), None, device="cpu").directions().float()
    expected = sum((e["coefficient"] * directions[e["feature"]] for e in selection["chosen"]), torch.zeros(64))
    torch.testing.assert_close(artifact.vectors[PLANTED_LAYER], expected)
    lm = VectorSteeredLM(pretrained=tiny_dir, steer=str(run_dir), device="cpu", dtype="float32")
    assert lm.steering.positions == "last"
