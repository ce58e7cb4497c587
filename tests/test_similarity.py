"""Behavioural similarity to RLVR against hand computations on small sample logs."""

import json
import math

import numpy as np
import pytest


def _write(path, rows, kind="choice"):
    with open(path, "w") as handle:
        for doc, (answer, correct, logliks) in enumerate(rows):
            if kind == "choice":
                resps = [[l, False] for l in logliks]
                sample = {"doc_id": doc, "filter": "none", "metrics": ["acc"], "acc": correct, "filtered_resps": resps}
            else:
                sample = {
                    "doc_id": doc,
                    "filter": "strict-match",
                    "metrics": ["exact_match"],
                    "exact_match": correct,
                    "filtered_resps": [answer],
                }
            handle.write(json.dumps(sample) + "\n")
    return path


def test_choice_similarity_matches_hand_computation(tmp_path):
    from crl_bench.analyses.similarity import read_behaviour, similarity

    # gold is choice 0 everywhere; 6 items
    def item(answer):
        logliks = [-1.0, -1.0]
        logliks[answer] = 0.0
        return (answer, float(answer == 0), logliks)

    base = [item(a) for a in (1, 1, 1, 1, 0, 0)]
    rlvr = [item(a) for a in (0, 0, 0, 1, 0, 0)]
    meth = [item(a) for a in (0, 1, 1, 0, 0, 1)]
    b, r, m = (
        read_behaviour(_write(tmp_path / f"{n}.jsonl", rows))
        for n, rows in (("base", base), ("rlvr", rlvr), ("meth", meth))
    )
    assert b.kind == "choice" and b.answers[0] == 1 and b.correct[4] == 1.0
    s = similarity(m, r, b)
    assert s.answer_agreement == pytest.approx(2 / 6)  # items 0 and 4
    assert (s.fixed_by_rlvr, s.fixed_by_method, s.fixed_both) == (3, 2, 1)
    assert s.fixed_jaccard == pytest.approx(1 / 4)
    # hypergeometric: 4 errors, RLVR fixed 3, method fixed 2; P(overlap >= 1) = 1 - C(1,2)/C(4,2) = 1
    assert s.fixed_overlap_p == pytest.approx(1.0)
    from sklearn.metrics import cohen_kappa_score

    assert s.kappa == pytest.approx(cohen_kappa_score([x[1] for x in meth], [x[1] for x in rlvr]))
    # per-item distributions: softmax of (0, -1)
    p = np.array([1, math.exp(-1)]) / (1 + math.exp(-1))
    kl_flip = float((p * np.log(p / p[::-1])).sum())
    assert s.kl_from_rlvr == pytest.approx(kl_flip * 4 / 6)  # four items disagree with RLVR
    assert s.base_kl_from_rlvr == pytest.approx(kl_flip * 3 / 6)  # base disagrees on three
    assert s.gap_closed == pytest.approx(1 - 4 / 3)  # further from RLVR than base was
    assert s.kl_from_base == pytest.approx(kl_flip * 3 / 6)


def test_generation_similarity_uses_the_answer_distribution(tmp_path):
    from crl_bench.analyses.similarity import read_behaviour, similarity

    gold = ["1", "2", "3", "4"]
    base = [("9", 0.0, None), ("2", 1.0, None), ("9", 0.0, None), ("9", 0.0, None)]
    rlvr = [(g, 1.0, None) for g in gold]
    same = [(g, 1.0, None) for g in gold]
    b, r, m = (
        read_behaviour(_write(tmp_path / f"{n}.jsonl", rows, "generation"))
        for n, rows in (("base", base), ("rlvr", rlvr), ("meth", same))
    )
    assert b.kind == "generation" and b.answers[0] == "9"
    s = similarity(m, r, b)
    assert s.answer_agreement == 1.0 and s.kl_from_rlvr == pytest.approx(0.0) and s.gap_closed == pytest.approx(1.0)
    assert s.fixed_jaccard == 1.0 and s.fixed_overlap_p == pytest.approx(1.0)
    assert s.base_js_to_rlvr > 0.3 and s.kl_from_base > 0
    with pytest.raises(ValueError, match="no scored items"):
        read_behaviour(_write(tmp_path / "empty.jsonl", [], "generation"))
    with pytest.raises(ValueError, match="share no evaluated items"):
        similarity(
            m, r, read_behaviour(_write(tmp_path / "b.jsonl", base + base, "generation"), exclude=frozenset(range(4)))
        )


def test_analysis_keeps_the_results_of_tasks_it_did_not_run(tmp_path):
    from types import SimpleNamespace

    from crl_bench.analyses import runner as analysis

    old = {
        "task": "old_task",
        "method": "crl:one-token",
        "n": 4,
        "answer_agreement": 0.5,
        "kappa": None,
        "fixed_by_rlvr": 1,
        "fixed_by_method": 1,
        "fixed_both": 1,
        "fixed_jaccard": 1.0,
        "fixed_overlap_p": 1.0,
        "kl_from_rlvr": 0.1,
        "js_to_rlvr": 0.1,
        "base_js_to_rlvr": 0.2,
        "gap_closed": 0.5,
        "kl_from_base": 0.1,
    }
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "similarity.json").write_text(json.dumps({"rows": [old]}))
    config = SimpleNamespace(results_dir=str(tmp_path), sae="none", model="m", seed=0)
    analysis.run(config, [], {}, console=SimpleNamespace(print=lambda *a, **k: None))
    rows = json.loads((tmp_path / "m" / "similarity.json").read_text())["rows"]  # the model's own folder
    assert rows == [old]
    assert "| old_task | crl:one-token | 4 |" in (tmp_path / "m" / "similarity.md").read_text()
