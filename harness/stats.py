"""Statistics for leaderboard rows (scipy, seeded; nothing hand-rolled)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

SEED = 20261123


def _is_binary(scores: np.ndarray) -> bool:
    return bool(np.isin(scores, (0.0, 1.0)).all())


def mean_ci95(scores: Sequence[float], seed: int = SEED) -> tuple[float, float]:
    """95% interval of a mean: Wilson score for 0/1 scores, BCa bootstrap otherwise."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("no scores to summarise")
    if _is_binary(values):
        interval = stats.binomtest(int(values.sum()), int(values.size)).proportion_ci(0.95, method="wilson")
        return float(interval.low), float(interval.high)
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, confidence_level=0.95, random_state=seed, n_resamples=2000)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (binomial test on discordant pairs)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes differ in length: {x.shape} vs {y.shape}")
    if not (_is_binary(x) and _is_binary(y)):
        raise ValueError("McNemar's test needs 0/1 outcomes")
    only_a = int(((x == 1) & (y == 0)).sum())
    only_b = int(((x == 0) & (y == 1)).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None entries are left out and kept as None)."""
    from statsmodels.stats.multitest import multipletests

    present = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted: list[float | None] = [None] * len(pvalues)
    if present:
        corrected = multipletests([pvalues[i] for i in present], method="holm")[1]
        for i, p in zip(present, corrected):
            adjusted[i] = float(p)
    return adjusted
