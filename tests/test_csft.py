"""C-SFT (issue 27): a teacher that adds the planted SAE feature at the answer position is
distilled into a feature controller that adds that feature there and closes most of the KL; the
LLM, the teacher and the SAE stay unchanged; a killed run resumes where it would have been."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import PLANTED_FEATURE, PLANTED_LAYER


def _teacher(planted, folder: Path, model: str) -> str:
    """A steered copy of the base model: the planted feature's decoder direction added at the
    answer position (the last prompt token) of layer 3."""
    from sae_lens import SAE

    from harness.vectors import SteeringVectors

    sae = SAE.load_from_disk(planted["sae"])
    direction = sae.W_dec[PLANTED_FEATURE].detach().float()
    SteeringVectors({PLANTED_LAYER: direction}, coefficient=1.0, positions="last", model=model).save(folder)
    return str(folder)


def _config(tiny_dir, planted, tmp_path, teacher, **overrides):
    from rl.csft.config import CSFTConfig

    settings = dict(
        model=tiny_dir,
        task="arith_mc",
        teacher=teacher,
        sae=planted["sae"],
        candidates=0,  # all 16 features of the planted SAE
        k=2,
        hidden=16,
        budget="smoke",
        steps=8,
        prompts_per_step=4,
        samples_per_prompt=4,
        learning_rate=2e-2,
        eval_every=4,
        checkpoint_every=4,
        val_limit=None,
        device="cpu",
        dtype="float32",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    return CSFTConfig(**{**settings, **overrides})


def test_csft_distils_the_planted_feature_where_the_teacher_added_it(tiny_dir, planted, planted_splits, tmp_path):
    from harness.identity import folder_digest
    from rl.crl.through_lm.gate import CONTROLLER_TYPE, load_gate
    from rl.csft import trainer as csft

    teacher = _teacher(planted, tmp_path / "teacher", tiny_dir)
    before = {p: folder_digest(Path(p)) for p in (tiny_dir, planted["sae"], teacher)}
    run_dir = csft.train(_config(tiny_dir, planted, tmp_path, teacher))
    assert {p: folder_digest(Path(p)) for p in before} == before  # LLM, SAE and teacher untouched

    record = json.loads((run_dir / "config.json").read_text())
    assert (
        record["controller"] == CONTROLLER_TYPE and record["method"] == "csft" and record["teacher_kind"] == "vectors"
    )
    fidelity = record["fidelity"]
    assert fidelity["kl_base"] > 0.01, fidelity  # the teacher differs from base, so there is something to close
    assert fidelity["kl_closed"] > 0.5, fidelity
    assert fidelity["validation"] > fidelity["base_validation"], fidelity
    # at the answer position of held-out prompts, the planted feature is the one it adds most
    assert record["features_used"][0][0] == PLANTED_FEATURE, record["features_used"]
    gate = load_gate(run_dir)
    assert gate.layer == PLANTED_LAYER and 0 < gate.k <= 2
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "csft" and manifest["spent"]["rollouts"] == 8 * 16
    curve = manifest["curve"]
    assert curve[-1]["held_out_kl"] < 0.5 * curve[0]["held_out_kl"]
    results = Path(tmp_path / "results")
    features = next(results.rglob("csft/arith_mc/*-seed0/features.md")).read_text()
    assert f"| {PLANTED_FEATURE} |" in features and "closes" in features
    assert next(results.rglob("csft/arith_mc/*-seed0/curve.png")).stat().st_size > 0
    assert not (run_dir / "checkpoints").exists()


def test_csft_resumes_bit_for_bit_and_refuses_a_missing_teacher(
    tiny_dir, planted, planted_splits, tmp_path, monkeypatch
):
    from rl.csft import trainer as csft
    from rl.csft.config import CSFTConfig

    with pytest.raises(ValueError, match="--teacher is required"):
        csft.train(CSFTConfig(model=tiny_dir))
    with pytest.raises(ValueError, match="no such directory"):
        csft.train(CSFTConfig(model=tiny_dir, teacher=str(tmp_path / "nowhere")))
    teacher = _teacher(planted, tmp_path / "teacher", tiny_dir)
    real = csft.Distiller.step
    calls = {"n": 0}

    def dies_in_step_four(self, rows):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(self, rows)

    monkeypatch.setattr(csft.Distiller, "step", dies_in_step_four)
    short = dict(steps=5, checkpoint_every=2, eval_every=0, val_limit=8)
    config = _config(tiny_dir, planted, tmp_path / "killed", teacher, **short)
    with pytest.raises(KeyboardInterrupt):
        csft.train(config)
    calls["n"] = -1000
    resumed = csft.train(config)
    assert calls["n"] == -1000 + 3  # steps 3, 4 and 5 only
    whole = csft.train(_config(tiny_dir, planted, tmp_path / "whole", teacher, **short))
    ours, theirs = (json.loads(Path(d, "manifest.json").read_text()) for d in (resumed, whole))
    assert ours["resumed_from"].endswith("step-2") and ours["spent"]["rollouts"] == theirs["spent"]["rollouts"]
    assert [r["loss"] for r in ours["curve"][1:]] == pytest.approx([r["loss"] for r in theirs["curve"][1:]], rel=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(str(Path(d, "controller.safetensors"))) for d in (resumed, whole))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_csft_sweep_tables_each_layer_and_k(tiny_dir, planted, planted_splits, tmp_path):
    """Two layers on the tiny model: the planted layer closes more of the KL than layer 0,
    whose SAE has random features only (the teacher adds the planted feature after layer 3).
    A later sweep of the same teacher and settings adds its (layer, k) rows to the table."""
    import shutil
    from dataclasses import replace

    from rl.csft.sweep import CSFTSweepConfig, sweep
    from tests.conftest import save_planted_sae

    teacher = _teacher(planted, tmp_path / "teacher", tiny_dir)
    pattern = tmp_path / "saes" / "layer_{layer}"
    shutil.copytree(planted["sae"], str(pattern).format(layer=PLANTED_LAYER))
    torch.manual_seed(1)
    save_planted_sae(str(pattern).format(layer=0), 0, PLANTED_FEATURE, torch.randn(64))  # random features only
    settings = {f: getattr(_config(tiny_dir, planted, tmp_path, teacher), f) for f in ("model", "task", "budget")}
    config = CSFTSweepConfig(
        **settings,
        teacher=teacher,
        sae=str(pattern),
        candidates=0,
        hidden=16,
        steps=4,
        prompts_per_step=4,
        samples_per_prompt=4,
        learning_rate=2e-2,
        eval_every=0,
        checkpoint_every=4,
        val_limit=8,
        device="cpu",
        dtype="float32",
        layers="0,3",
        ks="2",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    table = sweep(config)
    rows = json.loads((table.parent / "sweep.json").read_text())["rows"]
    assert [(r["layer"], r["k"]) for r in rows] == [(0, 2), (3, 2)]
    best = max(rows, key=lambda r: r["kl_closed"])
    assert best["layer"] == PLANTED_LAYER, rows
    assert (table.parent / "sweep.png").stat().st_size > 0 and "| 3 | 2 |" in table.read_text()
    again = sweep(config)  # finished runs are reused, not retrained
    assert json.loads((again.parent / "sweep.json").read_text())["rows"] == rows
    more = sweep(replace(config, layers=[3], ks=[1]))  # a second sweep of the same teacher adds its rows
    merged = json.loads((more.parent / "sweep.json").read_text())["rows"]
    assert [(r["layer"], r["k"]) for r in merged] == [(0, 2), (3, 1), (3, 2)] and merged[0] == rows[0]
    assert "| 3 | 1 |" in more.read_text() and "| 0 | 2 |" in more.read_text()


@pytest.mark.parametrize("rollout_dtype", ["float32", "bfloat16"])
def test_csft_on_a_generation_task_distils_the_teachers_sampled_completions(
    tiny_dir, planted, tmp_path, rollout_dtype, monkeypatch
):
    """arith_gen with a LoRA teacher (as RLVR's): it samples its completions (prompts x samples per
    step, each prompt's samples prefilled once), from a bf16 copy of the teacher where asked;
    every completion token is a KL position, counted in the budget."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rl.csft import trainer as csft
    from rl.rollout_copy import RolloutCopy

    sampled = []
    real = RolloutCopy.generate
    monkeypatch.setattr(RolloutCopy, "generate", lambda self, *a, **k: sampled.append(1) or real(self, *a, **k))

    torch.manual_seed(0)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )
    teacher = str(tmp_path / "teacher")
    lora.save_pretrained(teacher)
    config = _config(
        tiny_dir,
        planted,
        tmp_path,
        teacher,
        task="arith_gen",
        steps=2,
        prompts_per_step=2,
        samples_per_prompt=3,
        max_new_tokens=4,
        val_limit=4,
        eval_every=0,
        rollout_dtype=rollout_dtype,
    )
    run_dir = csft.train(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["rollout_dtype"] == rollout_dtype
    assert len(sampled) == (0 if rollout_dtype == "float32" else 1 + 2)  # held-out prompts, then each step
    spent = manifest["spent"]
    assert spent["rollouts"] == 2 * 2 * 3 and spent["rollouts"] <= spent["generated_tokens"] <= spent["rollouts"] * 4
    assert manifest["fidelity"]["held_out_prompts"] == 4 and manifest["fidelity"]["kl_base"] > 0
    assert all(row["loss"] is None or row["loss"] >= 0 for row in manifest["curve"])
