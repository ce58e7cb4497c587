"""CRL's update and exploration, without a model: advantage baselines, the generation
entropy bonus, the gated policy's exploration floor, adaptive feature masking."""

from __future__ import annotations

import pytest
import torch


def test_adaptive_mask_masks_dominant_unhelpful_features_only():
    from rl.crl.controller import distributions
    from rl.crl.trainer import FeatureMask

    mask = FeatureMask(d_sae=8, share=0.5, steps=3, window=2)
    # feature 2 dominates and does no better than average: masked; feature 3 dominates and helps: kept
    assert mask.update(0, [2, 2, 2, 2, 8, 1], [0, 0, 0, 0, 1, 1]) == [2]
    assert mask.tensor(1)[2] and not mask.tensor(1)[8] and not mask.tensor(4)[2]  # released after 3 steps
    helpful = FeatureMask(d_sae=8, share=0.5, steps=3, window=1)
    assert helpful.update(0, [3, 3, 3, 1], [1, 1, 1, 0]) == []
    perfect = FeatureMask(d_sae=8, share=0.5, steps=3, window=1)  # solved: every decision earns the best reward
    assert perfect.update(0, [4, 4, 4, 1], [1, 1, 1, 1]) == []
    off = FeatureMask(d_sae=8, share=0.0, steps=3, window=1)
    assert off.update(0, [2, 2, 2], [0, 0, 0]) == []
    # a masked feature is never sampled; the no-op never is masked
    features_d, _ = distributions(torch.zeros(1, 9), torch.zeros(1, 5), mask.tensor(1))
    assert features_d.probs[0, 2] == 0 and features_d.probs[0, 8] > 0


def test_advantage_baselines():
    from rl.crl.config import CRLConfig
    from rl.crl.controller import Decision
    from rl.crl.ppo import advantages

    def decision(row: int, value: float, feature: int | None) -> Decision:
        return Decision(row, 0, -1, 2, feature, 1.0, feature if feature is not None else 16, 0, 0.0, value, 0)

    records = [
        decision(0, 0.25, 7),
        decision(0, 0.5, 3),
        decision(1, 0.0, 7),
        decision(2, 0.0, 7),
        decision(2, 0.0, None),
    ]
    rewards = [1.0, 0.0, 1.0, 0.0]
    generation = CRLConfig(setting="generation", task="arith_gen")
    assert generation.resolved_baseline == "unsteered"
    # rows 0 and 1 share a prompt the unsteered model gets right, row 2's prompt it gets wrong:
    # row 0's decisions changed nothing (0), row 1's broke the answer (-1), row 2's fixed it (+1),
    # and a no-op decision (the baseline's own action) takes no credit
    found, returns = advantages(generation, rewards, records, 2, unsteered=[1.0, 1.0, 0.0, 0.0])
    assert found == [0.0, 0.0, -1.0, 1.0, 0.0] and returns == [1.0, 1.0, 0.0, 1.0, 1.0]
    value = CRLConfig(task="arith_mc")
    assert value.resolved_baseline == "value"
    assert advantages(value, rewards, records, 2)[0] == [0.75, 0.5, 0.0, 1.0, 1.0]
    group = CRLConfig(task="arith_mc", algorithm="grpo")
    assert group.resolved_baseline == "group"
    normalised = advantages(group, rewards, records, 2)[0]
    assert normalised[0] > 0 > normalised[2] and normalised[0] == pytest.approx(-normalised[2], rel=1e-4)
    with pytest.raises(ValueError, match="critic-free"):
        CRLConfig(task="arith_mc", algorithm="grpo", baseline="value")


def test_generation_entropy_bonus_leaves_the_noop_share_alone():
    """In the generation setting the bonus is the entropy among features (given steering): its
    gradient does not push the no-op's logit down, while the all-action entropy would."""

    from rl.crl.config import CRLConfig
    from rl.crl.controller import Controller
    from rl.crl.ppo import ppo_update

    def noop_logit_change(setting):
        torch.manual_seed(0)
        controller = Controller(d_model=8, d_sae=6, n_layers=1, hidden=16, noop_prior=0.9)
        h = torch.randn(32, 8)
        before = controller(h, torch.zeros(32, dtype=torch.long))[0][:, -1].mean()
        config = CRLConfig(
            task="arith_gen" if setting == "generation" else "arith_mc",
            setting=setting,
            entropy_coef=1.0,
            ppo_epochs=5,
            baseline="group" if setting == "generation" else "value",
            value_coef=0.0,
        )
        optimizer = torch.optim.SGD(controller.parameters(), lr=0.5)
        batch = {
            "h": h,
            "layer_index": torch.zeros(32, dtype=torch.long),
            "feature": torch.full((32,), 6),
            "coef": torch.zeros(32, dtype=torch.long),
            "logp": torch.zeros(32),
            "advantage": torch.zeros(32),
            "returns": torch.zeros(32),
            "masked": torch.zeros(7, dtype=torch.bool),
        }
        ppo_update(controller, optimizer, batch, config)
        return float(controller(h, torch.zeros(32, dtype=torch.long))[0][:, -1].mean() - before)

    assert noop_logit_change("one-token") < -0.1
    # only through the shared trunk (the feature rows of the head move it slightly)
    assert abs(noop_logit_change("generation")) < 0.01
