"""CRL's policy update (`rl.crl`): the advantages of a step's decisions under the chosen
baseline, and `ppo_epochs` passes of PPO's clipped surrogate over them (plus the value loss
and the entropy bonus). The update re-reads the residuals the controller saw, so it needs no
LLM forward."""

from __future__ import annotations

import torch

from rl.crl.config import CRLConfig
from rl.crl.controller import Decision


def ppo_update(controller, optimizer, batch: dict[str, torch.Tensor], config: CRLConfig) -> dict[str, float]:
    """`ppo_epochs` full-batch passes of the clipped surrogate (+ value loss when the value head
    is the baseline, + entropy bonus). In the generation setting the bonus is the entropy of
    the choice among features given that the controller intervenes: it keeps the dictionary
    explored without pushing the no-op's share down (most generated tokens should be left
    alone, and an entropy over all actions would drive the policy towards steering every one)."""
    from rl.crl.controller import distributions

    stats = {}
    for _ in range(config.ppo_epochs):
        feature_logits, coef_logits, value = controller(batch["h"], batch["layer_index"])
        features_d, coefs_d = distributions(feature_logits, coef_logits, batch["masked"])
        advantage = batch["advantage"]
        logp = features_d.log_prob(batch["feature"]) + coefs_d.log_prob(batch["coef"])
        surrogate = clipped(torch.exp(logp - batch["logp"]), advantage, config.clip)
        if config.setting == "generation":
            given_steering, _ = distributions(
                feature_logits[:, :-1], coef_logits, None if batch["masked"] is None else batch["masked"][:-1]
            )
            entropy = given_steering.entropy() + coefs_d.entropy()
        else:
            entropy = features_d.entropy() + coefs_d.entropy()
        loss = -surrogate.mean() - config.entropy_coef * entropy.mean()
        if config.resolved_baseline == "value":
            loss = loss + config.value_coef * (value - batch["returns"]).pow(2).mean()
        controller_step(controller, optimizer, loss)
        stats = {"loss": float(loss.detach()), "entropy": float(entropy.detach().mean())}
    return stats


def controller_step(controller, optimizer, loss: torch.Tensor) -> None:
    """One optimiser step of the controller on `loss` (gradient norm clipped at 1); a loss that
    is not finite stops the run instead of corrupting the controller."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"controller loss became {float(loss)}")
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(controller.parameters(), 1.0)
    optimizer.step()


def clipped(ratio: torch.Tensor, advantage: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped surrogate, per decision."""
    return torch.min(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)


def advantages(
    config: CRLConfig,
    rewards: list[float],
    records: list[Decision],
    rows_per_group: int,
    unsteered: list[float] | None = None,
) -> tuple[list[float], list[float]]:
    """Per decision: (advantage, return). value: R - V(h); group: R normalised in its prompt's
    group; unsteered: R - `unsteered[row]` (the row's prompt scored with no intervention) for
    the decisions that intervened, 0 for the no-op ones."""
    if config.resolved_baseline == "unsteered":
        # a no-op decision is what the baseline itself does: only the interventions take the credit
        return [0.0 if r.feature is None else rewards[r.row] - unsteered[r.row] for r in records], [
            rewards[r.row] for r in records
        ]
    if config.resolved_baseline == "group":
        normalised = group_normalised(rewards, rows_per_group).tolist()
        return [normalised[r.row] for r in records], [rewards[r.row] for r in records]
    return [rewards[r.row] - r.value for r in records], [rewards[r.row] for r in records]


def group_normalised(rewards: list[float], group_size: int) -> torch.Tensor:
    """Float[n]: each reward minus its group's mean, over the group's standard deviation
    (GRPO's advantage; consecutive runs of `group_size` rows are one prompt's group)."""
    group = torch.tensor(rewards, dtype=torch.float32).view(-1, group_size)
    return ((group - group.mean(-1, keepdim=True)) / (group.std(-1, unbiased=False, keepdim=True) + 1e-6)).view(-1)
