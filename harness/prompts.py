"""Training prompts in the task's own format, as lm-eval would build them.

`task_prompts(task, docs, seed)` returns, for each document, lm-eval's own few-shot context
(`Task.fewshot_context`, with the task's `num_fewshot`, delimiters and description), so
a method trains on exactly the prompt format it is evaluated with. When the few-shot
examples come from the same split as the document (training documents drawn from the
training split), the document itself is never one of its own examples: lm-eval's sampler
is asked to leave it out, as it does for evaluation documents.
"""

from __future__ import annotations

from typing import Any


def task_prompts(task: Any, docs: list[dict], seed: int = 0) -> list[str]:
    task.set_fewshot_seed(seed=seed)
    shots = task.config.num_fewshot or 0
    if shots == 0:
        return [task.fewshot_context(doc, 0) for doc in docs]
    sampler = task.sampler
    original = sampler.sample
    prompts = []
    try:
        for doc in docs:
            sampler.sample = lambda n, eval_doc=None, _doc=doc, **kwargs: original(n, eval_doc=_doc, **kwargs)
            prompts.append(task.fewshot_context(doc, shots))
    finally:
        sampler.sample = original
        del sampler.sample  # back to the class's method
    return prompts


def doc_columns(docs: list[dict]) -> dict[str, list[Any]]:
    """The documents as columns (the reward functions' `**doc_fields`)."""
    return {key: [doc[key] for doc in docs] for key in docs[0]} if docs else {}
