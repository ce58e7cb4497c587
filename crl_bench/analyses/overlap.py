"""SAE-feature overlap between methods, at the SAE layer.

Each method implicates a weighting over the SAE's features:

- **CRL**: the features its controller chose, weighted by how often (from the logged
  interventions of its test evaluation);
- **steering vectors**: the features whose decoder directions best explain the vector: a
  sparse non-negative-free decomposition of the vector over the decoder directions
  (scikit-learn's orthogonal matching pursuit, `k` atoms), weighted by |coefficient|;
- **RLVR**: the features whose activations change most between the LoRA model and the base
  model on the task's prompts (both models' residuals SAE-encoded; mean |difference|).

Two methods' top-k feature sets are compared by Jaccard index and rank-biased overlap
(extrapolated RBO, Webber et al. 2010), against a permutation null: random feature sets of
the same size drawn to match the second set's firing frequencies (frequency deciles), so
that two methods that both favour common features do not look alike by that alone.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20261124


def crl_weights(interventions: str | Path, d_sae: int, layer: int | None = None) -> np.ndarray:
    """Float[d_sae]: how often each feature was chosen in a CRL run's logged interventions."""
    counts: Counter[int] = Counter()
    with open(interventions) as handle:
        for line in handle:
            entry = json.loads(line)
            if entry.get("feature") is not None and (layer is None or entry.get("layer") == layer):
                counts[int(entry["feature"])] += 1
    weights = np.zeros(d_sae)
    for feature, count in counts.items():
        weights[feature] = count
    return weights


def vector_weights(vector: np.ndarray, decoder: np.ndarray, k: int = 32) -> np.ndarray:
    """Float[d_sae]: |coefficient| of each decoder direction in a k-atom orthogonal matching
    pursuit of `vector` (directions normalised first, so weights compare across features)."""
    from sklearn.linear_model import OrthogonalMatchingPursuit

    atoms = decoder / np.linalg.norm(decoder, axis=1, keepdims=True).clip(1e-12)
    omp = OrthogonalMatchingPursuit(n_nonzero_coefs=min(k, atoms.shape[0]), fit_intercept=False)
    omp.fit(atoms.T, vector)
    return np.abs(omp.coef_)


def activation_shift(base: np.ndarray, tuned: np.ndarray) -> np.ndarray:
    """Float[d_sae]: mean |tuned - base| feature activation over the same tokens ([n, d_sae] each)."""
    if base.shape != tuned.shape:
        raise ValueError(f"activations differ in shape: {base.shape} vs {tuned.shape}")
    return np.abs(tuned - base).mean(0)


def top_k(weights: np.ndarray, k: int) -> list[int]:
    """The k highest-weighted features (fewer if fewer have a positive weight), best first."""
    order = np.argsort(-weights, kind="stable")
    return [int(i) for i in order[:k] if weights[i] > 0]


def jaccard(a: list[int], b: list[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def rbo(a: list[int], b: list[int], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap of two rankings (Webber, Moffat & Zobel 2010, eq. 32),
    for lists of possibly different lengths without ties; 1 for identical rankings."""
    if not a or not b:
        return 0.0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    s, l = len(short), len(long_)
    # X_d: the overlap of the two prefixes of depth d (the short list stays whole past its end)
    x = [len(set(short[:d]) & set(long_[:d])) for d in range(1, l + 1)]
    x_s, x_l = x[s - 1], x[l - 1]
    total = sum(x[d - 1] / d * p**d for d in range(1, l + 1))
    total += sum(x_s * (d - s) / (s * d) * p**d for d in range(s + 1, l + 1))
    return float((1 - p) / p * total + ((x_l - x_s) / l + x_s / s) * p**l)


def frequency_matched_null(
    a: list[int], b: list[int], frequency: np.ndarray, n_permutations: int = 2000, bins: int = 10, seed: int = SEED
) -> dict[str, float]:
    """Jaccard and RBO of (a, b) with permutation p-values: b replaced by random sets whose
    features come from the same firing-frequency deciles as b's (order kept by decile draw)."""
    rng = np.random.default_rng(seed)
    edges = np.quantile(frequency, np.linspace(0, 1, bins + 1)[1:-1])
    decile = np.searchsorted(edges, frequency, side="right")
    members = {d: np.flatnonzero(decile == d) for d in np.unique(decile)}
    observed_j, observed_r = jaccard(a, b), rbo(a, b)
    hits_j = hits_r = 0
    for _ in range(n_permutations):
        drawn: list[int] = []
        for feature in b:
            pool = members[decile[feature]]
            choice = int(rng.choice(pool))
            while choice in drawn and len(drawn) < len(pool):
                choice = int(rng.choice(pool))
            drawn.append(choice)
        hits_j += jaccard(a, drawn) >= observed_j
        hits_r += rbo(a, drawn) >= observed_r
    return {
        "jaccard": observed_j,
        "jaccard_p": (1 + hits_j) / (1 + n_permutations),
        "rbo": observed_r,
        "rbo_p": (1 + hits_r) / (1 + n_permutations),
    }


def overlap_table(
    weights: dict[str, np.ndarray], frequency: np.ndarray, k: int = 20, n_permutations: int = 2000
) -> list[dict[str, Any]]:
    """Pairwise overlap of every two methods' top-k features, with the frequency-matched null."""
    names = sorted(weights)
    tops = {name: top_k(weights[name], k) for name in names}
    rows = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if not tops[first] or not tops[second]:
                continue
            stats = frequency_matched_null(tops[first], tops[second], frequency, n_permutations)
            rows.append(
                {"a": first, "b": second, "k": k, "shared": sorted(set(tops[first]) & set(tops[second])), **stats}
            )
    return rows
