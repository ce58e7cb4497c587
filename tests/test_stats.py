"""Statistics against hand-written reference computations."""

import math

import pytest

from harness.stats import holm, mcnemar_exact, mean_ci95


def test_mcnemar_exact_matches_binomial_formula():
    a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3  # 10 only-a, 2 only-b, 8 concordant
    b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    n, k = 12, 2
    expected = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert mcnemar_exact(a, b) == pytest.approx(expected)
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1])


def test_wilson_interval_matches_formula():
    k, n, z = 30, 50, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = mean_ci95([1] * k + [0] * (n - k))
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_bootstrap_interval_for_non_binary_scores_contains_mean_and_is_seeded():
    scores = [0.1, 0.5, 0.7, 0.2, 0.9, 0.4, 0.3, 0.8]
    low, high = mean_ci95(scores)
    assert low < sum(scores) / len(scores) < high
    assert mean_ci95(scores) == (low, high)


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, None, 0.03]
    # sorted: 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> max(0.06, 0.04)=0.06
    assert holm(p) == pytest.approx([0.03, 0.06, None, 0.06])
