"""A leaderboard row's budget label: what made the row beyond its method and settings (the RL
budget of a trained method, the --limit of a partial evaluation). Part of the row's identity,
so runs of different budgets sit side by side and a smaller one never replaces a larger one."""

from __future__ import annotations

from typing import Any

from rl.budget import budget_label as rl_budget_label

UNRECORDED = "unrecorded"  # the budget of RL rows stored before budgets were part of a row's identity
RL_METHODS = ("rlvr", "crl", "rl-vector", "crl-lm")


def budget_label(budget: dict[str, Any] | None, limit: int | None) -> str:
    """`<steps>x<prompts>x<samples>` of an RL budget, `limit N` of a partial evaluation, both, or "-"."""
    parts = []
    if budget:
        parts.append(rl_budget_label(budget))
    if limit:
        parts.append(f"limit {limit}")
    return ", ".join(parts) or "-"


def default_budget(record: dict[str, Any]) -> str:
    """The budget of a score or row stored before budgets were recorded: RL methods' is
    unknown (so no new run's row replaces it), other methods had none."""
    return UNRECORDED if record["method"] in RL_METHODS else "-"


def budget_of(record: dict[str, Any]) -> str:
    return record.get("budget") or default_budget(record)


def rollouts(label: str) -> int:
    """The rollouts a budget label stands for (0: none recorded)."""
    head = label.split(",")[0]
    try:
        steps, prompts, samples = (int(x) for x in head.split("x"))
    except ValueError:
        return 0
    return steps * prompts * samples


def limit_of(label: str) -> str:
    return next((part.strip() for part in label.split(",") if part.strip().startswith("limit")), "")
