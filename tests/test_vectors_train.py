"""Leaderboard steering vectors: method splits, task contrasts, the validation scorer against
lm-eval itself, the sweep (choice, resume) and the fitted artifact in lm-eval's `steered`."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import needs_data


@pytest.fixture(scope="module")
def manager():
    from harness.tasks import task_manager

    return task_manager()


def _task(name, manager):
    from harness.tasks import load_task

    return load_task(name, manager)


def test_generated_tasks_use_their_own_three_splits(manager):
    from harness.splits import method_splits

    splits = method_splits(_task("arith_mc", manager))
    assert splits.sizes() == {"train": 500, "validation": 150, "test": 350} and not splits.reserved_ids


@needs_data
def test_boolq_reserves_a_fixed_fifth_of_its_only_split(manager):
    from harness.splits import method_splits

    task = _task("boolq", manager)
    splits = method_splits(task)
    again = method_splits(task)
    assert splits.reserved_ids == again.reserved_ids  # deterministic
    n = len(list(task.validation_docs()))
    assert 0.17 * n < len(splits.reserved_ids) < 0.23 * n
    assert len(splits.train) + len(splits.validation) == len(splits.reserved_ids)
    assert len(splits.test) == n - len(splits.reserved_ids)
    questions = {d["question"] + d["passage"] for d in splits.test}
    assert not questions & {d["question"] + d["passage"] for d in splits.train + splits.validation}
    assert "reserved" in splits.note


@needs_data
def test_gsm8k_gives_part_of_train_to_validation(manager):
    from harness.splits import method_splits

    splits = method_splits(_task("gsm8k", manager))
    total = splits.sizes()["train"] + splits.sizes()["validation"]
    assert 0.12 * total < splits.sizes()["validation"] < 0.18 * total and splits.test_split == "test"


def test_correctness_contrast_of_a_multiple_choice_task(tiny_model, manager):
    from baselines.contrast import task_contrast

    _, tokenizer = tiny_model
    task = _task("arith_mc", manager)
    docs = list(task.training_docs())[:10]
    contrast = task_contrast(tokenizer, task, docs, "train", seed=0)
    assert contrast.kind == "correctness" and not contrast.has_readout and len(contrast) == 20
    for i, doc in enumerate(docs):
        good, bad = contrast.prompts[2 * i], contrast.prompts[2 * i + 1]
        assert good == f"{doc['expression']}={doc['answer']}" and bad != good and bad[:-1] == good[:-1]
        assert contrast.labels[2 * i] == 1 and contrast.labels[2 * i + 1] == 0
        assert contrast.pair_ids[2 * i] == contrast.pair_ids[2 * i + 1] == i
        # read at the completion's last token (BOS is position 0)
        assert contrast.read_positions[2 * i] == len(tokenizer(good)["input_ids"]) - 1
    assert task_contrast(tokenizer, task, docs, "train", seed=0).prompts == contrast.prompts  # seeded


def test_correctness_contrast_of_a_generation_task_changes_the_final_number(tiny_model, manager):
    import re

    from baselines.contrast import task_contrast

    _, tokenizer = tiny_model
    task = _task("arith_gen", manager)
    contrast = task_contrast(tokenizer, task, list(task.training_docs())[:8], "train", seed=3)
    for good, bad in zip(contrast.prompts[::2], contrast.prompts[1::2]):
        assert good.endswith(good.rsplit("The answer is ", 1)[1])
        g, b = (int(re.findall(r"-?\d+", text)[-1]) for text in (good, bad))
        assert g != b and good.rsplit(" ", 1)[0] == bad.rsplit(" ", 1)[0]


@needs_data
def test_binary_task_gets_the_label_contrast_with_pairs(tiny_model, manager):
    from baselines.contrast import task_contrast

    _, tokenizer = tiny_model
    task = _task("boolq", manager)
    docs = list(task.validation_docs())[:30]
    contrast = task_contrast(tokenizer, task, docs, "train")
    assert contrast.kind == "label" and contrast.has_readout
    no, yes = contrast.class_tokens
    assert tokenizer.decode([no]) == " no" and tokenizer.decode([yes]) == " yes"
    pairs = contrast.pairs()
    assert len(pairs) == min(int(contrast.labels.sum()), int((1 - contrast.labels).sum()))
    assert bool((contrast.labels[pairs[:, 0]] == 1).all()) and bool((contrast.labels[pairs[:, 1]] == 0).all())
    assert all(p.endswith("Answer:") for p in contrast.prompts)


@pytest.mark.parametrize("name", ["arith_mc", "arith_gen"])
def test_task_scorer_matches_lm_eval(tiny_dir, manager, name):
    """The sweep's scorer gives, document by document, lm-eval's own score (same prompts,
    same few-shot examples, same metric)."""
    from lm_eval import simple_evaluate

    from harness.lm_models import LeanHFLM
    from harness.scoring import TaskScorer

    lm = LeanHFLM(pretrained=tiny_dir, device="cpu", dtype="float32", batch_size=4)
    task = _task(name, manager)
    docs = list(task.test_docs())[:6]
    metric = "acc" if name == "arith_mc" else "exact_match"
    ours = []
    scorer = TaskScorer(lm, task, [docs[0]], seed=0)
    for i in range(len(docs)):  # one document at a time: per-document scores
        scorer = TaskScorer(lm, _task(name, manager), docs[: i + 1], seed=0)
        ours.append(scorer([]) * (i + 1) - sum(ours))
    output = simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=manager,
        limit=6,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
        bootstrap_iters=0,
    )
    samples = sorted(output["samples"][name], key=lambda s: s["doc_id"])
    theirs = [float(s[metric]) for s in samples]
    assert ours == pytest.approx(theirs)
    assert scorer.metric == metric
    # the same requests: prompts, few-shot examples and choices (the scores alone could agree by chance)
    for requests, sample in zip(scorer.requests, samples):
        keep = 2 if name == "arith_mc" else 1  # (context, choice) | (context, generation kwargs)
        assert [list(r.arguments[:keep]) for r in requests] == [list(a[:keep]) for a in sample["arguments"]]
        assert requests[0].arguments[0].count("\n") >= (8 if name == "arith_mc" else 6)  # few-shot included


def _tiny_sweep(tiny_dir, tmp_path, **overrides):
    from baselines.train import VectorTrainConfig

    options = dict(
        model=tiny_dir,
        task="toy_sentiment",
        methods=["mean_diff", "probe", "das"],
        layers=[1, 2],
        coefs=[-1.0, 2.0],
        train_limit=40,
        val_limit=8,
        das_steps=2,
        das_batch=4,
        dtype="float32",
        device="cpu",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    return VectorTrainConfig(**{**options, **overrides})


def test_sweep_chooses_the_best_validation_point_and_writes_artifacts(tiny_dir, tmp_path):
    from baselines import train
    from harness.vectors import SteeringVectors

    config = _tiny_sweep(tiny_dir, tmp_path)
    record = train.run(config)
    points = record["points"]
    for method, chosen in record["chosen"].items():
        layer = chosen["layer"]
        if method != "das":  # chosen layer: best at coefficient 1
            assert points[f"{method}|{layer}|1.0"] == max(points[f"{method}|{l}|1.0"] for l in (1, 2))
        tried = {c: points[f"{method}|{layer}|{c}"] for c in (-1.0, 1.0, 2.0)}
        assert chosen["validation"] == max(tried.values()) and tried[chosen["coef"]] == chosen["validation"]
        vectors = SteeringVectors.load(record["artifacts"][method])
        assert vectors.coefficient == chosen["coef"] and list(vectors.vectors) == [layer]
        assert vectors.vectors[layer].norm().item() == pytest.approx(chosen["gap"], rel=1e-4)
    assert record["chosen"]["das"]["layer"] == record["chosen"]["mean_diff"]["layer"]
    assert train.sweep_done(config)
    # every fitted direction is kept (unit norm), the chosen one among them
    for layer in (1, 2):
        fitted = train.fitted_directions(config, layer)
        assert set(config.methods) - {"das"} <= set(fitted)
        assert all(u.norm().item() == pytest.approx(1.0, rel=1e-4) for u in fitted.values())
    chosen = record["chosen"]["mean_diff"]
    vector = SteeringVectors.load(record["artifacts"]["mean_diff"]).vectors[chosen["layer"]]
    unit = train.fitted_directions(config, chosen["layer"])["mean_diff"]
    assert torch.nn.functional.cosine_similarity(vector, unit, dim=0).item() == pytest.approx(1.0, abs=1e-5)
    written = json.loads((config.model_results / "vectors" / "toy_sentiment" / "sweep.json").read_text())
    assert written["points"] == points
    assert "| mean_diff |" in (config.model_results / "vectors" / "toy_sentiment" / "sweep.md").read_text()


def test_interrupted_sweep_resumes_from_its_scored_points(tiny_dir, tmp_path, monkeypatch):
    from baselines import train

    calls = {"n": 0}
    real = train.TaskScorer.__call__

    def crashing(self, interventions):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(self, interventions)

    config = _tiny_sweep(tiny_dir, tmp_path, methods=["mean_diff", "probe"])
    monkeypatch.setattr(train.TaskScorer, "__call__", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.run(config)
    saved = json.loads((train.vectors_dir(config) / train.PARTIAL_FILE).read_text())["points"]
    assert len(saved) == 3  # base + two layer points survived the crash
    calls["n"] = -100  # no more crashes; count the points scored after the resume
    record = train.run(config)
    total = 1 + 2 * 2 + 2 * 2  # base, 2 methods x 2 layers, 2 methods x 2 new coefficients
    assert len(record["points"]) == total and calls["n"] == -100 + total - 3
    assert {k: record["points"][k] for k in saved} == saved
    assert not (train.vectors_dir(config) / train.PARTIAL_FILE).exists()


def test_fitted_vector_scores_the_same_in_lm_eval_steered(tiny_dir, tmp_path):
    """A vector fitted by the sweep, exported, gives lm-eval's built-in `steered` model the
    same log-likelihoods as our `vector_steered`."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.hf_steered import SteeredModel

    from baselines import train
    from harness.lm_models import VectorSteeredLM
    from harness.vectors import SteeringVectors

    record = train.run(_tiny_sweep(tiny_dir, tmp_path, methods=["mean_diff"], layers=[2], coefs=[4.0]))
    artifact = record["artifacts"]["mean_diff"]
    exported = SteeringVectors.load(artifact).export_lmeval_steered(tmp_path / "steer.pt")
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(
            [
                ("Review: I thought this movie was dull, I hated it.\nSentiment:", " negative"),
                ("Review: I thought this movie was great, I loved it.\nSentiment:", " positive"),
                ("12+5=", "7"),
            ]
        )
    ]
    common = {"device": "cpu", "dtype": "float32", "batch_size": 2}
    ours = VectorSteeredLM(pretrained=tiny_dir, steer=artifact, **common).loglikelihood(requests, disable_tqdm=True)
    theirs = SteeredModel(pretrained=tiny_dir, steer_path=str(exported), **common).loglikelihood(
        requests, disable_tqdm=True
    )
    torch.testing.assert_close([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=1e-5, atol=1e-4)
