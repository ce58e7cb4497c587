"""CRL `--algorithm pathwise` (`rl.pathwise`): each action's value is the first-order effect
of adding it on the group-relative log-likelihood of the sampled completions, and a
controller trained on those values learns a planted feature that makes completions right."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import save_planted_sae

LAYER = 3  # the tiny model's last decoder layer
GOOD = 5  # the planted feature


def _rollouts(tiny_dir, directions, temperature=1.0, max_new_tokens=4):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.tasks import load_task
    from rl.controller import Controller, FeatureBank
    from rl.rollouts import Rollouts, build_problem

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval().requires_grad_(False)
    task = load_task("arith_gen")
    problem = build_problem(task, list(task.training_docs())[:2], tokenizer, seed=0)
    n = len(directions)
    bank = FeatureBank([LAYER], {LAYER: directions}, {LAYER: torch.linspace(0.5, 2.0, n)}, {LAYER: torch.arange(n)})
    controller = Controller(64, n, 1, hidden=16, noop_prior=0.95, policy="gated")
    rollouts = Rollouts(model, tokenizer, controller, bank, problem, max_new_tokens, batch_size=8)
    rollouts.temperature = temperature
    return model, rollouts


def _objective(model, rollouts, advantage, temperature, edit=None):
    """sum_rows A x log p_T(completion tokens other than the model's argmax), teacher-forced, with `edit` = (row, position, vector)
    added to the controlled layer's output there (a hand-written reference of rl.pathwise's L)."""
    from harness.sparse_logits import logits_at

    layer = rollouts.model.model.layers[LAYER]
    total, first = 0.0, 0
    for ids, mask, lengths in rollouts.sequences:
        pad = mask.shape[1] - mask.sum(-1)
        prompt_width = ids.shape[1] - max(lengths)

        def add(module, args, output):
            if edit is None or not first <= edit[0] < first + len(ids):
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            row = edit[0] - first
            hidden[row, int(pad[row]) + edit[1]] += edit[2]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        index = torch.arange(prompt_width - 1, ids.shape[1] - 1)[None, :].expand(len(ids), -1)
        handle = layer.register_forward_hook(add)
        try:
            with torch.no_grad(), logits_at(model, index):
                logits = model(input_ids=ids, attention_mask=mask).logits.double()
        finally:
            handle.remove()
        logp = (logits / temperature).log_softmax(-1)
        targets = ids[:, prompt_width:]
        counted = mask[:, prompt_width:] * (targets != logits.argmax(-1))  # not the model's own argmax
        logp = logp.gather(-1, targets[..., None])[..., 0] * counted
        total += float((advantage[first:first + len(ids), None] * logp).sum())
        first += len(ids)
    return total


def test_pathwise_values_are_the_first_order_effect_of_each_action(tiny_dir):
    """Q[s, f] = d L / d(coefficient) of feature f at decision s, checked by central finite
    differences against a hand-written teacher-forced L; groups without reward variance
    contribute no decisions."""
    from rl.pathwise import first_order_values

    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(6, 64), dim=-1) * 5
    model, rollouts = _rollouts(tiny_dir, directions)
    torch.manual_seed(1)
    rollouts.run([0, 0, 1, 1], "greedy", keep_residuals=False)
    rewards = [1.0, 0.0, 1.0, 1.0]  # the second prompt's group has no signal
    records, residuals, q = first_order_values(model, rollouts, rewards, 2)
    assert {r["row"] for r in records} == {0, 1} and len(records) == len(residuals) == len(q)
    assert q.shape[1] == 6 and all(r["feature"] is None for r in records)  # an untrained controller leaves the model alone
    advantage = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    scales = rollouts.bank.scales[LAYER]
    eps = 1e-2
    for i in (0, len(records) - 1):
        row, position = records[i]["row"], records[i]["position"]
        for f in (0, 3):
            vector = eps * scales[f] * directions[f]
            plus = _objective(model, rollouts, advantage, 1.0, (row, position, vector))
            minus = _objective(model, rollouts, advantage, 1.0, (row, position, -vector))
            numeric = (plus - minus) / (2 * eps)
            assert q[i, f].item() == pytest.approx(numeric, rel=0.05, abs=1e-3), (i, f)
    assert q.abs().max() > 1e-2  # the values are not all zero


def test_flipped_rollouts_leave_the_greedy_completion_at_one_token(tiny_dir):
    """`--token-exploration flip`: a flipped row is the greedy completion up to its step, another
    token there, and the steered model's own argmax after it (teacher-forced); the margins are
    the greedy completion's top-1 minus top-2 log-probabilities."""
    from harness.sparse_logits import logits_at

    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(6, 64), dim=-1) * 5
    model, rollouts = _rollouts(tiny_dir, directions, temperature=0.0, max_new_tokens=6)
    rollouts.run([0, 1], "greedy", keep_residuals=False, margins=True)
    assert rollouts.sequences == []  # greedy rollouts keep no sequences
    gaps = rollouts.margins
    assert [len(g) for g in gaps] and all(m >= 0 for g in gaps for m in g)
    flips = {0: 0, 1: 2, 2: 3}
    generator = torch.Generator().manual_seed(0)
    rollouts.run([0, 0, 1, 1], "greedy", keep_residuals=False, flips=flips, generator_flips=generator)
    flipped, mask, lengths = rollouts.sequences[0]
    prompt_width = flipped.shape[1] - max(lengths)
    rollouts.run([0, 0, 1, 1], "greedy", keep_residuals=False, flips={3: 99})  # a flip past the end: none
    greedy, greedy_mask = rollouts.sequences[0][:2]
    index = torch.arange(prompt_width - 1, flipped.shape[1] - 1)[None, :].expand(len(flipped), -1)
    with torch.no_grad(), logits_at(model, index):
        logits = model(input_ids=flipped, attention_mask=mask).logits
    new, argmax = flipped[:, prompt_width:], logits.argmax(-1)
    for row in range(4):
        at = flips.get(row)
        for k in range(lengths[row]):
            if at is None or k < at:
                assert new[row, k] == greedy[row, prompt_width + k], (row, k)
            elif k == at:
                assert new[row, k] != argmax[row, k], (row, k)  # another token than the model's choice
            else:
                assert new[row, k] == argmax[row, k], (row, k)  # greedy after the flip
    # the margins: the greedy completion's own top-2 gap, teacher-forced
    with torch.no_grad(), logits_at(model, index):
        logp = model(input_ids=greedy, attention_mask=greedy_mask).logits.float().log_softmax(-1)
    top = logp[0, : len(gaps[0])].topk(2, -1).values
    assert torch.allclose(torch.tensor(gaps[0]), top[:, 0] - top[:, 1], atol=1e-3)


@pytest.mark.parametrize("exploration,choice_temperature", [("sample", 0.0), ("flip", 4.0)])
def test_pathwise_controller_learns_the_planted_feature(tiny_dir, tmp_path, monkeypatch, exploration,
                                                        choice_temperature):
    """A feature that makes the first generated token one of the 'right' half of the vocabulary
    (the reward) is learnt from sampled completions alone (or, with flips, from the greedy
    completion with its token flipped): the greedy controller ends up adding it, validation
    rises, and only the controller trains (train() checks the LLM and SAE)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import harness.rewards
    from rl import crl

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    embed = model.get_input_embeddings().weight.detach()  # tied: also the unembedding
    torch.manual_seed(0)
    push = torch.randn(64)
    right = (embed @ push) > 0  # the tokens the planted feature pushes up

    def reward(prompts, completions, **fields):
        first = [tokenizer(c, add_special_tokens=False)["input_ids"][:1] for c in completions]
        return [float(bool(ids) and bool(right[ids[0]])) for ids in first]

    monkeypatch.setattr(harness.rewards, "task_reward", lambda task: reward)
    save_planted_sae(tmp_path / "sae", LAYER, GOOD, push)
    config = crl.CRLConfig(model=tiny_dir, task="arith_gen", setting="generation", sae=str(tmp_path / "sae"),
                           layers=[LAYER], budget="smoke", steps=8, prompts_per_step=4, samples_per_prompt=8,
                           max_new_tokens=1, noop_prior=0.95, val_limit=16, eval_every=0, hidden=32, learning_rate=1e-2,
                           algorithm="pathwise", temperature=1.0, candidates=0, device="cpu", dtype="float32",
                           token_exploration=exploration, choice_temperature=choice_temperature,
                           results_dir=str(tmp_path / "results"), runs_dir=str(tmp_path / "runs"))
    run_dir = crl.train(config)
    curve = json.loads((run_dir / "manifest.json").read_text())["curve"]
    before, after = curve[0]["validation"], curve[-1]["validation"]
    assert after == 1.0 and before < 0.8, (before, after)
    log = [json.loads(line) for line in (run_dir / "interventions.jsonl").read_text().splitlines()]
    assert log and all(e["feature"] == GOOD for e in log)
    assert json.loads((run_dir / "config.json").read_text())["baseline_resolved"] == "group"
    if exploration == "flip":  # each step: 4 greedy rollouts and 28 flipped ones, some of which fixed the answer
        assert all(row["rollouts"] == 32 * row["step"] for row in curve[1:])
        assert sum(row["fixed"] for row in curve[1:]) > 0


def test_pathwise_refuses_what_it_cannot_do():
    from rl.crl import CRLConfig

    with pytest.raises(ValueError, match="needs --setting generation"):
        CRLConfig(task="arith_mc", algorithm="pathwise")
    with pytest.raises(ValueError, match="--temperature must be > 0"):
        CRLConfig(task="arith_gen", setting="generation", algorithm="pathwise", temperature=0.0)
    with pytest.raises(ValueError, match="group baseline"):
        CRLConfig(task="arith_gen", setting="generation", algorithm="pathwise", baseline="unsteered")
    with pytest.raises(ValueError, match="how --algorithm pathwise explores"):
        CRLConfig(task="arith_gen", setting="generation", token_exploration="flip")
    with pytest.raises(ValueError, match="--token-exploration must be one of sample, flip"):
        CRLConfig(task="arith_gen", setting="generation", algorithm="pathwise", token_exploration="beam")
    with pytest.raises(ValueError, match="no value per action"):
        CRLConfig(task="arith_gen", setting="generation", choice_temperature=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        CRLConfig(task="arith_gen", setting="generation", algorithm="pathwise", token_exploration="flip",
                  samples_per_prompt=1)
    CRLConfig(task="arith_gen", setting="generation", algorithm="pathwise", token_exploration="flip", temperature=0.0)
    with pytest.raises(ValueError, match="--algorithm must be one of ppo, grpo, pathwise"):
        CRLConfig(task="arith_gen", setting="generation", algorithm="reinforce")
