"""Which documents of a task each method may learn from, and which it is scored on.

Every trained method (steering vectors, RLVR, CRL) fits on `train`, chooses its settings on
`validation`, and is scored by lm-eval on `test`, which is the split lm-eval evaluates (the
task's test split, or its validation split when it has no test split).

- A task with train, validation and test splits uses them as they are.
- A task with a training split but no separate validation split gives 15% of its training
  documents (chosen by a hash of their index, so always the same ones) to `validation`.
- A task whose only split is the one lm-eval evaluates (the local `boolq`: BoolQ's train
  split is not available offline) **reserves** 20% of it, by the same hash, for training
  (three quarters) and validation (one quarter). The reserved documents are left out of
  every leaderboard row of that task, for every method including the base model, so no
  method is scored on what it learned from (`reserved_ids`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

VALIDATION_SHARE = 0.15
RESERVED_SHARE = 0.20


@dataclass
class MethodSplits:
    task: str
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    test_split: str  # the split lm-eval evaluates
    reserved_ids: frozenset[int] = field(default_factory=frozenset)  # doc ids of `test_split` never scored
    note: str = ""

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _unit(index: int, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) for document `index`."""
    digest = hashlib.sha256(f"{salt}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def method_splits(task: Any) -> MethodSplits:
    """The train / validation / test documents of an lm-eval Task object."""
    name = task.config.task
    if task.has_test_docs():
        test_split, evaluated = task.config.test_split, list(task.test_docs())
    elif task.has_validation_docs():
        test_split, evaluated = task.config.validation_split, list(task.validation_docs())
    else:
        raise ValueError(f"task {name!r} has neither a test nor a validation split to evaluate on")

    if task.has_training_docs():
        train = list(task.training_docs())
        if task.has_test_docs() and task.has_validation_docs():
            return MethodSplits(name, train, list(task.validation_docs()), evaluated, test_split)
        held = [i for i in range(len(train)) if _unit(i, name + ":validation") < VALIDATION_SHARE]
        held_set = set(held)
        return MethodSplits(
            name,
            [d for i, d in enumerate(train) if i not in held_set],
            [train[i] for i in held],
            evaluated,
            test_split,
            note=f"validation = {len(held)} training documents ({VALIDATION_SHARE:.0%}, by index hash)",
        )

    reserved = [i for i in range(len(evaluated)) if _unit(i, name + ":reserved") < RESERVED_SHARE]
    cut = (3 * len(reserved)) // 4
    kept = [i for i in range(len(evaluated)) if i not in set(reserved)]
    return MethodSplits(
        name,
        [evaluated[i] for i in reserved[:cut]],
        [evaluated[i] for i in reserved[cut:]],
        [evaluated[i] for i in kept],
        test_split,
        reserved_ids=frozenset(reserved),
        note=(
            f"{name} has no training split: {len(reserved)} of its {len(evaluated)} {test_split} documents "
            f"({RESERVED_SHARE:.0%}, by index hash) are reserved for training and validation and left out "
            "of every leaderboard row"
        ),
    )
