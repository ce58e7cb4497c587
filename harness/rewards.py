"""Verifiable rewards built from a task's own lm-eval scoring.

`task_reward(task)` returns a plain callable `(prompts, completions, **doc_fields) ->
list[float]` in TRL's reward-function convention: `doc_fields` are the dataset's columns,
one list per field, so `doc_i = {field: values[i]}` is the lm-eval document of item i.
The same function serves TRL's GRPO and the CRL trainer.

- multiple-choice tasks: 1.0 when the completion is the target choice (compared after
  stripping whitespace; an int completion is taken as the chosen choice index), else 0.0;
- generation tasks: the completion cut at the task's `until` strings (as lm-eval's
  `generate_until` does), the task's filter pipeline, then the task's own `process_results`
  (e.g. gsm8k's strict-match regex and exact_match with its regexes_to_ignore).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

RewardFn = Callable[..., list[float]]


def _docs(n: int, doc_fields: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    for name, values in doc_fields.items():
        if len(values) != n:
            raise ValueError(f"doc field {name!r} has {len(values)} values for {n} completions")
    return [{name: values[i] for name, values in doc_fields.items()} for i in range(n)]


def _as_text(completion: Any) -> Any:
    # TRL passes conversational completions as [{"role": ..., "content": ...}]
    if isinstance(completion, list) and completion and isinstance(completion[0], dict):
        return completion[-1].get("content", "")
    return completion


def task_reward(task: Any, filter_name: str | None = None, metric: str | None = None) -> RewardFn:
    """The reward function of an lm-eval Task object (see `harness.tasks.load_task`)."""
    if task.OUTPUT_TYPE == "multiple_choice":
        reward = _multiple_choice_reward(task)
    elif task.OUTPUT_TYPE == "generate_until":
        reward = _generation_reward(task, filter_name, metric)
    else:
        raise ValueError(
            f"task {task.config.task!r} has output_type {task.OUTPUT_TYPE!r}; rewards exist for "
            "multiple_choice and generate_until tasks"
        )
    reward.__name__ = f"{task.config.task}_reward"
    return reward


def _multiple_choice_reward(task: Any) -> RewardFn:
    def reward(prompts: Sequence[Any], completions: Sequence[Any], **doc_fields: Sequence[Any]) -> list[float]:
        rewards = []
        for doc, completion in zip(_docs(len(completions), doc_fields), completions, strict=True):
            choices = task.doc_to_choice(doc)
            target = task.doc_to_target(doc)
            target_index = target if isinstance(target, int) else choices.index(target)
            completion = _as_text(completion)
            if isinstance(completion, int):
                chosen = completion
            else:
                stripped = [c.strip() for c in choices]
                text = str(completion).strip()
                chosen = stripped.index(text) if text in stripped else None
            rewards.append(1.0 if chosen == target_index else 0.0)
        return rewards

    return reward


def _generation_reward(task: Any, filter_name: str | None, metric: str | None) -> RewardFn:
    ensembles = {ensemble.name: ensemble for ensemble in task._filters}
    name = filter_name or next(iter(ensembles))
    if name not in ensembles:
        raise ValueError(f"task {task.config.task!r} has filters {sorted(ensembles)}; got filter {name!r}")
    ensemble = ensembles[name]
    metric_name = metric or task.config.metric_list[0]["metric"]
    until = [u for u in (task.config.generation_kwargs or {}).get("until", []) if u]

    def truncate(text: str) -> str:
        # what lm-eval's generate_until does to a generation before the filters see it
        for stop in until:
            text = text.split(stop)[0]
        return text

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **doc_fields: Sequence[Any]) -> list[float]:
        docs = _docs(len(completions), doc_fields)
        resps: Any = [[truncate(_as_text(c))] for c in completions]
        for make_filter in ensemble.filters:
            resps = make_filter().apply(resps, docs)
        rewards = []
        for doc, filtered in zip(docs, resps, strict=True):
            # lm-eval passes each instance's filtered response (here one string per doc)
            value = filtered if isinstance(filtered, str) else list(filtered)[0]
            scores = task.process_results(doc, [value])
            rewards.append(float(scores[metric_name]))
        return rewards

    return reward
