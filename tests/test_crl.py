"""CRL: the controller learns a planted good feature on a tiny model, trains alone (LLM and
SAE frozen), replays its logged interventions exactly, resumes, and masks adaptively."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import PLANTED_FEATURE, PLANTED_LAYER

LAYER, GOOD = PLANTED_LAYER, PLANTED_FEATURE


def _config(tiny_dir, planted, tmp_path, **overrides):
    from rl.crl.config import CRLConfig

    options = dict(
        model=tiny_dir,
        task="arith_mc",
        sae=planted["sae"],
        layers=[LAYER],
        budget="smoke",
        steps=12,
        prompts_per_step=4,
        samples_per_prompt=8,
        learning_rate=1e-2,
        hidden=32,
        eval_every=4,
        checkpoint_every=4,
        val_limit=None,
        device="cpu",
        dtype="float32",
        batch_size=32,
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    return CRLConfig(**{**options, **overrides})


def test_controller_learns_the_planted_feature_and_only_it_trains(tiny_dir, planted, planted_splits, tmp_path):
    from safetensors.torch import load_file

    from rl.crl import trainer as crl
    from rl.crl.controller import Controller

    config = _config(tiny_dir, planted, tmp_path)
    run_dir = crl.train(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    curve = manifest["curve"]
    assert curve[0]["validation"] < 0.5 and curve[-1]["validation"] >= 0.9, curve
    choices = json.loads((run_dir / "choices.json").read_text())
    assert choices["validation"][0]["feature"] == GOOD
    assert choices["validation_by_layer"][0] == {
        "layer": LAYER,
        "feature": GOOD,
        **{k: choices["validation_by_layer"][0][k] for k in ("count", "coefs")},
    }
    features = (config.model_results / "crl-one-token" / "arith_mc" / "12x4x8-seed0" / "features.md").read_text()
    assert f"| {LAYER} | {GOOD} |" in features and "no card" in features  # the planted SAE has no cards
    spent = manifest["spent"]
    assert spent["rollouts"] == 12 * 4 * 8 and spent["generated_tokens"] == spent["rollouts"]
    # only the controller trained: its weights moved from their seeded start; LLM and SAE checksums held
    torch.manual_seed(config.seed)
    start = Controller(64, 16, 1, 32).state_dict()
    trained = load_file(str(run_dir / crl.CONTROLLER_FILE))
    assert any(not torch.equal(start[k], trained[k]) for k in start if "mean" not in k and "scale" not in k)
    assert manifest["frozen_weights_checksum"] is not None
    published = config.model_results / "crl-one-token" / "arith_mc" / "12x4x8-seed0"  # a folder per budget and seed
    assert (published / "curve.png").exists() and (published / "features.md").exists()
    assert json.loads((published / "manifest.json").read_text()) == manifest


def test_logged_interventions_replay_to_the_same_outputs(tiny_dir, planted, planted_splits, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.tasks import load_task
    from rl.crl import trainer as crl
    from rl.crl.controller import COEFS, Controller, FeatureBank

    run_dir = crl.train(_config(tiny_dir, planted, tmp_path))  # trained enough to steer (the no-op is its prior)
    log = [json.loads(line) for line in (run_dir / "interventions.jsonl").read_text().splitlines()]
    assert log and {"item", "position", "token", "layer", "feature", "coef"} <= set(log[0])
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    bank_tensors = load_file(str(run_dir / crl.BANK_FILE))
    bank = FeatureBank([LAYER], {LAYER: bank_tensors[f"directions.{LAYER}"]}, {LAYER: bank_tensors[f"scales.{LAYER}"]})
    controller = Controller(64, 16, 1, 32)
    controller.load_state_dict(load_file(str(run_dir / crl.CONTROLLER_FILE)))
    problem = crl.build_problem(load_task("arith_mc"), planted["validation"], tokenizer, seed=0)
    rollouts = crl.Rollouts(model, tokenizer, controller, bank, problem, 1, 8)
    actions = {
        e["item"]: {e["layer"]: (16 if e["feature"] is None else e["feature"], COEFS.index(e["coef"]))} for e in log
    }
    rewards, records, _, _ = rollouts.run(list(range(len(problem.docs))), "replay", row_actions=actions)
    assert rewards == [e["reward"] for e in sorted(log, key=lambda e: e["item"])]
    assert [(r.feature, r.coef, r.position) for r in records] == [
        (e["feature"], e["coef"], e["position"]) for e in sorted(log, key=lambda e: e["item"])
    ]
    # and the replay is not vacuous: without the interventions the outputs differ
    noop = {item: {LAYER: (16, 0)} for item in actions}
    unsteered, _, _, _ = rollouts.run(list(range(len(problem.docs))), "replay", row_actions=noop)
    assert unsteered != rewards


def test_shared_prefix_rollouts_match_full_forwards(tiny_dir, planted):
    """One-token rollouts run each prompt's prefix once and only the answer token per sample;
    the choice logits must equal a full forward of every row's whole prompt."""
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.tasks import load_task
    from rl.crl import trainer as crl
    from rl.crl.controller import Controller, FeatureBank

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    sae = SAE.load_from_disk(planted["sae"])
    bank = FeatureBank([LAYER], {LAYER: sae.W_dec.detach().float()}, {LAYER: torch.full((16,), 2.0)})
    problem = crl.build_problem(load_task("arith_mc"), planted["validation"][:5], tokenizer, seed=0)
    assert problem.kind == "one-token-choices"
    rollouts = crl.Rollouts(model, tokenizer, Controller(64, 16, 1, 32), bank, problem, 1, 4)
    rows = [doc for doc in range(5) for _ in range(3)]  # three samples of each prompt, features differ per row
    actions = {row: {LAYER: ((row * 7) % 17, row % 5)} for row in range(len(rows))}
    rewards, records, _, _ = rollouts.run(rows, "replay", row_actions=actions)
    cached = [l.clone() for l in rollouts.choice_logits]
    rollouts.choice_logits = []
    for start in range(0, len(rows), 4):
        chunk = rows[start : start + 4]
        rollouts._replay = {r - start: actions[r] for r in range(start, start + len(chunk))}
        assert rollouts._choose_full(chunk, "replay", None, None, False)[0] == rewards[start : start + len(chunk)]
    full = rollouts.choice_logits
    assert len(cached) == len(rows) == len(full)
    assert torch.allclose(torch.stack(cached), torch.stack(full), atol=1e-4)
    assert {r.feature_index for r in records} == {a[LAYER][0] for a in actions.values()}


def test_killed_run_resumes(tiny_dir, planted, planted_splits, tmp_path, monkeypatch):
    from rl.crl import trainer as crl

    real = crl.ppo_update
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(crl, "ppo_update", dies)
    config = _config(tiny_dir, planted, tmp_path, steps=8)
    with pytest.raises(KeyboardInterrupt):
        crl.train(config)
    assert (crl.run_dir_for(config, config.method) / "checkpoints" / "step-4" / "state.json").exists()
    calls["n"] = -100
    run_dir = crl.train(config)
    assert calls["n"] == -100 + 4  # steps 5-8 only
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("step-4") and manifest["spent"]["rollouts"] == 8 * 4 * 8
    assert [row["step"] for row in manifest["curve"]] == list(range(9))
    # a checkpoint left by a killed run with other settings is not resumed: the new run starts over
    calls["n"] = 0
    other = _config(tiny_dir, planted, tmp_path, steps=8, runs_dir=str(tmp_path / "runs-2"))
    with pytest.raises(KeyboardInterrupt):
        crl.train(other)
    changed = _config(tiny_dir, planted, tmp_path, steps=8, runs_dir=str(tmp_path / "runs-2"), learning_rate=5e-3)
    calls["n"] = -100
    run_dir = crl.train(changed)
    assert calls["n"] == -100 + 8
    assert json.loads((run_dir / "manifest.json").read_text())["resumed_from"] is None


def test_gated_policy_steers_greedily_where_its_gate_says_so():
    """The gated policy's logits are log-probabilities of gate x feature; its greedy action
    intervenes once p(intervene) > 1/2, although no single feature then outweighs the no-op
    (where a flat policy's argmax keeps the no-op); the generation entropy bonus leaves the
    gate alone; auto picks gated for generation only, and flat runs keep their fingerprint."""
    from rl.crl.config import CRLConfig
    from rl.crl.controller import Controller

    torch.manual_seed(0)
    gated = Controller(d_model=8, d_sae=6, n_layers=1, hidden=16, noop_prior=0.9, policy="gated")
    h, index = torch.randn(5, 8), torch.zeros(5, dtype=torch.long)
    logits = gated(h, index)[0]
    assert logits.shape == (5, 7) and torch.allclose(logits.logsumexp(-1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(logits.exp()[:, -1], torch.full((5,), 0.9), atol=0.01)
    assert gated.most_probable(logits.softmax(-1)).tolist() == [6] * 5
    with torch.no_grad():
        gated.gate_head.bias.fill_(math.log(0.6 / 0.4))  # p(intervene) = 0.6: ~0.1 per feature, 0.4 no-op
    probs = gated(h, index)[0].softmax(-1)
    assert (probs[:, :-1] < probs[:, -1:]).all()
    assert Controller(8, 6, 1, 16).most_probable(probs).tolist() == [6] * 5  # flat: the argmax
    assert gated.most_probable(probs).tolist() == probs[:, :-1].argmax(-1).tolist()
    logits = gated(h, index)[0]
    torch.distributions.Categorical(logits=logits[:, :-1]).entropy().mean().backward()
    # the gate's gradient is rounding residue only (the entropy among features does not depend on it)
    assert gated.gate_head.weight.grad.abs().max() < 1e-4 * gated.feature_head.weight.grad.abs().max()
    with pytest.raises(ValueError, match="policy"):
        Controller(8, 6, 1, 16, policy="tree")

    assert CRLConfig(task="arith_gen", setting="generation").resolved_policy == "gated"
    assert CRLConfig(task="arith_mc").resolved_policy == "flat"
    assert CRLConfig(task="arith_mc", policy="flat").fingerprint() == CRLConfig(task="arith_mc").fingerprint()
    assert CRLConfig(task="arith_mc", policy="gated").fingerprint() != CRLConfig(task="arith_mc").fingerprint()
    assert (
        CRLConfig(task="arith_gen", setting="generation").fingerprint()
        != CRLConfig(task="arith_gen", setting="generation", policy="flat").fingerprint()
    )
    with pytest.raises(ValueError, match="--policy"):
        CRLConfig(task="arith_mc", policy="tree")


def test_crl_steered_in_lm_eval_steers_at_the_answer_and_logs(tiny_dir, planted, planted_splits, tmp_path):
    from harness.lm_models import LeanHFLM
    from harness.scoring import TaskScorer
    from harness.tasks import load_task
    from rl.crl import trainer as crl
    from rl.crl.lm import CRLSteeredLM

    run_dir = crl.train(_config(tiny_dir, planted, tmp_path))
    docs = planted["validation"]
    log = tmp_path / "decisions.jsonl"
    steered = CRLSteeredLM(
        pretrained=tiny_dir,
        controller=str(run_dir),
        log_interventions=str(log),
        device="cpu",
        dtype="float32",
        batch_size=8,
    )
    base = LeanHFLM(pretrained=tiny_dir, device="cpu", dtype="float32", batch_size=8)
    assert TaskScorer(steered, load_task("arith_mc"), docs)([]) >= 0.9
    assert TaskScorer(base, load_task("arith_mc"), docs)([]) < 0.5
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries and {e["layer"] for e in entries} == {LAYER}
    assert {e["item"] for e in entries} <= set(range(len(docs))) and None not in {e["item"] for e in entries}
    assert sum(e["feature"] == GOOD for e in entries) / len(entries) >= 0.9
    # one decision per forward row, at the answer position: the "=" that ends each prompt
    assert {e["token"] for e in entries} == {"="}
    # a one-token controller on a generation task: refused, unless positions= says where to act
    gen_task = load_task("arith_gen")
    gen_docs = list(gen_task.validation_docs())[:2]
    with pytest.raises(ValueError, match="one-token controller.*this task generates.*positions=generated"):
        TaskScorer(steered, gen_task, gen_docs)([])
    log.unlink()
    answer_only = CRLSteeredLM(
        pretrained=tiny_dir,
        controller=str(run_dir),
        positions="answer",
        device="cpu",
        dtype="float32",
        batch_size=8,
        log_interventions=str(log),
    )
    TaskScorer(answer_only, gen_task, gen_docs)([])
    acted = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(acted) == len(gen_docs) and {e["item"] for e in acted} == set(range(len(gen_docs)))  # once per row
    with pytest.raises(ValueError, match="positions= must be one of answer, generated"):
        CRLSteeredLM(pretrained=tiny_dir, controller=str(run_dir), positions="everywhere", device="cpu")


@pytest.fixture(scope="module")
def per_layer_saes(tmp_path_factory):
    """Random TopK SAEs for layers 2 and 3 of the tiny model, named sae-layer<N>."""
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    root = tmp_path_factory.mktemp("per-layer-saes")
    torch.manual_seed(1)
    for layer in (2, 3):
        sae = SAE.from_dict(
            TopKSAEConfig(d_in=64, d_sae=32, k=4, metadata=SAEMetadata(hook_name=f"model.layers.{layer}")).to_dict()
        )
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
        sae.save_model(root / f"sae-layer{layer}")
    return str(root / "sae-layer{layer}")


@pytest.mark.parametrize("setting,task,layers", [("multi-layer", "arith_mc", [2, 3]), ("generation", "arith_gen", [2])])
def test_other_settings_run_end_to_end(tiny_dir, per_layer_saes, tmp_path, setting, task, layers):
    from rl.crl import trainer as crl

    config = crl.CRLConfig(
        model=tiny_dir,
        task=task,
        setting=setting,
        sae=per_layer_saes,
        layers=layers,
        budget="smoke",
        steps=2,
        prompts_per_step=2,
        samples_per_prompt=2,
        max_new_tokens=6,
        val_limit=3,
        eval_every=0,
        hidden=16,
        algorithm="grpo",
        device="cpu",
        dtype="float32",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    run_dir = crl.train(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    spent = manifest["spent"]
    # generation: the unsteered baseline adds one greedy rollout per distinct training prompt
    assert spent["rollouts"] == 2 * 2 * 2 + (4 if setting == "generation" else 0)
    log = [json.loads(line) for line in (run_dir / "interventions.jsonl").read_text().splitlines()]
    if setting == "multi-layer":
        assert spent["generated_tokens"] == spent["rollouts"]
        # one decision per layer per item, at the same (answer) position
        assert sorted((e["item"], e["layer"]) for e in log) == [(i, l) for i in range(3) for l in (2, 3)]
        assert len({(e["item"], e["position"]) for e in log}) == 3
    else:
        assert 0 < spent["generated_tokens"] <= spent["rollouts"] * 6
        # a decision at the prompt's last token and at generated tokens (several per item)
        assert {e["layer"] for e in log} == {2} and max(sum(e["item"] == i for e in log) for i in range(3)) > 1
    # the trained controller goes through the interaction analysis (crl_bench.analyses.interactions)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crl_bench.analyses.interactions import analyse, render
    from harness.tasks import load_task

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    found = analyse(run_dir, setting, load_task(task), model, AutoTokenizer.from_pretrained(tiny_dir), seed=0, items=3)
    if setting == "multi-layer":
        (pair,) = found["pairs"]
        assert (pair["earlier"], pair["later"], pair["items"]) == (2, 3, 3)
    else:
        assert found["items"] == 3 and found["decisions"] > 3
    assert f"## {task}: crl" in render({task: {"crl": found}})


def test_candidates_are_the_features_that_move_the_choices(tiny_dir, planted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import model_info
    from harness.sae import load_sae
    from harness.tasks import load_task
    from rl.crl.candidates import choose_candidates
    from rl.crl.rollouts import build_problem

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    sae = load_sae(planted["sae"], model_info(tiny_dir), LAYER)
    problem = build_problem(load_task("arith_mc"), planted["train"][:4], tokenizer, seed=0)
    ones = torch.ones(16)
    picked = choose_candidates(model, tokenizer, sae, problem, ones, ones, 2)
    assert GOOD in picked.tolist() and len(picked) == 2
    assert choose_candidates(model, tokenizer, sae, problem, ones, ones, 0).tolist() == list(range(16))
    # generation tasks (no one-token choices): the most frequent features
    counts = torch.arange(16).float()
    problem.kind = "generation"
    assert choose_candidates(model, tokenizer, sae, problem, ones, counts, 3).tolist() == [13, 14, 15]


def test_generation_log_follows_each_item_across_batches(tiny_dir, per_layer_saes, tmp_path):
    """Every logged decision belongs to the item it names: an item's decisions start at its
    prompt's last token and then read, token by token, exactly what was generated for it."""
    from harness.scoring import TaskScorer
    from harness.splits import method_splits
    from harness.tasks import load_task
    from rl.crl import trainer as crl
    from rl.crl.lm import CRLSteeredLM

    config = crl.CRLConfig(
        model=tiny_dir,
        task="arith_gen",
        setting="generation",
        sae=per_layer_saes,
        layers=[2],
        budget="smoke",
        steps=1,
        prompts_per_step=2,
        samples_per_prompt=2,
        max_new_tokens=6,
        val_limit=2,
        eval_every=0,
        hidden=16,
        algorithm="grpo",
        noop_prior=0.0,
        device="cpu",
        dtype="float32",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    run_dir = crl.train(config)
    log = tmp_path / "decisions.jsonl"
    steered = CRLSteeredLM(
        pretrained=tiny_dir,
        controller=str(run_dir),
        log_interventions=str(log),
        device="cpu",
        dtype="float32",
        batch_size=2,
        max_length=400,
    )
    task = load_task("arith_gen")
    docs = method_splits(task).validation[:5]  # three batches of two
    scorer = TaskScorer(steered, task, docs)
    flat = [r for requests in scorer.requests for r in requests]
    for r in flat:
        r.arguments[1]["max_gen_toks"] = 6
    generated = steered.generate_until(flat, disable_tqdm=True)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    tokenizer = steered.tokenizer
    assert {e["item"] for e in entries} == set(range(len(docs)))
    for item, request in enumerate(flat):
        mine = sorted((e for e in entries if e["item"] == item), key=lambda e: e["position"])
        prompt_ids = tokenizer(request.arguments[0])["input_ids"]
        positions = [e["position"] for e in mine]
        assert positions == list(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(positions)))
        assert mine[0]["token"] == tokenizer.decode(prompt_ids[-1:])
        read = "".join(e["token"] for e in mine[1:])  # the generated tokens the controller read
        assert generated[item].startswith(read) or read.startswith(generated[item]), (item, read, generated[item])


def test_exploration_comparison_trains_each_variant_and_reports_collapse(tiny_dir, planted, planted_splits, tmp_path):
    """`crl-bench exploration`: one run per variant with only the exploration settings changed;
    the table and JSON are read from the runs' curves (masking off masks nothing), a finished
    variant is reused, and an unknown variant is refused by name."""
    from crl_bench.analyses.exploration import VARIANTS, compare
    from crl_bench.cli import main

    config = _config(tiny_dir, planted, tmp_path, steps=4, prompts_per_step=2, eval_every=2, checkpoint_every=2)
    out = compare(config, ["both", "no-mask"], str(tmp_path / "exploration"))
    found = json.loads((out / "exploration.json").read_text())["variants"]
    assert set(found) == {"both", "no-mask"}
    for name, variant in found.items():
        entropy, share = VARIANTS[name]
        assert variant["mask_share"] == (config.mask_share if share is None else share)
        assert variant["entropy_coef"] == config.entropy_coef
        curve = json.loads((Path(variant["run_dir"]) / "manifest.json").read_text())["curve"]
        assert variant["distinct_features"] == curve[-1]["distinct_features"]
        assert variant["validation_end"] == curve[-1]["validation"]
        shares = [r["top_share"] for r in curve[1:] if r.get("top_share") is not None]
        assert shares and all(0 < s <= 1 for s in shares)
        collapsed = [r["step"] for r in curve[1:] if (r.get("top_share") or 0) >= 0.9]
        assert variant["first_collapsed_step"] == (collapsed[0] if collapsed else None)
    assert found["no-mask"]["features_masked"] == 0
    table = (out / "exploration.md").read_text()
    assert "| both | 0.01 | 0.5 |" in table and "| no-mask | 0.01 | 0.0 |" in table
    assert (out / "exploration.png").exists() and (out / "exploration.pdf").exists()
    # reused: the run directory is not rewritten
    stamp = (Path(found["both"]["run_dir"]) / "manifest.json").stat().st_mtime_ns
    compare(config, ["both"], str(tmp_path / "exploration"))
    assert (Path(found["both"]["run_dir"]) / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown exploration variants .'sometimes'.; choose from both"):
        compare(config, ["sometimes"], str(tmp_path / "exploration"))
    assert main(["exploration", "--model", tiny_dir, "--task", "arith_mc", "--variants", "sometimes"]) == 2
