"""Adaptive feature masking for CRL's exploration (`rl.crl`, `--mask-share`); what it and the
entropy bonus do is measured by `crl-bench exploration` (`crl_bench.analyses.exploration`).

A feature chosen in more than `share` of the decisions of the last `window` steps, whose
rollouts earn no more than the recent average (and less than the best), is masked out of
sampling for `steps` steps: the policy cannot collapse onto a feature that does not help and
must keep trying others (Cho et al. 2026 mask adaptively for the same reason). A dominant
feature that does help is left alone; the no-op is never masked.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import torch


class FeatureMask:
    """Adaptive feature masking (see the module docstring); state is JSON-serialisable."""

    def __init__(self, d_sae: int, share: float, steps: int, window: int):
        self.d_sae, self.share, self.steps = d_sae, share, steps
        self.recent: deque[list[int]] = deque(maxlen=max(1, window))
        self.until: dict[int, int] = {}  # feature -> first step it is allowed again

    def tensor(self, step: int) -> torch.Tensor:
        masked = torch.zeros(self.d_sae + 1, dtype=torch.bool)
        for feature, until in self.until.items():
            if step < until:
                masked[feature] = True
        return masked

    def update(self, step: int, chosen: list[int], rewards: list[float]) -> list[int]:
        """Record one step's decisions (feature, reward of its rollout); returns the newly masked."""
        if self.share <= 0:
            return []
        self.recent.append([[f, r] for f, r in zip(chosen, rewards)])
        decisions = [(f, r) for step_decisions in self.recent for f, r in step_decisions]
        average = sum(r for _, r in decisions) / len(decisions)
        counts = Counter(f for f, _ in decisions if f < self.d_sae)
        new = []
        best = max(r for _, r in decisions)
        for feature, count in counts.items():
            own = [r for f, r in decisions if f == feature]
            dominant = count / len(decisions) > self.share
            mean = sum(own) / len(own)
            # a feature that already earns the best reward every time is not stuck: leave it
            unhelpful = mean <= average + 1e-9 and mean < best
            if dominant and unhelpful and self.until.get(feature, -1) <= step:
                self.until[feature] = step + 1 + self.steps
                new.append(feature)
        return new

    def state(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "until": {str(k): v for k, v in self.until.items()}}

    def load(self, state: dict[str, Any]) -> None:
        self.recent.extend(state["recent"])
        self.until = {int(k): v for k, v in state["until"].items()}
