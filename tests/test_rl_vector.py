"""The RL steering vector (issue 26): one dense vector per layer trained by the one GRPO trainer
through the frozen model; it learns the planted direction, only it trains, it resumes, and
`vector_steered` evaluates its run directory as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import PLANTED_LAYER


def _config(tiny_dir, tmp_path, **overrides):
    from rl.vector.config import RLVectorConfig

    options = dict(
        model=tiny_dir,
        task="arith_mc",
        layers=[PLANTED_LAYER],
        budget="smoke",
        steps=8,
        prompts_per_step=4,
        samples_per_prompt=8,
        learning_rate=0.05,
        eval_every=4,
        checkpoint_every=4,
        val_limit=None,
        device="cpu",
        dtype="float32",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    return RLVectorConfig(**{**options, **overrides})


def test_rl_vector_learns_the_planted_direction_and_only_it_trains(tiny_dir, planted, planted_splits, tmp_path):
    """Every training answer is the digit the planted direction pushes towards (one the model
    rarely picks): GRPO through the frozen model's log-probabilities turns the vector towards
    it, the validation score rises, and the run directory is a steering artifact."""
    from safetensors.torch import load_file

    from harness.lm_models import VectorSteeredLM
    from harness.vectors import SteeringVectors
    from rl.runs import run_done
    from rl.vector import trainer as vector

    config = _config(tiny_dir, tmp_path)
    run_dir = vector.train(config)
    artifact = SteeringVectors.load(run_dir)
    assert artifact.method == "rl_vector" and artifact.positions == "all" and set(artifact.vectors) == {PLANTED_LAYER}
    learned = artifact.vectors[PLANTED_LAYER]
    cosine = torch.nn.functional.cosine_similarity(learned, planted["push"].float(), dim=0)
    assert cosine > 0.1, cosine
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "rl-vector" and manifest["spent"]["trainable_parameters"] == 64  # d_model
    assert manifest["spent"]["rollouts"] == 8 * 4 * 8
    curve = manifest["curve"]
    assert curve[-1]["validation"] > curve[0]["validation"]
    assert run_done(config, "rl-vector")  # the bench finds it finished
    # checkpoints hold the vectors, not the model
    checkpoint = next((run_dir / "checkpoints").glob("checkpoint-*"))
    assert set(load_file(str(checkpoint / vector.CHECKPOINT_FILE))) == {"raw", "scale"}
    assert not list(checkpoint.glob("model*.safetensors"))
    # lm-eval's view: the run directory as `steer=`, with the model's own weights untouched
    lm = VectorSteeredLM(pretrained=tiny_dir, steer=str(run_dir), device="cpu", dtype="float32")
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), fresh.state_dict().values()))


def test_rl_vector_resumes_and_refuses_what_it_cannot_do(tiny_dir, planted, planted_splits, tmp_path, monkeypatch):
    from rl import grpo
    from rl.vector import trainer as vector
    from rl.vector.config import RLVectorConfig

    with pytest.raises(ValueError, match="--vllm generates outside"):
        RLVectorConfig(vllm=True)
    with pytest.raises(ValueError, match="decoder layers"):
        vector.train(_config(tiny_dir, tmp_path / "bad", layers=[9], steps=1))
    real = grpo.RewardMeter.__call__
    calls = {"n": 0}

    def dies_in_step_five(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(grpo.RewardMeter, "__call__", dies_in_step_five)
    config = _config(tiny_dir, tmp_path, steps=6, eval_every=0)
    with pytest.raises(KeyboardInterrupt):
        vector.train(config)
    calls["n"] = -1000
    run_dir = vector.train(config)
    assert calls["n"] == -1000 + 2  # steps 5 and 6 only
    whole = vector.train(_config(tiny_dir, tmp_path / "whole", steps=6, eval_every=0))
    ours, theirs = (json.loads(Path(d, "manifest.json").read_text()) for d in (run_dir, whole))
    assert ours["resumed_from"].endswith("checkpoint-4") and ours["spent"]["rollouts"] == theirs["spent"]["rollouts"]
    from harness.vectors import SteeringVectors

    a, b = (SteeringVectors.load(d).vectors[PLANTED_LAYER] for d in (run_dir, whole))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # resumed ends where the uninterrupted run does
