"""Behavioural similarity to RLVR, from lm-eval's per-sample logs (`samples.jsonl`).

For one task, a method is compared with RLVR (and, as the yardstick, base with RLVR):

- **answer agreement**: the share of items where both give the same answer (multiple choice:
  the highest-log-likelihood choice, as lm-eval's `acc` scores it; generation: the filtered
  answer the metric reads);
- **correctness agreement**: Cohen's kappa of the two methods' per-item correctness
  (scikit-learn);
- **fixed-item overlap**: of the items base gets wrong, those RLVR fixes and those the method
  fixes; their Jaccard index and a hypergeometric p-value (scipy) for an overlap at least this
  large if the method's fixes were a random draw from base's errors;
- **distributional distance**: KL(RLVR || method) and Jensen-Shannon distance on the task's
  answer distribution (multiple choice: per item, the softmax of the choices'
  log-likelihoods, averaged over items; generation: the answers' empirical distribution over
  the test set), with base-vs-RLVR beside it and the share of that gap the method closes;
- **movement from base**: KL(method || base) on the same distributions (how far each method
  moved the model).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

EPS = 1e-9


@dataclass
class Behaviour:
    """One evaluated method's per-item behaviour on one task (one lm-eval filter)."""

    kind: str  # choice | generation
    answers: dict[int, Any]  # doc id -> chosen choice index / answer string
    correct: dict[int, float]
    distributions: dict[int, np.ndarray]  # choice: doc id -> probabilities over the choices


def scored_samples(
    samples: str | Path,
    metric: str | None = None,
    filter_name: str | None = None,
    exclude: frozenset[int] = frozenset(),
) -> Iterator[tuple[int, dict, float]]:
    """(doc id, logged sample, score) for each document of a `samples.jsonl`, for one metric and
    filter (the first found unless named); documents in `exclude` are left out."""
    with open(samples) as handle:
        for line in handle:
            sample = json.loads(line)
            doc = int(sample["doc_id"])
            if doc in exclude or (filter_name is not None and sample["filter"] != filter_name):
                continue
            filter_name = sample["filter"]
            metric = metric or sample["metrics"][0]
            if metric in sample:
                yield doc, sample, float(sample[metric])


def read_behaviour(
    samples: str | Path,
    metric: str | None = None,
    filter_name: str | None = None,
    exclude: frozenset[int] = frozenset(),
) -> Behaviour:
    """Per-item answers, correctness and choice distributions from a `samples.jsonl`
    (the first metric and filter found unless named)."""
    answers, correct, distributions, kind = {}, {}, {}, None
    for doc, sample, value in scored_samples(samples, metric, filter_name, exclude):
        correct[doc] = value
        responses = sample["filtered_resps"]
        if responses and isinstance(responses[0], list):  # multiple choice: [loglik, is_greedy] per choice
            kind = "choice"
            logliks = np.array([float(r[0]) for r in responses])
            answers[doc] = int(logliks.argmax())
            p = np.exp(logliks - logliks.max())
            distributions[doc] = p / p.sum()
        else:
            kind = "generation"
            answers[doc] = str(responses[0] if isinstance(responses, list) and responses else responses).strip()
    if not correct:
        named = f" for metric {metric!r} / filter {filter_name!r}" if metric or filter_name else ""
        raise ValueError(f"{samples} has no scored items{named}")
    return Behaviour(kind or "generation", answers, correct, distributions)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.special import rel_entr

    return float(rel_entr(p, np.clip(q, EPS, None)).sum())


def _js(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p, q, base=2))


def _distances(a: Behaviour, b: Behaviour, items: list[int]) -> tuple[float, float]:
    """(KL(a || b), Jensen-Shannon distance) over the shared items."""
    if a.kind == "choice":
        pairs = [
            (a.distributions[d], b.distributions[d])
            for d in items
            if d in a.distributions and d in b.distributions and len(a.distributions[d]) == len(b.distributions[d])
        ]
        if not pairs:
            return float("nan"), float("nan")
        return float(np.mean([_kl(p, q) for p, q in pairs])), float(np.mean([_js(p, q) for p, q in pairs]))
    vocabulary = sorted({a.answers[d] for d in items} | {b.answers[d] for d in items})
    count_a, count_b = Counter(a.answers[d] for d in items), Counter(b.answers[d] for d in items)
    # add-half smoothing: an answer one method never gives does not make the KL infinite
    p = np.array([count_a[v] + 0.5 for v in vocabulary], dtype=float)
    q = np.array([count_b[v] + 0.5 for v in vocabulary], dtype=float)
    return _kl(p / p.sum(), q / q.sum()), _js(p / p.sum(), q / q.sum())


@dataclass
class Similarity:
    n: int
    answer_agreement: float
    kappa: float | None
    fixed_by_rlvr: int
    fixed_by_method: int
    fixed_both: int
    fixed_jaccard: float | None
    fixed_overlap_p: float | None
    kl_from_rlvr: float  # KL(RLVR || method)
    js_to_rlvr: float
    base_kl_from_rlvr: float  # KL(RLVR || base): the gap to close
    base_js_to_rlvr: float
    gap_closed: float | None  # 1 - JS(method, RLVR) / JS(base, RLVR)
    kl_from_base: float  # KL(method || base): how far the method moved the model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def similarity(method: Behaviour, rlvr: Behaviour, base: Behaviour) -> Similarity:
    from scipy.stats import hypergeom
    from sklearn.metrics import cohen_kappa_score

    items = sorted(set(method.correct) & set(rlvr.correct) & set(base.correct))
    if not items:
        raise ValueError("the method, RLVR and base share no evaluated items; evaluate them with the same --limit")
    agreement = float(np.mean([method.answers[d] == rlvr.answers[d] for d in items]))
    x, y = [method.correct[d] for d in items], [rlvr.correct[d] for d in items]
    # undefined when either side is constant (e.g. RLVR right on every item)
    kappa = None if len(set(x)) < 2 or len(set(y)) < 2 else float(cohen_kappa_score(x, y))
    wrong = [d for d in items if base.correct[d] == 0]
    fixed_rlvr = {d for d in wrong if rlvr.correct[d] == 1}
    fixed_method = {d for d in wrong if method.correct[d] == 1}
    both = fixed_rlvr & fixed_method
    union = fixed_rlvr | fixed_method
    jaccard = len(both) / len(union) if union else None
    # P(overlap >= observed) when the method's fixes are a random draw from base's errors
    p = float(hypergeom.sf(len(both) - 1, len(wrong), len(fixed_rlvr), len(fixed_method))) if union else None
    kl_rlvr, js_rlvr = _distances(rlvr, method, items)
    base_kl, base_js = _distances(rlvr, base, items)
    kl_base, _ = _distances(method, base, items)
    gap = None if not base_js or np.isnan(base_js) else 1 - js_rlvr / base_js
    return Similarity(
        len(items),
        agreement,
        kappa,
        len(fixed_rlvr),
        len(fixed_method),
        len(both),
        jaccard,
        p,
        kl_rlvr,
        js_rlvr,
        base_kl,
        base_js,
        gap,
        kl_base,
    )
