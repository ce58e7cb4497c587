"""A task's own metric on fixed documents, scored through an lm-eval model under interventions:
the validation score of vector sweeps and RL learning curves."""

from __future__ import annotations

from typing import Any


class TaskScorer:
    """The task's own metric on fixed documents, scored by an `LeanHFLM` under interventions.

    lm-eval builds the requests (the task's prompt, few-shot examples and choices); multiple-
    choice documents score `acc` through the task's `process_results`, generation documents
    through the task's reward (its filters and exact match, `harness.rewards`).
    """

    def __init__(self, lm: Any, task: Any, docs: list[dict], seed: int = 0):
        from harness.rewards import task_reward

        self.lm, self.task, self.docs = lm, task, docs
        task.set_fewshot_seed(seed=seed)
        shots = task.config.num_fewshot or 0
        name = task.config.task
        self.requests = []
        for i, doc in enumerate(docs):
            made = task.construct_requests(doc=doc, ctx=task.fewshot_context(doc, shots), metadata=(name, i, 1))
            self.requests.append(made if isinstance(made, list) else [made])
        self.reward = task_reward(task) if task.OUTPUT_TYPE == "generate_until" else None
        self.metric = "acc" if self.reward is None else task.config.metric_list[0]["metric"]

    def __call__(self, interventions: list) -> float:
        scores, _ = self.per_item(interventions)
        return sum(scores) / len(scores)

    def per_item(self, interventions: list) -> tuple[list[float], list]:
        """Each document's score, and the model's raw results (generation: each document's text)."""
        flat = [r for requests in self.requests for r in requests]
        self.lm.active = list(interventions)
        try:
            if self.reward is None:
                results = self.lm.loglikelihood(flat, disable_tqdm=True)
            else:
                results = self.lm.generate_until(flat, disable_tqdm=True)
        finally:
            self.lm.active = []
        if self.reward is not None:
            fields = {k: [d[k] for d in self.docs] for k in self.docs[0]}
            scores = self.reward([r.arguments[0] for r in flat], results, **fields)
        else:
            scores, at = [], 0
            for doc, requests in zip(self.docs, self.requests):
                scores.append(float(self.task.process_results(doc, results[at : at + len(requests)])["acc"]))
                at += len(requests)
        return [float(s) for s in scores], results
