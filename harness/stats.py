"""Statistics for leaderboard rows (scipy and statsmodels, seeded; only the two-level
seeds x items bootstrap, which neither library offers, is written here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def paired_difference(
    a: Sequence[float], b: Sequence[float], clusters: Sequence[Any] | None = None, seed: int = SEED
) -> tuple[float, tuple[float, float], str]:
    """mean(a) - mean(b) over paired items with a 95% interval, and how it was computed.

    Without clusters: a paired BCa bootstrap (scipy). With clusters (items that share a
    passage): the cluster-robust interval of the mean difference (statsmodels OLS on a
    constant with cluster-robust covariance), since resampling items would treat correlated
    items as independent."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired scores must be non-empty and of equal length: {x.shape} vs {y.shape}")
    diff = x - y
    delta = float(diff.mean())
    if np.all(diff == diff[0]):
        return delta, (delta, delta), "exact"
    if clusters is not None and len(set(clusters)) < len(clusters):
        import statsmodels.api as sm

        groups = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)[1]
        fit = sm.OLS(diff, np.ones_like(diff)).fit(cov_type="cluster", cov_kwds={"groups": groups})
        low, high = fit.conf_int(0.05)[0]
        return delta, (float(low), float(high)), f"cluster-robust ({groups.max() + 1} clusters)"
    result = stats.bootstrap(
        (x, y),
        lambda u, v, axis=-1: u.mean(axis) - v.mean(axis),
        paired=True,
        confidence_level=0.95,
        n_resamples=2000,
        random_state=seed,
        vectorized=True,
    )
    interval = result.confidence_interval
    return delta, (float(interval.low), float(interval.high)), "paired bootstrap (BCa)"


def recovered_share(
    base: Sequence[float], teacher: Sequence[float], student: Sequence[float], seed: int = SEED
) -> tuple[float | None, tuple[float, float] | None]:
    """The share of the teacher's gain over base that the student recovers, (mean(student) -
    mean(base)) / (mean(teacher) - mean(base)), over paired items, with a 95% paired percentile
    bootstrap interval (items resampled together). None where the teacher gained nothing; the
    interval None where some resamples have the teacher gaining nothing (a ratio over a gain that
    resampling can make zero or negative is unbounded: no interval says that better than one)."""
    b, t, s = (np.asarray(x, dtype=float) for x in (base, teacher, student))
    if not (b.shape == t.shape == s.shape) or b.size == 0:
        raise ValueError(f"paired scores must be non-empty and of equal length: {b.shape}, {t.shape}, {s.shape}")
    if t.mean() - b.mean() <= 0:
        return None, None

    def share(u, v, w, axis=-1):
        gain = v.mean(axis) - u.mean(axis)
        return np.where(gain > 0, (w.mean(axis) - u.mean(axis)) / np.where(gain > 0, gain, 1), np.nan)

    point = float(share(b, t, s))
    result = stats.bootstrap(
        (b, t, s),
        share,
        paired=True,
        confidence_level=0.95,
        n_resamples=2000,
        method="percentile",
        random_state=seed,
        vectorized=True,
    )
    interval = result.confidence_interval
    if np.isnan(result.bootstrap_distribution).any():
        return point, None
    return point, (float(interval.low), float(interval.high))


def side_effect_ratio(method: Sequence[float], base: Sequence[float]) -> float | None:
    """Of the items whose correctness changed versus base, the share that got worse
    (None when nothing changed)."""
    x, y = np.asarray(method, dtype=float), np.asarray(base, dtype=float)
    worse, better = int((x < y).sum()), int((x > y).sum())
    return None if worse + better == 0 else worse / (worse + better)


def min_detectable_difference(n: int, p_base: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest accuracy gain over `p_base` a two-sided test at `alpha` detects with
    `power` on `n` items, for two independent samples (statsmodels' power for Cohen's h).
    Conservative for our paired comparisons: pairing removes the concordant items' noise."""
    from statsmodels.stats.power import NormalIndPower

    if n < 2:
        return float("nan")
    p = min(max(p_base, 1e-6), 1 - 1e-6)
    h = NormalIndPower().solve_power(effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=1.0)
    phi = 2 * np.arcsin(np.sqrt(p)) + h
    if phi >= np.pi:  # even a perfect score is not detectable from this base rate
        return float("nan")
    return float(np.sin(phi / 2) ** 2 - p)


def seeds_items_interval(
    matrix: Sequence[Sequence[float]], seed: int = SEED, n_resamples: int = 2000
) -> tuple[float, float]:
    """95% interval of the mean over seeds x items (rows: seeds, columns: the same items),
    resampling seeds and items together (two-level percentile bootstrap), so the interval
    carries both the training-seed and the test-item variance."""
    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2 or values.size == 0:
        raise ValueError("seeds_items_interval needs a non-empty seeds x items matrix")
    rng = np.random.default_rng(seed)
    n_seeds, n_items = values.shape
    means = np.empty(n_resamples)
    for i in range(n_resamples):
        rows = rng.integers(0, n_seeds, n_seeds)
        cols = rng.integers(0, n_items, n_items)
        means[i] = values[np.ix_(rows, cols)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
