"""Circuits: attribution patching and real activation patching on the tiny model, where the
method differs from base in one known component."""

import copy

import pytest
import torch


@pytest.fixture(scope="module")
def setup(tiny_dir, tiny_sae_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crl_bench.analyses.circuits import make_batches
    from harness.models import model_info
    from harness.sae import load_sae
    from harness.tasks import load_task
    from rl.crl.rollouts import build_problem

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    task = load_task("toy_sentiment")
    problem = build_problem(task, list(task.validation_docs())[:12], tokenizer, seed=0)
    batches = make_batches(tokenizer, problem, 6, "cpu")
    sae = load_sae(tiny_sae_dir, model_info(tiny_dir), 2)
    return model, batches, sae


def _perturbed(model, module_path, scale):
    method = copy.deepcopy(model)
    with torch.no_grad():
        method.get_submodule(module_path).weight.mul_(scale)
    return method


def test_patching_the_one_changed_mlp_recovers_the_whole_change(setup):
    from crl_bench.analyses.circuits import attribution, patched_metric, recovered, top_nodes

    model, batches, sae = setup
    method = _perturbed(model, "model.layers.2.mlp.down_proj", 3.0)
    scores, metrics = attribution(model, method, batches, n_heads=2, sae=sae)
    assert metrics["method"] != pytest.approx(metrics["base"])
    # nothing upstream of the change moved
    assert all(abs(scores.get(n, 0.0)) == 0 for n in [("head", 0, 0), ("head", 1, 1), ("mlp", 0, 0), ("mlp", 1, 0)])
    assert ("mlp", 2, 0) in top_nodes(scores, 3, ("head", "mlp"))
    patched = patched_metric(model, method, batches, 2, [("mlp", 2, 0)])
    assert recovered(patched, metrics["base"], metrics["method"], min_change=1e-9) == pytest.approx(1.0, abs=1e-4)
    # an unchanged node recovers nothing
    assert recovered(
        patched_metric(model, method, batches, 2, [("mlp", 0, 0)]), metrics["base"], metrics["method"], min_change=1e-9
    ) == pytest.approx(0.0, abs=1e-5)


def test_patching_heads_and_sae_features(setup):
    from crl_bench.analyses.circuits import attribution, patched_metric, recovered, top_nodes

    model, batches, sae = setup
    method = _perturbed(model, "model.layers.3.self_attn.v_proj", 2.0)  # both heads of layer 3 share the value head
    scores, metrics = attribution(model, method, batches, n_heads=2)
    assert set(top_nodes(scores, 2, ("head",))) == {("head", 3, 0), ("head", 3, 1)}
    patched = patched_metric(model, method, batches, 2, [("head", 3, 0), ("head", 3, 1)])
    assert recovered(patched, metrics["base"], metrics["method"], min_change=1e-9) == pytest.approx(1.0, abs=1e-4)


def test_sae_feature_nodes_with_an_exact_sae(setup, tiny_dir, tmp_path):
    """An SAE that reconstructs exactly (identity dictionary, all features active): steering
    along feature f's direction changes only feature f, so f is the only SAE node and
    patching it recovers the whole change."""
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    from crl_bench.analyses.circuits import attribution, patched_metric, recovered, top_nodes
    from harness.models import model_info
    from harness.sae import load_sae
    from harness.steering import AddVectors

    model, batches, _ = setup
    exact = SAE.from_dict(
        TopKSAEConfig(d_in=64, d_sae=64, k=64, metadata=SAEMetadata(hook_name="model.layers.2")).to_dict()
    )
    with torch.no_grad():
        exact.W_enc.copy_(torch.eye(64))
        exact.W_dec.copy_(torch.eye(64))
        exact.b_enc.zero_()
        exact.b_dec.fill_(-1e3)  # every feature positive, so TopK(64) keeps them all and decode is exact
    exact.save_model(tmp_path / "exact")
    sae = load_sae(str(tmp_path / "exact"), model_info(tiny_dir), 2)
    feature = 7
    steering = [AddVectors({2: torch.eye(64)[feature] * 5.0}, positions="all")]
    scores, metrics = attribution(model, model, batches, n_heads=2, sae=sae, interventions=steering)
    assert metrics["method"] != pytest.approx(metrics["base"])
    assert top_nodes(scores, 5, ("sae",)) == [("sae", 2, feature)]
    assert all(abs(scores.get(("head", l, h), 0.0)) == 0 for l in (0, 1, 2) for h in (0, 1))  # upstream of the steering
    patched = patched_metric(model, model, batches, 2, [("sae", 2, feature)], sae=sae, interventions=steering)
    assert recovered(patched, metrics["base"], metrics["method"], min_change=1e-9) == pytest.approx(1.0, abs=1e-3)


def test_node_overlap_null():
    from crl_bench.analyses.circuits import node_overlap

    universe = [("head", l, h) for l in range(10) for h in range(4)] + [("mlp", l, 0) for l in range(10)]
    same = node_overlap(universe[:8], universe[:8], universe, n_permutations=300)
    assert same["jaccard"] == 1.0 and same["p"] < 0.01
    disjoint = node_overlap(universe[:8], universe[20:28], universe, n_permutations=300)
    assert disjoint["jaccard"] == 0.0 and disjoint["p"] == 1.0


def test_recovered_share_needs_a_real_change():
    from crl_bench.analyses.circuits import recovered

    assert recovered(1.5, 1.0, 2.0) == pytest.approx(0.5)
    assert recovered(1.02, 1.0, 1.01) is None  # a 0.01 change: the share would be noise over noise
    assert recovered(1.02, 1.0, 1.01, min_change=0.001) == pytest.approx(2.0)
