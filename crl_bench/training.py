"""The training stages of a bench run (RLVR, CRL, the ladder's rungs): each run is trained once,
timed on its own row of the run's stage table, and published to results/ whether trained now or
reused."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any


def train_once(config: Any, run_config: Any, method: str, label: str, train: Any, console: Any, times: Any) -> None:
    """Train `run_config` with `train(run_config)` unless a finished run with its settings exists
    (bench's `config.force` retrains; another bench may finish it while this one waits for its
    lock), then publish its curve, manifest and features. `times`: the run's `StageTimes` (None:
    untimed); the row is `training: <label>` on the run's task, `(seed k)` added for seeds but 0."""
    from rl.runs import publish_run, run_done, run_lock, why_retrain

    if config.force or not run_done(run_config, method):
        with run_lock(run_config, method):
            if config.force or not run_done(run_config, method):  # not finished by another run meanwhile
                console.rule(f"{label} on {run_config.task} (seed {run_config.seed})")
                changed = why_retrain(run_config, method)
                if changed:
                    console.print(changed)
                row = f"training: {label}" + (f" (seed {run_config.seed})" if run_config.seed else "")
                with times(row, run_config.task) if times is not None else nullcontext():
                    train(run_config)
    publish_run(run_config, method)  # a reused run's curve too, into this results directory
