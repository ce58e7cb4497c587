"""SAE-feature overlap: weights per method, Jaccard / RBO, and the frequency-matched null."""

import json

import numpy as np
import pytest


def test_rbo_reference_values():
    from crl_bench.analyses.overlap import rbo

    assert rbo([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert rbo([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0)
    # top-weighted: agreeing at the top beats agreeing at the bottom
    assert rbo([1, 2, 3, 4], [1, 2, 9, 8]) > rbo([1, 2, 3, 4], [9, 8, 3, 4])
    # hand computation, p = 0.5, a = [1, 2], b = [2, 1]: X1 = 0, X2 = 2
    # RBO_ext = (1-p)/p * (0/1 * p + 2/2 * p^2) + (X2/2) * p^2 = 1 * 0.25 + 0.25 = 0.5
    assert rbo([1, 2], [2, 1], p=0.5) == pytest.approx(0.5)
    # uneven lengths: a prefix of the longer list is close to 1
    assert rbo([1, 2, 3], [1, 2, 3, 4, 5, 6]) == pytest.approx(1.0)


def test_vector_weights_recover_the_planted_features():
    from crl_bench.analyses.overlap import top_k, vector_weights

    rng = np.random.default_rng(0)
    decoder = rng.normal(size=(64, 16))
    vector = 3 * decoder[5] / np.linalg.norm(decoder[5]) - 2 * decoder[40] / np.linalg.norm(decoder[40])
    weights = vector_weights(vector, decoder, k=4)
    assert top_k(weights, 2) == [5, 40]
    assert weights[5] == pytest.approx(3, rel=1e-6) and weights[40] == pytest.approx(2, rel=1e-6)


def test_crl_weights_count_logged_choices(tmp_path):
    from crl_bench.analyses.overlap import crl_weights

    log = tmp_path / "interventions.jsonl"
    log.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {"layer": 9, "feature": 3},
                {"layer": 9, "feature": 3},
                {"layer": 9, "feature": None},
                {"layer": 6, "feature": 7},
                {"layer": 9, "feature": 1},
            ]
        )
    )
    assert crl_weights(log, 10, layer=9).tolist() == [0, 1, 0, 2, 0, 0, 0, 0, 0, 0]
    assert crl_weights(log, 10)[7] == 1


def test_frequency_matched_null_separates_real_overlap_from_chance():
    from crl_bench.analyses.overlap import activation_shift, frequency_matched_null, overlap_table

    rng = np.random.default_rng(1)
    frequency = rng.random(500)
    a = list(range(0, 20))
    same = frequency_matched_null(a, list(range(0, 20)), frequency, n_permutations=300)
    assert same["jaccard"] == 1.0 and same["jaccard_p"] < 0.01 and same["rbo_p"] < 0.01
    other = frequency_matched_null(a, list(range(300, 320)), frequency, n_permutations=300)
    assert other["jaccard"] == 0.0 and other["jaccard_p"] > 0.5
    shift = activation_shift(np.zeros((4, 500)), np.tile(np.arange(500.0), (4, 1)))
    weights = {"rlvr": shift, "crl": np.arange(500.0), "vector": np.r_[np.ones(10), np.zeros(490)]}
    rows = overlap_table(weights, frequency, k=10, n_permutations=100)
    by = {(r["a"], r["b"]): r for r in rows}
    assert by[("crl", "rlvr")]["jaccard"] == 1.0 and by[("crl", "vector")]["jaccard"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        activation_shift(np.zeros((2, 3)), np.zeros((3, 3)))
