"""The evaluation stages of a bench run (`crl-bench bench`): what each stage evaluates (a method on a
task, with the artifact it reads), where its results live, when a finished one is reused, and
the leaderboard scores read back from its per-item log."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crl_bench.bench_config import (
    RUNGS,
    BenchConfig,
    corrsteer_config,
    crl_configs,
    rlvr_configs,
    vector_config,
)
from crl_bench.budgets import budget_label
from crl_bench.ladder import ARTIFACT, rung_runs
from crl_bench.leaderboard import Scores
from harness.manifest import fingerprint
from harness.models import model_slug
from harness.paths import runs_root

STAGE = "stage.json"


@dataclass
class Stage:
    method: str
    task: str
    settings: dict[str, Any]
    home: Path  # where this method's evaluations of the task live, one folder per settings
    artifact: Path | None = None  # the steering artifact a vector stage evaluates
    adapter: Path | None = None  # the LoRA adapter an rlvr stage evaluates
    controller: Path | None = None  # the CRL run a crl (or crl-lm) stage evaluates

    @property
    def training_run(self) -> Path | None:
        """The RL training run behind the stage, if any (its manifest holds the budget)."""
        return self.adapter or self.controller or (self.artifact if self.method in RUNGS else None)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    @property
    def run_dir(self) -> Path:
        """`<home>/<fingerprint>`: runs with other settings (another seed, limit, dtype, artifact)
        evaluate into folders of their own, so concurrent runs never share one."""
        return self.home / self.fingerprint

    def lock(self):
        """Held while the stage is checked and evaluated: a concurrent run with the same
        settings waits, then reuses the result."""
        from filelock import FileLock

        self.home.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.home / f"{self.fingerprint}.lock"))

    def why_not_reused(self) -> str | None:
        """Why this stage is evaluated although an earlier evaluation of this method on this task
        exists: its own record is unreadable, or the earlier one had other settings (which)."""
        from harness.identity import changed

        mine = self.run_dir / STAGE
        if mine.exists():
            return None if self._record() is not None else f"{mine} is truncated or corrupt: evaluating again"
        earlier = sorted(self.home.glob(f"*/{STAGE}"), key=lambda p: p.stat().st_mtime)
        records = [r for r in (_read_record(p) for p in reversed(earlier)) if r is not None]
        if not records:
            return None
        keys = changed(records[0].get("settings", {}), self.settings)
        return f"{self.method} on {self.task}: evaluating again, since an earlier evaluation " + (
            f"these changed: {', '.join(keys)}" if keys else "the settings changed"
        )

    def _record(self) -> dict[str, Any] | None:
        return _read_record(self.run_dir / STAGE)

    def done(self) -> bool:
        record = self._record()
        return record is not None and record.get("fingerprint") == self.fingerprint


def _read_record(path: Path) -> dict[str, Any] | None:
    """A stage's `stage.json` (None when missing, truncated or corrupt: the stage is then redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def task_output_types(tasks: list[str], manager: Any) -> dict[str, str]:
    from harness.tasks import load_task

    return {task: load_task(task, manager).OUTPUT_TYPE for task in tasks}


def plan(config: BenchConfig, output_types: dict[str, str] | None = None, manager: Any = None) -> list[Stage]:
    """Evaluation stages; a vector or RLVR stage is planned once its artifact exists. A stage's
    settings include what it reads, by content (`harness.identity`): the model's files and the
    task's definition and data, so a change to either re-evaluates instead of reusing."""
    from baselines.train import vectors_dir
    from harness.identity import model_identity, task_identity
    from harness.tasks import task_manager
    from harness.vectors import VECTORS_FILE

    manager = manager or task_manager(names=config.tasks)
    output_types = output_types or task_output_types(config.tasks, manager)
    model_files = model_identity(config.model)

    root = Path(config.runs_dir) if config.runs_dir else runs_root()
    slug = model_slug(config.model)
    stages = []
    for task in config.tasks:
        common = {
            "model": config.model,
            "task": task,
            "limit": config.limit_for(output_types[task]),
            "seed": config.seed,
            "dtype": config.dtype,
            "inputs": {"model": model_files, "task": task_identity(task, manager)},
        }
        stages.append(Stage("base", task, {**common, "method": "base"}, root / slug / "base" / task))
        if config.corrsteer and config.sae != "none":
            from baselines.corrsteer import run_dir_of

            found = run_dir_of(corrsteer_config(config, task, output_types[task]))
            if (found / "selection.json").exists():
                digest = _file_digest(found / VECTORS_FILE, found / "config.json")
                settings = {**common, "method": "corrsteer", "artifact": digest}
                stages.append(Stage("corrsteer", task, settings, found / "eval", artifact=found))
        for method in config.vectors:
            artifact = vectors_dir(vector_config(config, task, output_types.get(task))) / method
            if not (artifact / VECTORS_FILE).exists():
                continue
            settings = {
                **common,
                "method": "vector",
                "setting": method,
                "artifact": _file_digest(artifact / VECTORS_FILE, artifact / "config.json"),
            }
            stages.append(Stage("vector", task, settings, root / slug / "vector" / method / task, artifact))
        if config.rlvr:
            from rl.runs import run_dir_for

            for rl_config in rlvr_configs(config, task):
                adapter = run_dir_for(rl_config, "rlvr")
                if not (adapter / "adapter_model.safetensors").exists():
                    continue
                settings = {
                    **common,
                    "seed": rl_config.seed,
                    "method": "rlvr",
                    "adapter": _file_digest(adapter / "adapter_model.safetensors", adapter / "config.json"),
                }
                stages.append(Stage("rlvr", task, settings, adapter / "eval", adapter=adapter))
        for crl_config in crl_configs(config, task, output_types.get(task, "")):
            from rl.runs import run_dir_for

            controller = run_dir_for(crl_config, crl_config.method)
            if not (controller / "controller.safetensors").exists():
                continue
            settings = {
                **common,
                "seed": crl_config.seed,
                "method": "crl",
                "setting": crl_config.setting,
                "controller": _file_digest(controller / "controller.safetensors", controller / "config.json"),
            }
            stages.append(Stage("crl", task, settings, controller / "eval", controller=controller))
        for method, setting, seed, run_dir in rung_runs(config, task):  # the ladder's rungs and the controls
            settings = {
                **common,
                "seed": seed,
                "method": method,
                **({"setting": setting} if setting != "-" else {}),
                "artifact": _file_digest(run_dir / ARTIFACT[method], run_dir / "config.json"),
            }
            where = {"rlvr": "adapter", "rl-vector": "artifact", "crl-lm": "controller", "csft": "controller"}[method]
            stages.append(Stage(method, task, settings, run_dir / "eval", **{where: run_dir}))
    return stages


def interventions(stage: Stage) -> list:
    if stage.artifact is None:
        return []
    from harness.vectors import SteeringVectors

    return [SteeringVectors.load(stage.artifact).intervention()]


def read_scores(stage: Stage, model: str, exclude: frozenset[int] = frozenset()) -> list[Scores]:
    """Per-item scores from a finished stage's samples.jsonl, one Scores per (filter, metric);
    documents in `exclude` (reserved for training, `harness.splits`) are left out."""
    from harness.tasks import cluster_of

    manifest = stage.run_dir / "manifest.json"
    recorded = json.loads(manifest.read_text()) if manifest.exists() else {}
    where, libraries = recorded.get("processor"), recorded.get("libraries")
    trained = stage.training_run
    rl_budget = json.loads((trained / "manifest.json").read_text()).get("budget") if trained else None
    budget = budget_label(rl_budget, stage.settings.get("limit"))
    grouped: dict[tuple[str, str], tuple[list[int], list[float], list]] = {}
    with open(stage.run_dir / "samples.jsonl") as handle:
        for line in handle:
            sample = json.loads(line)
            if int(sample["doc_id"]) in exclude:
                continue
            for metric in sample["metrics"]:
                ids, values, clusters = grouped.setdefault((sample["filter"], metric), ([], [], []))
                ids.append(int(sample["doc_id"]))
                values.append(float(sample[metric]))
                clusters.append(cluster_of(sample.get("doc")))
    return [
        Scores(
            model=model,
            task=stage.task,
            method=stage.method,
            setting=stage.settings.get("setting", "-"),
            seed=stage.settings["seed"],
            metric=metric,
            filter=filter_name,
            doc_ids=ids,
            values=values,
            run_dir=str(stage.run_dir),
            clusters=None if None in clusters else clusters,
            processor=where,
            libraries=libraries,
            budget=budget,
        )
        for (filter_name, metric), (ids, values, clusters) in sorted(grouped.items())
    ]
