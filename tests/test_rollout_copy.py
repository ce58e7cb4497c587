"""Rollouts from a bf16 copy of the policy (`rl.rollout_copy`): where `auto` uses it, that the copy
follows the trained parameters and acts through the rung's steering, and an RLVR run on a
generation task sampling from it while its loss and adapter stay fp32."""

from __future__ import annotations

import json

import pytest
import torch


def test_auto_copies_only_for_multi_token_rollouts_trained_in_fp32_on_a_bf16_cpu(monkeypatch):
    import harness.models
    from rl.rlvr.config import RLVRConfig
    from rl.rollout_copy import resolve_rollout_dtype

    monkeypatch.setattr(harness.models, "cpu_has_native_bf16", lambda: True)
    assert resolve_rollout_dtype("auto", "float32", "cpu", 32) == "bfloat16"
    assert resolve_rollout_dtype("auto", "float32", "cpu", 1) == "float32"  # one-token: a single prefill
    assert resolve_rollout_dtype("auto", "bfloat16", "cuda", 32) == "bfloat16"
    assert resolve_rollout_dtype("float32", "float32", "cpu", 32) == "float32"
    monkeypatch.setattr(harness.models, "cpu_has_native_bf16", lambda: False)
    assert resolve_rollout_dtype("auto", "float32", "cpu", 32) == "float32"  # emulated bf16 is far slower
    assert resolve_rollout_dtype("bfloat16", "float32", "cpu", 1) == "bfloat16"  # asked for: done

    auto, forced = RLVRConfig(task="arith_gen"), RLVRConfig(task="arith_gen", rollout_dtype="bfloat16")
    assert "rollout_dtype" not in auto.fingerprint_settings()  # runs from before the setting keep theirs
    assert auto.fingerprint() != forced.fingerprint()
    with pytest.raises(ValueError, match="--rollout-dtype must be one of auto, float32, bfloat16"):
        RLVRConfig(rollout_dtype="float16")


def test_the_copy_follows_the_trained_parameters_and_steers_like_the_model(tiny_model):
    from rl.rollout_copy import RolloutCopy
    from rl.vector.config import RLVectorConfig
    from rl.vector.trainer import MODULE, TrainedVectors, Vectors

    model, tokenizer = tiny_model
    param = Vectors(RLVectorConfig())
    model.requires_grad_(False)
    model.add_module(MODULE, TrainedVectors([1], torch.ones(1), 64))
    try:
        frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
        rollouts = RolloutCopy(model, "bfloat16", param.active)
        ids = tokenizer(["12+5=", "Review: fine."], return_tensors="pt", padding=True)

        def logits(m):
            with torch.no_grad():
                return m(**ids).logits.float()

        with param.active(model):
            unsteered = logits(model)
        with rollouts.active() as copy:
            assert copy is rollouts.copy and next(copy.parameters()).dtype == torch.bfloat16
            torch.testing.assert_close(logits(copy), unsteered, rtol=0.05, atol=0.05)

        with torch.no_grad():
            getattr(model, MODULE).raw.fill_(3.0)  # an optimiser step on the trained vector
        with param.active(model):
            steered = logits(model)
        assert (steered - unsteered).abs().max() > 0.5  # the vector does something
        assert getattr(rollouts.copy, MODULE).raw.abs().max() == 0  # not yet copied
        with rollouts.active() as copy:
            torch.testing.assert_close(logits(copy), steered, rtol=0.05, atol=0.05)
        assert torch.equal(getattr(rollouts.copy, MODULE).raw, torch.full((1, 64), 3.0, dtype=torch.bfloat16))
        with torch.no_grad():
            assert (logits(rollouts.copy) - steered).abs().max() > 0.5  # outside `active` it does not steer
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
        assert next(model.parameters()).dtype == torch.float32
    finally:
        delattr(model, MODULE)


def test_rlvr_on_a_generation_task_samples_from_the_bf16_copy(tiny_dir, tmp_path, monkeypatch, capfd):
    from safetensors.torch import load_file

    from rl.rlvr import trainer as rlvr
    from rl.rlvr.config import RLVRConfig
    from rl.rollout_copy import RolloutCopy

    synced = []
    real_sync = RolloutCopy.sync
    monkeypatch.setattr(RolloutCopy, "sync", lambda self: synced.append(self) or real_sync(self))

    import harness.rewards

    def task_reward(task, *args, **kwargs):  # a random tiny model is never right: reward by a parity of the text
        return lambda prompts, completions, **doc: [float(sum(map(ord, c)) % 2) for c in completions]

    monkeypatch.setattr(harness.rewards, "task_reward", task_reward)
    config = RLVRConfig(
        model=tiny_dir,
        task="arith_gen",
        budget="smoke",
        steps=2,
        eval_every=0,
        val_limit=2,
        learning_rate=5e-3,
        device="cpu",
        dtype="float32",
        rollout_dtype="bfloat16",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    run_dir = rlvr.train(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["rollout_dtype"] == "bfloat16"
    assert manifest["spent"]["generated_tokens"] > manifest["spent"]["rollouts"]  # multi-token rollouts
    assert len(synced) >= 2 + 2  # each step's generation, the validation at both ends
    adapter = load_file(str(run_dir / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in adapter.values())  # trained in fp32
    assert any(t.abs().max() > 0 for n, t in adapter.items() if "lora_B" in n)
    assert "rollouts and validation sampled from a bfloat16 copy" in capfd.readouterr().err
    # the copy computes in bf16 itself: TRL patches the trained model's `forward` (its fused LM head) with a
    # closure over that model, which a deep copy would keep, and the copy would have sampled in fp32
    copy = synced[-1].copy
    assert "forward" not in vars(copy) and not any(hasattr(m, "lora_A") for m in copy.modules())  # LoRA merged
    with torch.no_grad():
        assert copy(input_ids=torch.tensor([[2, 100, 200]])).logits.dtype == torch.bfloat16
