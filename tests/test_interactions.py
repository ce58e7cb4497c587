"""CRL interaction analysis (`crl_bench.analyses.interactions`) on the tiny model with hand-built
controllers whose dependence between choices is known."""

from __future__ import annotations

import pytest
import torch

LAYERS = [1, 2]
F_EARLY, G_LATE, D_SAE = 1, 2, 4


def _bank(d_model: int):
    from rl.crl.controller import FeatureBank

    torch.manual_seed(0)
    directions = {l: torch.nn.functional.normalize(torch.randn(D_SAE, d_model), dim=-1) for l in LAYERS}
    return FeatureBank(
        LAYERS,
        directions,
        {l: torch.full((D_SAE,), 8.0) for l in LAYERS},
        {l: torch.arange(D_SAE) + 10 * l for l in LAYERS},
    )


def _controller(d_model: int, later_reads_residual: bool):
    """Layer index 0 always picks F_EARLY. Layer index 1 picks G_LATE exactly when its residual
    differs from `mean[1]` (set by the test to the residual it sees when the earlier choice is
    removed), if `later_reads_residual`; otherwise it always picks G_LATE."""
    from rl.crl.controller import Controller

    c = Controller(d_model, D_SAE, n_layers=2, hidden=8)
    with torch.no_grad():
        for p in c.parameters():
            p.zero_()
        c.feature_head.bias.fill_(-100.0)
        c.feature_head.bias[D_SAE] = 0.0  # no-op
        c.feature_head.bias[F_EARLY] = -1.0
        c.feature_head.weight[F_EARLY, 2] = 100.0
        c.layer_embedding.weight[0, 2] = 1.0  # layer index 0: F_EARLY (logit 99)
        c.layer_embedding.weight[0, :2] = -1e6  # ... and never G_LATE
        if later_reads_residual:
            direction = torch.randn(d_model)
            c.trunk[0].weight[0] = direction
            c.trunk[0].weight[1] = -direction
            c.trunk[2].weight[0, 0] = 1.0
            c.trunk[2].weight[1, 1] = 1.0
            c.feature_head.weight[G_LATE, :2] = 10.0
            c.feature_head.bias[G_LATE] = -5.0
            c.scale[1] = 1e-3
        else:
            c.feature_head.bias[G_LATE] = 1.0
            c.layer_embedding.weight[0, 3] = -1e6
            c.feature_head.weight[G_LATE, 3] = 1.0
    return c.eval()


def _input_blind(d_model: int, bias: dict[int, float], fill: float = -100.0):
    """A one-layer controller that ignores its input: feature logits = `fill`, except `bias`."""
    from rl.crl.controller import Controller

    c = Controller(d_model, D_SAE, n_layers=1, hidden=8)
    with torch.no_grad():
        for p in c.parameters():
            p.zero_()
        c.feature_head.bias.fill_(fill)
        for index, value in bias.items():
            c.feature_head.bias[index] = value
    return c.eval()


def _one_layer_bank(d_model: int):
    from rl.crl.controller import FeatureBank

    two = _bank(d_model)
    return FeatureBank([1], {1: two.directions[1]}, {1: two.scales[1]}, {1: two.ids[1]})


def _rollouts(tiny_model, controller, bank, task_name: str, n_docs: int, max_new: int = 6):
    from harness.tasks import load_task
    from rl.crl.rollouts import Rollouts, build_problem

    model, tokenizer = tiny_model
    task = load_task(task_name)
    problem = build_problem(task, list(task.validation_docs())[:n_docs], tokenizer, seed=0)
    return Rollouts(model, tokenizer, controller, bank, problem, max_new, batch_size=4)


def test_multi_layer_finds_a_later_choice_that_depends_on_the_earlier_one(tiny_model):
    from crl_bench.analyses.interactions import multi_layer

    model, _ = tiny_model
    d_model = model.config.hidden_size
    bank = _bank(d_model)
    controller = _controller(d_model, later_reads_residual=True)
    rollouts = _rollouts(tiny_model, controller, bank, "arith_mc", 1)
    noop = (D_SAE, 0)
    # the residual the later layer reads when the earlier choice is removed becomes its "mean"
    _, records, _, _ = rollouts.run([0], "greedy", keep_residuals=False)
    position = records[0].position
    _, records, residuals, _ = rollouts.run([0], "greedy", overrides={0: {(position, LAYERS[0]): noop}})
    controller.mean[1] = next(h for r, h in zip(records, residuals) if r.layer == LAYERS[1])

    result = multi_layer(rollouts, [0], noop)
    # sampling with common random numbers finds the same dependence (these logits are decisive)
    assert multi_layer(rollouts, [0], noop, mode="sample")["pairs"][0]["later_changed"] == 1
    (pair,) = result["pairs"]
    assert (pair["earlier"], pair["later"], pair["earlier_steered"]) == (1, 2, 1)
    assert pair["later_changed"] == 1
    assert pair["moves"] == [
        {"earlier_feature": 10 + F_EARLY, "later_before": 20 + G_LATE, "later_after": None, "count": 1}
    ]
    # the four replayed terms are real runs: 'neither' is the unsteered model
    rewards, _, _, _ = rollouts.run([0], "off", keep_residuals=False)
    logits = rollouts.choice_logits[0]
    gold = rollouts.problem.gold[0]
    unsteered = float(logits[gold]) - float(torch.cat([logits[:gold], logits[gold + 1 :]]).mean())
    assert pair["metric_neither"] == pytest.approx(unsteered, abs=1e-4)
    assert pair["interaction"] == pytest.approx(
        pair["metric_both"] - pair["metric_earlier_only"] - pair["metric_later_only"] + pair["metric_neither"], abs=1e-4
    )


def test_multi_layer_reports_no_dependence_for_a_policy_that_ignores_its_input(tiny_model):
    from crl_bench.analyses.interactions import multi_layer

    model, _ = tiny_model
    d_model = model.config.hidden_size
    bank = _bank(d_model)
    rollouts = _rollouts(tiny_model, _controller(d_model, later_reads_residual=False), bank, "arith_mc", 3)
    (pair,) = multi_layer(rollouts, [0, 1, 2], (D_SAE, 0))["pairs"]
    assert pair["earlier_steered"] == 3 and pair["later_changed"] == 0 and pair["moves"] == []


def test_generation_ablations_follow_each_steered_token(tiny_model):
    from crl_bench.analyses.interactions import generation

    model, _ = tiny_model
    d_model = model.config.hidden_size
    bank = _one_layer_bank(d_model)
    constant = _input_blind(d_model, {F_EARLY: 1.0})  # steer every token with the same feature
    rollouts = _rollouts(tiny_model, constant, bank, "arith_gen", 2, max_new=5)
    result = generation(rollouts, [0, 1], (D_SAE, 0), max_ablations=3)
    assert result["items_steered"] == 2 and result["ablations"] == 2 * min(3, result["steered_decisions"] // 2)
    # a policy that ignores its input makes the same later choices whatever was removed before
    assert result["later_changed_share"] == 0.0
    assert result["by_feature"][0]["feature"] == 10 + F_EARLY

    silent = _input_blind(d_model, {D_SAE: 10.0}, fill=0.0)
    quiet = generation(_rollouts(tiny_model, silent, bank, "arith_gen", 2, max_new=5), [0, 1], (D_SAE, 0))
    assert quiet["ablations"] == 0 and "nothing to ablate" in quiet["note"]


def test_common_random_numbers_make_sampled_runs_repeatable_and_input_driven(tiny_model):
    from crl_bench.analyses.interactions import generation
    from rl.crl.controller import _inverse_cdf

    assert _inverse_cdf(torch.tensor([[0.2, 0.5, 0.3]] * 3), torch.tensor([0.1, 0.6, 0.95])).tolist() == [0, 1, 2]
    model, _ = tiny_model
    d_model = model.config.hidden_size
    bank = _one_layer_bank(d_model)
    # a stochastic policy that ignores its input: 1/3 each on two features and the no-op
    policy = _input_blind(d_model, {F_EARLY: 0.0, G_LATE: 0.0, D_SAE: 0.0})
    rollouts = _rollouts(tiny_model, policy, bank, "arith_gen", 3, max_new=6)
    first = rollouts.run([0, 1, 2], "sample", keep_residuals=False, common_random=7)[1]
    again = rollouts.run([2, 1, 0, 1], "sample", keep_residuals=False, common_random=7)[1]  # other rows, same draws
    key = lambda rows, records: sorted((rows[r.row], r.position, r.feature) for r in records)  # noqa: E731
    assert key([0, 1, 2], first) == sorted(set(key([2, 1, 0, 1], again)))
    assert key([0, 1, 2], first) != key(
        [0, 1, 2], rollouts.run([0, 1, 2], "sample", keep_residuals=False, common_random=8)[1]
    )
    result = generation(rollouts, [0, 1, 2], (D_SAE, 0), max_ablations=2, mode="sample", seed=7)
    assert result["mode"] == "sample" and result["ablations"] > 0
    assert result["later_changed_share"] == 0.0  # the policy ignores its input: removing a choice changes no later one


def test_bench_adds_the_sampled_analysis_only_where_the_greedy_one_has_nothing():
    from crl_bench.analyses.interactions import steered_nothing

    assert steered_nothing({"setting": "generation", "ablations": 0})
    assert not steered_nothing({"setting": "generation", "ablations": 3})
    assert steered_nothing({"setting": "multi-layer", "pairs": [{"earlier_steered": 0}]})
    assert not steered_nothing({"setting": "multi-layer", "pairs": [{"earlier_steered": 0}, {"earlier_steered": 2}]})
    assert not steered_nothing({"setting": "multi-layer", "skipped": "one controlled layer"})
