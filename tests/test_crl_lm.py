"""CRL trained through the LM (issue 26): the feature controller, trained by the one GRPO trainer
with gradients through the frozen model, puts its weight on the planted feature; only it trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import PLANTED_FEATURE, PLANTED_LAYER


def test_crl_through_the_lm_learns_the_planted_feature(tiny_dir, planted, planted_splits, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from harness.padding import batch
    from harness.prompts import task_prompts
    from harness.tasks import load_task
    from rl.crl.through_lm import trainer as crl_lm
    from rl.crl.through_lm.config import CRLThroughLMConfig
    from rl.crl.through_lm.gate import CONTROLLER_TYPE, FeatureGate
    from rl.runs import run_done

    config = CRLThroughLMConfig(
        model=tiny_dir,
        task="arith_mc",
        sae=planted["sae"],
        candidates=0,  # all 16 features of the planted SAE
        k=2,
        hidden=16,
        budget="smoke",
        steps=8,
        prompts_per_step=4,
        samples_per_prompt=8,
        learning_rate=2e-2,
        eval_every=4,
        checkpoint_every=4,
        val_limit=None,
        device="cpu",
        dtype="float32",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    run_dir = crl_lm.train(config)
    record = json.loads((run_dir / "config.json").read_text())
    assert record["controller"] == CONTROLLER_TYPE and record["layers_resolved"] == [PLANTED_LAYER]
    assert run_done(config, "crl-lm")
    state = load_file(str(run_dir / crl_lm.CHECKPOINT_FILE))
    gate = FeatureGate(record["d_model"], record["n_features"], PLANTED_LAYER, record["hidden"], record["k"])
    gate.load_state_dict(state)
    # the coefficients it gives at the answer position of validation prompts: the planted feature leads
    task = load_task("arith_mc")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    ids, mask = batch(tokenizer, task_prompts(task, planted["validation"][:16]), "cpu")
    from harness.activations import residuals

    with torch.no_grad():
        hidden = residuals(model, ids, mask, layers=[PLANTED_LAYER])[PLANTED_LAYER][:, -1]
        coefs = gate.coefficients(hidden).mean(0)
    planted_index = int((gate.ids == PLANTED_FEATURE).nonzero())
    assert int(coefs.argmax()) == planted_index, coefs
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "crl-lm" and manifest["curve"][-1]["validation"] > manifest["curve"][0]["validation"]
    assert 0 < manifest["spent"]["trainable_parameters"] == sum(p.numel() for p in gate.parameters())
    # lm-eval's view: crl_steered reads the controller kind from the run directory, steers every
    # token with it, and logs the features it adds at the answer position
    from harness.lm_models import LeanHFLM
    from harness.scoring import TaskScorer
    from rl.crl.lm import CRLSteeredLM

    log = tmp_path / "added.jsonl"
    steered = CRLSteeredLM(
        pretrained=tiny_dir, controller=str(run_dir), log_interventions=str(log), device="cpu", dtype="float32"
    )
    base = LeanHFLM(pretrained=tiny_dir, device="cpu", dtype="float32")
    docs = planted["validation"]
    assert TaskScorer(steered, task, docs)([]) > TaskScorer(base, task, docs)([])
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["layer"] for e in entries} == {PLANTED_LAYER} and {e["token"] for e in entries} == {"="}
    assert {e["item"] for e in entries} == set(range(len(docs)))
    assert max({e["feature"] for e in entries}, key=[e["feature"] for e in entries].count) == PLANTED_FEATURE
    # and from the plain lm-eval CLI, with its log
    cli_log = tmp_path / "cli.jsonl"
    cmd = [
        str(Path(sys.executable).parent / "lm_eval"),
        "--model",
        "crl_steered",
        "--model_args",
        f"pretrained={tiny_dir},controller={run_dir},dtype=float32,log_interventions={cli_log}",
        "--tasks",
        "arith_mc",
        "--limit",
        "3",
        "--device",
        "cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "|arith_mc|" in done.stdout.replace(" ", "")
    assert {json.loads(line)["item"] for line in cli_log.read_text().splitlines()} == {0, 1, 2}
