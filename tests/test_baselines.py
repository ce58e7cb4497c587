"""Steering-vector baselines: fitters recover planted directions, DAS finds the direction a toy
model uses, the sentiment contrast reads the right token, checks run, artifacts round-trip."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from baselines.das import fit_das, interchange
from baselines.fitters import FITTERS, class_gap
from harness.models import model_results


def planted(n: int = 400, d: int = 48, separation: float = 8.0, seed: int = 0):
    """Isotropic noise + a large constant offset (like Gemma's residual mean) + classes
    separated along a random unit direction; returns (x, y, direction)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g) + 50.0 * torch.randn(d, generator=g)
    x += (y.float() - 0.5)[:, None] * separation * direction
    return x, y, direction


@pytest.mark.parametrize("method", sorted(FITTERS))
def test_fitter_recovers_a_planted_direction(method):
    x, y, direction = planted()
    found = FITTERS[method](x, y, seed=0)
    assert found.shape == direction.shape
    assert torch.dot(found, direction) > 0.95  # oriented: positive class projects higher
    assert class_gap(x, y, found) > 0


def test_fitters_reject_bad_labels():
    x, y, _ = planted()
    with pytest.raises(ValueError, match="both classes"):
        FITTERS["mean_diff"](x, torch.ones_like(y))
    with pytest.raises(ValueError, match=r"activations \[N, D\]"):
        FITTERS["pca"](x[0], y)


def test_interchange_swaps_only_the_component_along_u():
    g = torch.Generator().manual_seed(0)
    base, source = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    u = torch.randn(16, generator=g)
    u /= u.norm()
    out = interchange(base, source, u)
    assert_close(out @ u, source @ u)
    assert_close(out - (out @ u)[:, None] * u, base - (base @ u)[:, None] * u)


def test_das_finds_the_direction_a_toy_model_uses():
    """The toy model's label logit difference reads only the projection on `used`; DAS,
    started from a random vector, must find it, and patching along it flips predictions."""
    g = torch.Generator().manual_seed(1)
    d = 32
    used = torch.randn(d, generator=g)
    used /= used.norm()
    n = 256
    labels = torch.arange(n) % 2
    acts = torch.randn(n, d, generator=g) * 2.0 + (labels.float() * 2 - 1)[:, None] * 3.0 * used
    readout = lambda h: 4.0 * (h @ used)  # noqa: E731  (logit diff "positive" - "negative")
    base, source = torch.arange(0, n, 2), torch.arange(1, n, 2)  # opposite labels
    base, source = torch.cat([base, source]), torch.cat([source, base])
    sign = labels[source].float() * 2 - 1

    def objective(u):
        return -(sign * readout(interchange(acts[base], acts[source], u))).mean()

    u = fit_das(objective, d, steps=150, lr=0.05, seed=3)
    assert abs(float(u @ used)) > 0.95
    flipped = (readout(interchange(acts[base], acts[source], u)) > 0).long() == labels[source]
    oracle = (readout(interchange(acts[base], acts[source], used)) > 0).long() == labels[source]
    # patching the true direction flips exactly the pairs whose source is classified right
    assert flipped.float().mean() >= oracle.float().mean() - 0.02 and oracle.float().mean() > 0.85
    control = torch.randn(d, generator=g)
    control /= control.norm()
    flipped_random = (readout(interchange(acts[base], acts[source], control)) > 0).long() == labels[source]
    assert flipped_random.float().mean() < 0.8


def test_das_stops_on_a_non_finite_loss():
    with pytest.raises(RuntimeError, match="lower the learning rate"):
        fit_das(lambda u: u.sum() * float("nan"), 4, steps=3)


def test_sentiment_contrast_reads_the_adjective(tiny_model):
    from baselines.contrast import collect, sentiment_contrast

    model, tokenizer = tiny_model
    contrast = sentiment_contrast(tokenizer, "validation")
    assert len(contrast) == 200 and set(contrast.labels.tolist()) == {0, 1}
    from harness.tasks import load_task

    docs = list(load_task("toy_sentiment").dataset["validation"])
    for i in range(0, 200, 37):
        ids = tokenizer(contrast.prompts[i])["input_ids"]
        assert tokenizer.decode([ids[contrast.read_positions[i]]]).strip() == docs[i]["adjective"]
    pairs = contrast.pairs()
    assert len(pairs) == 100 and (contrast.labels[pairs[:, 0]] == 1).all() and (contrast.labels[pairs[:, 1]] == 0).all()
    acts = collect(model, tokenizer, contrast, [1, 3], indices=torch.arange(6))
    assert acts.shape == (6, 2, 64)
    # reading item by item (no padding) gives the same activations as a padded batch
    one = collect(model, tokenizer, contrast, [1, 3], batch_size=1, indices=torch.arange(6))
    assert_close(acts, one, atol=1e-4, rtol=1e-4)


def test_checks_run_and_patching_with_the_identity_direction_flips_nothing(tiny_model):
    from baselines.checks import activation_addition, clean_scores, directional_ablation, directional_patching
    from baselines.contrast import sentiment_contrast

    model, tokenizer = tiny_model
    test = sentiment_contrast(tokenizer, "validation").head(40)
    u = torch.zeros(64)
    u[0] = 1.0
    clean = clean_scores(model, tokenizer, test)
    flip = directional_patching(model, tokenizer, test, 2, u)
    assert 0.0 <= flip <= 1.0
    # patching in a prompt's own component is the identity: nothing may flip
    from baselines.contrast import collect

    own = collect(model, tokenizer, test, [2])[:, 0]
    partner = torch.empty(len(test), dtype=torch.long)
    pairs = test.pairs()
    partner[pairs[:, 0]], partner[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    as_if_source = torch.empty_like(own)
    as_if_source[partner] = own  # the "source" activations handed to each base are its own
    assert directional_patching(model, tokenizer, test, 2, u, source_acts=as_if_source) == 0.0
    ablated = directional_ablation(model, tokenizer, test, 2, u, mean_projection=0.0)
    assert 0.0 <= ablated["accuracy"] <= 1.0
    added = activation_addition(model, tokenizer, test, 2, u, gap=1.0, coefficients=[0.0, -2.0])
    assert added[0.0] == pytest.approx(clean["mean_logit_diff"], abs=1e-4)


def test_vector_checks_cli_writes_tables_plots_and_artifacts(tmp_path, tiny_dir):
    import json

    from crl_bench.cli import main
    from harness.vectors import SteeringVectors

    results = tmp_path / "results"
    assert (
        main(
            [
                "vectors",
                "checks",
                "--model",
                tiny_dir,
                "--layers",
                "1,2",
                "--das-layers",
                "2",
                "--das-steps",
                "2",
                "--limit",
                "40",
                "--dtype",
                "float32",
                "--device",
                "cpu",
                "--results-dir",
                str(results),
                "--runs-dir",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    out = model_results(results, tiny_dir) / "vectors" / "toy_sentiment"
    record = json.loads((out / "checks.json").read_text())
    assert record["chosen_layer"] in (1, 2)
    assert set(record["patching"]["test"]) == {"mean_diff", "kmeans", "probe", "pca", "das", "random"}
    assert set(record["patching"]["test"]["das"]) == {"2"}
    for path in ("checks.md", "patching.png", "cosine.png"):
        assert (out / path).stat().st_size > 0
    matrix = torch.tensor(record["cosine"]["matrix"])
    assert_close(matrix.diagonal(), torch.ones(len(matrix)), atol=1e-5, rtol=0)
    artifact = SteeringVectors.load(record["artifacts"]["probe"])
    assert artifact.method == "probe" and list(artifact.vectors) == [record["chosen_layer"]]
    exported = artifact.export_lmeval_steered(tmp_path / "probe.pt")
    assert exported.exists()
