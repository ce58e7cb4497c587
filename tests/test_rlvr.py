"""RLVR (LoRA + TRL GRPO): the shared budget, training on a tiny model, resume, the NaN
guard, and the adapter in `rlvr_lora` against lm-eval's own `hf` with `peft=`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.models import model_results
from rl import grpo
from rl.budget import Budget


def test_budget_presets_overrides_and_regimes():
    from harness.tasks import load_task

    cpu = Budget.resolve("cpu")
    assert cpu.rollouts == cpu.steps * cpu.prompts_per_step * cpu.samples_per_prompt
    assert Budget.resolve("cpu", generation=True).steps < cpu.steps  # generation rollouts cost ~30 tokens
    assert Budget.resolve("cpu", steps=7).steps == 7 and Budget.resolve("cpu", steps=None).steps == cpu.steps
    assert cpu.for_task(load_task("arith_mc")).max_new_tokens == 1
    assert Budget.resolve("cpu", max_new_tokens=500).for_task(load_task("arith_gen")).max_new_tokens == 32  # task cap
    with pytest.raises(ValueError, match="unknown budget 'cheap'"):
        Budget.resolve("cheap")
    with pytest.raises(ValueError, match="samples_per_prompt must be at least 2"):
        Budget.resolve("smoke", samples_per_prompt=1)


def test_budget_file(tmp_path):
    path = tmp_path / "budget.yaml"
    path.write_text("steps: 5\nprompts_per_step: 3\nsamples_per_prompt: 2\nmax_new_tokens: 4\ngeneration: {steps: 2}\n")
    assert Budget.resolve(str(path)).rollouts == 30 and Budget.resolve(str(path), generation=True).steps == 2
    path.write_text("stepz: 5\n")
    with pytest.raises(ValueError, match="unknown fields"):
        Budget.resolve(str(path))


def _config(tiny_dir, tmp_path, **overrides):
    from rl.rlvr.config import RLVRConfig

    options = dict(
        model=tiny_dir,
        task="arith_mc",
        budget="smoke",
        steps=4,
        checkpoint_every=2,
        eval_every=2,
        val_limit=4,
        learning_rate=5e-3,
        device="cpu",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    return RLVRConfig(**{**options, **overrides})


@pytest.fixture
def varied_reward(monkeypatch):
    """A random tiny model rarely answers arithmetic right (most advantages would be zero):
    reward odd digits instead, so groups have variance. Also checks that one-token sampling
    stays among the task's choices (the digits)."""
    import harness.rewards

    def task_reward(task, *args, **kwargs):
        def reward(prompts, completions, **doc_fields):
            assert set(doc_fields) == {"expression", "answer", "op"}  # only the document's fields
            assert all(c in "0123456789" and len(c) == 1 for c in completions), completions
            return [float(int(c) % 2) for c in completions]

        return reward

    monkeypatch.setattr(harness.rewards, "task_reward", task_reward)


def _lora_tensors(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "adapter_model.safetensors"))


def test_grpo_trains_only_the_adapter_and_accounts_its_budget(tiny_dir, tmp_path, varied_reward):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.lm_models import RLVRLoraLM
    from rl.rlvr import trainer as rlvr

    config = _config(tiny_dir, tmp_path)
    run_dir = rlvr.train(config)
    tensors = _lora_tensors(run_dir)
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # B starts at zero: it trained
    manifest = json.loads((run_dir / "manifest.json").read_text())
    budget, spent = manifest["budget"], manifest["spent"]
    assert budget["max_new_tokens"] == 1 and spent["steps"] == 4
    assert spent["rollouts"] == budget["rollouts"] == 4 * 2 * 4
    assert spent["generated_tokens"] == spent["rollouts"]  # one token each
    assert spent["trainable_parameters"] == sum(t.numel() for t in tensors.values())
    assert manifest["frozen_weights_checksum"] is not None
    curve = (run_dir / "curve.csv").read_text().splitlines()
    assert curve[0] == "step,rollouts,reward,validation" and len(curve) == 1 + 5  # step 0 + 4 steps
    published = model_results(tmp_path / "results", tiny_dir) / "rlvr" / "arith_mc" / "4x2x4-seed0"
    assert (published / "curve.png").exists() and json.loads((published / "manifest.json").read_text()) == manifest

    # the adapter in rlvr_lora and in lm-eval's own hf model with peft= scores the same
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate([("12+5=", "7"), ("Review: fine.\nSentiment:", " positive")])
    ]
    common = {"device": "cpu", "dtype": "float32", "batch_size": 2}
    ours = RLVRLoraLM(pretrained=tiny_dir, adapter=str(run_dir), **common).loglikelihood(requests, disable_tqdm=True)
    theirs = HFLM(pretrained=tiny_dir, peft=str(run_dir), **common).loglikelihood(requests, disable_tqdm=True)
    base = HFLM(pretrained=tiny_dir, **common).loglikelihood(requests, disable_tqdm=True)
    torch.testing.assert_close([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=1e-5, atol=1e-4)
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, base)) > 1e-4  # the adapter does something


def _die_in_step_three(monkeypatch) -> dict:
    """Make the reward raise in the third step (a killed run); returns the call counter."""

    real = grpo.RewardMeter.__call__
    calls = {"n": 0}

    def dies_in_step_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(grpo.RewardMeter, "__call__", dies_in_step_three)
    return calls


def test_killed_run_resumes_from_its_last_checkpoint(tiny_dir, tmp_path, varied_reward, monkeypatch):
    from rl.rlvr import trainer as rlvr
    from rl.runs import run_dir_for

    config = _config(tiny_dir, tmp_path)
    calls = _die_in_step_three(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        rlvr.train(config)
    run_dir = run_dir_for(config, "rlvr")
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir() and not (run_dir / "adapter_model.safetensors").exists()
    calls["n"] = -1000
    rlvr.train(config)
    assert calls["n"] == -1000 + 2  # only steps 3 and 4 ran again
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-2")
    assert manifest["spent"]["rollouts"] == 4 * 2 * 4 and manifest["spent"]["steps"] == 4
    steps = [int(line.split(",")[0]) for line in (run_dir / "curve.csv").read_text().splitlines()[1:]]
    assert steps == [0, 1, 2, 3, 4]


def test_checkpoint_of_other_settings_is_not_resumed(tiny_dir, tmp_path, varied_reward, monkeypatch):
    from rl.rlvr import trainer as rlvr

    calls = _die_in_step_three(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        rlvr.train(_config(tiny_dir, tmp_path))
    calls["n"] = -1000
    changed = _config(tiny_dir, tmp_path, learning_rate=3e-4)
    run_dir = rlvr.train(changed)
    assert calls["n"] == -1000 + 4  # all four steps, none taken from the other run's checkpoint
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumed_from"] is None and manifest["spent"]["steps"] == 4


def test_nan_loss_stops_with_the_last_good_checkpoint(tiny_dir, tmp_path, varied_reward, monkeypatch):
    from trl import GRPOTrainer

    from rl.rlvr import trainer as rlvr
    from rl.runs import run_dir_for

    real = GRPOTrainer.compute_loss

    def nan_from_step_three(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        return loss * math.nan if self.state.global_step >= 2 else loss

    monkeypatch.setattr(GRPOTrainer, "compute_loss", nan_from_step_three)
    config = _config(tiny_dir, tmp_path)
    with pytest.raises(
        grpo.TrainingFailed,
        match=r"RLVR \(LoRA, GRPO\) training stopped: (loss|grad_norm) became nan at step 3; "
        r"the last good checkpoint is .*checkpoint-2",
    ):
        rlvr.train(config)
    run_dir = run_dir_for(config, "rlvr")
    assert not (run_dir / "checkpoints" / "checkpoint-4").exists()
    assert not (run_dir / "adapter_model.safetensors").exists()
    from safetensors.torch import load_file

    good = load_file(str(run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in good.values())


def test_multi_token_choices_are_refused_for_the_one_token_regime(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from harness.tasks import load_task
    from rl.grpo import check_one_token_choices

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    task = load_task("arith_mc")
    check_one_token_choices(task, list(task.training_docs())[:5], tokenizer)  # digits: fine
    docs = [{"expression": "1+1", "answer": 2, "op": "+"}]
    task.config.doc_to_choice = ["two", "three hundred and five"]
    with pytest.raises(ValueError, match="one-token regime needs one-token choices"):
        check_one_token_choices(task, docs, tokenizer)


def test_generation_rollouts_stop_at_the_tasks_newline(tiny_model):
    from harness.tasks import load_task
    from rl.grpo import stop_at_until as _stop_at_until

    model, tokenizer = tiny_model
    before = model.generation_config.eos_token_id
    try:
        _stop_at_until(model, tokenizer, load_task("arith_gen"))
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
        double = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        eos = model.generation_config.eos_token_id
        assert newline in eos and tokenizer.eos_token_id in ([before] if isinstance(before, int) else before) + eos
        assert len(double) == 1 and double[0] in eos  # "\n\n" is its own token and contains the stop
        assert all(
            "\n" in tokenizer.decode([t]) for t in eos if t not in ([before] if isinstance(before, int) else before)
        )
    finally:
        model.generation_config.eos_token_id = before


def test_a_step_in_micro_batches_accumulates_gradients_and_spends_the_same_budget(
    tiny_dir, tmp_path, capfd, varied_reward
):
    """--micro-batch splits a step's prompts x samples into micro-batches (gradient accumulation),
    with the memory estimate printed before training; the budget spent, the step's completions
    and rewards, and its loss (1e-4) are those of one micro-batch."""
    from rl.config import CPU_MICRO_BATCH
    from rl.rlvr import trainer as rlvr
    from rl.rlvr.config import RLVRConfig

    assert RLVRConfig(micro_batch=3).micro_batches(8, "cpu") == (2, 4)  # whole micro-batches only
    assert RLVRConfig().micro_batches(256, "cpu") == (CPU_MICRO_BATCH, 256 // CPU_MICRO_BATCH)
    assert RLVRConfig().micro_batches(256, "cuda") == (64, 4)
    from safetensors.torch import load_file

    curves, adapters = {}, {}
    for micro in (2, 8):
        run_dir = rlvr.train(_config(tiny_dir, tmp_path / str(micro), steps=1, micro_batch=micro, eval_every=0))
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["spent"]["rollouts"] == 2 * 4 and manifest["spent"]["steps"] == 1
        curves[micro], adapters[micro] = manifest["curve"], load_file(str(run_dir / "adapter_model.safetensors"))
    assert "4 micro-batch(es) of 2 completions per step" in capfd.readouterr().err
    assert curves[2][1]["reward"] == curves[8][1]["reward"]
    assert curves[2][1]["loss"] == pytest.approx(curves[8][1]["loss"], abs=1e-4)
    # the same update: the accumulated gradient is the one-micro-batch gradient
    moved = [name for name, w in adapters[8].items() if "lora_B" in name and w.abs().max() > 0]
    # Adam's first step moves each weight by about +-lr whatever its gradient's size, so an entry whose
    # gradient is at float-rounding level (which differs by processor) may go either way: all but a
    # handful of entries must agree
    assert moved
    agree = sum(int(torch.isclose(adapters[2][n], adapters[8][n], rtol=1e-3, atol=1e-7).sum()) for n in moved)
    total = sum(adapters[8][n].numel() for n in moved)
    assert agree >= 0.999 * total, (agree, total)
    assert all(torch.equal(adapters[2][n], adapters[8][n]) for n in adapters[8] if n not in moved)


def test_loss_scores_completion_tokens_only_with_the_same_log_probs(tiny_dir, monkeypatch):
    """On a CPU, TRL's fused LM head scores every position and masks the prompt out; with
    `score_completions_only` it scores the completion tokens alone: the same log-probabilities
    and gradients (fp32), a fraction of the full-vocabulary rows."""
    from transformers import AutoModelForCausalLM
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)  # TRL's own, restored after
    rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    counting = type("Counting", (), {"apply": staticmethod(lambda h, *a: rows.append(h.shape[0]) or apply(h, *a))})
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", counting)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    add_fused_lm_head(model)
    torch.manual_seed(0)
    input_ids = torch.randint(10, 1000, (3, 40))
    attention = torch.ones_like(input_ids)
    attention[0, :5] = 0  # a left-padded row
    labels = input_ids.masked_fill(attention == 0, -100)
    labels[:, :-6] = -100  # 6 completion tokens per row, as TRL's GRPO sets them

    def scored():
        model.zero_grad()
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        grad = model.model.layers[-1].mlp.down_proj.weight.grad.clone()
        return out.log_probs.detach(), grad

    full, full_grad = scored()
    assert grpo.score_completions_only() and grpo.score_completions_only()  # idempotent
    compact, compact_grad = scored()
    assert rows == [3 * 39, 3 * 6]  # every shifted position, then only the completion tokens
    assert torch.allclose(full, compact, atol=1e-5) and (compact[:, :-6] == 0).all()
    assert torch.allclose(full_grad, compact_grad, atol=1e-5)
