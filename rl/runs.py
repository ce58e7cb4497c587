"""Run directories and learning curves of RL-trained methods (RLVR and CRL alike)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from rl.config import RLTrainConfig

CURVE_FIELDS = ("step", "rollouts", "reward", "validation")


def run_dir_for(config: RLTrainConfig, method: str) -> Path:
    from harness.models import model_slug
    from harness.paths import runs_root

    root = Path(config.runs_dir) if config.runs_dir else runs_root()
    return root / model_slug(config.model) / _named(config, method) / config.task / f"seed{config.seed}"


def _named(config: RLTrainConfig, method: str) -> str:
    """The folder name of `method`'s runs (of the random-reward control: beside the real runs)."""
    return f"{method}-random-reward" if getattr(config, "reward", "task") == "random" else method


def run_lock(config: RLTrainConfig, method: str):
    """A file lock on one training run's directory: two processes asked to train the same run
    (two benches on one cache) take turns, and the second finds the first's finished run."""
    from filelock import FileLock

    run_dir = run_dir_for(config, method)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(run_dir.parent / f"{run_dir.name}.lock"))


def why_retrain(config: RLTrainConfig, method: str) -> str | None:
    """When a finished run of other settings sits where this one goes: what changed."""
    from harness.identity import changed

    path = run_dir_for(config, method) / "config.json"
    if not path.exists():
        return None
    before = _recorded(path)
    if before.get("fingerprint") == config.fingerprint():
        return None
    keys = changed(before["identity"], config.identity()) if "identity" in before else []
    return f"{path.parent}: training again, since " + (
        f"these changed: {', '.join(keys)}" if keys else "its settings differ (a run from an older version)"
    )


def run_done(config: RLTrainConfig, method: str) -> bool:
    """Whether a finished run with these settings is on disk."""
    run_dir = run_dir_for(config, method)
    path = run_dir / "config.json"
    return (
        (run_dir / "manifest.json").exists()
        and path.exists()
        and _recorded(path).get("fingerprint") == config.fingerprint()
    )


def _recorded(path: Path) -> dict[str, Any]:
    """A run's training record: its `config.json`, or the `extra` of a steering artifact's
    (the RL vector's run directory is a steering artifact, whose config has fixed keys)."""
    config = json.loads(path.read_text())
    return config if "fingerprint" in config else config.get("extra") or {}


def frozen_fingerprint(model: Any, trained: tuple[str, ...] = ("lora_",)) -> float:
    """A checksum of every parameter that must not train (all but those whose names contain one
    of `trained`): the sum of their absolute values in float64, a million values at a time (a
    whole-tensor float64 copy of the embedded model's 168M-parameter embedding is 1.3 GB, and
    made the end of an RLVR run its peak of memory)."""
    import torch

    total = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(t in name for t in trained):
                continue
            for chunk in p.detach().reshape(-1).split(1 << 20):
                total += float(chunk.double().abs().sum())
    return total


# what a finished run shows in results/ (`publish_run`): its curve, its manifest, its features
RESULT_FILES = ("curve.csv", "curve.png", "manifest.json", "features.md")


def results_folder(config: RLTrainConfig, method: str, budget: dict[str, Any]) -> Path:
    """Where a run's curve, manifest and features go in results/: a folder per budget and seed,
    `results/<model>/<method>/<task>/<steps>x<prompts>x<samples>-seed<k>/` (the random-reward
    control under `<method>-random-reward`), so that neither another seed nor a run of another
    budget replaces them; the budget label is the leaderboard row's."""
    from rl.budget import budget_label

    return config.model_results / _named(config, method) / config.task / f"{budget_label(budget)}-seed{config.seed}"


def publish_run(config: RLTrainConfig, method: str) -> Path | None:
    """Copy a finished run's `RESULT_FILES` into its `results_folder` (also for a run that bench
    reuses: its folder is there whichever results directory asks); returns the folder, or None
    when no finished run is on disk."""
    run_dir = run_dir_for(config, method)
    if not (run_dir / "manifest.json").exists():
        return None
    budget = json.loads((run_dir / "manifest.json").read_text()).get("budget") or {}
    if not budget:
        return None
    folder = results_folder(config, method, budget)
    folder.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, folder / name)
    return folder


def write_curve(
    curve: list[dict], run_dir: Path, title: str, metric: str, fields: tuple[str, ...] = CURVE_FIELDS
) -> None:
    """`curve.csv` and `curve.png` in `run_dir` (`publish_run` copies them to results/)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "curve.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in curve:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    rewards = [(r["step"], r["reward"]) for r in curve if r.get("reward") is not None]
    scores = [(r["step"], r["validation"]) for r in curve if r.get("validation") is not None]
    if rewards:
        ax.plot(*zip(*rewards), color="tab:blue", alpha=0.5, linewidth=1, label="training reward (batch mean)")
    if scores:
        ax.plot(*zip(*scores), color="tab:red", marker="o", markersize=3, label=f"validation {metric}")
    steered = [(r["step"], r["steered_share"]) for r in curve if r.get("steered_share") is not None]
    if steered:  # CRL: how often the sampled controller intervened
        ax.plot(*zip(*steered), color="tab:gray", linestyle="--", linewidth=1, label="share of decisions that steered")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("reward / score / share")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    outcomes = [r for r in curve if r.get("fixed") is not None]
    if outcomes:  # CRL with the unsteered baseline: the rollouts its interventions fixed and broke, so far
        import itertools

        twin = ax.twinx()
        steps = [r["step"] for r in outcomes]
        for name, colour in (("fixed", "tab:green"), ("broken", "tab:orange")):
            twin.step(
                steps,
                list(itertools.accumulate(r[name] for r in outcomes)),
                where="post",
                color=colour,
                linewidth=1.2,
                label=f"rollouts {name} vs unsteered (cumulative)",
            )
        twin.set_ylabel("rollouts (cumulative)")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    divergence = [(r["step"], r["held_out_kl"]) for r in curve if r.get("held_out_kl") is not None]
    if divergence:  # C-SFT: how far the steered model still is from its teacher
        twin = ax.twinx()
        losses = [(r["step"], r["loss"]) for r in curve if r.get("loss") is not None]
        if losses:
            twin.plot(*zip(*losses), color="tab:purple", alpha=0.4, linewidth=1, label="KL to teacher (training batch)")
        twin.plot(*zip(*divergence), color="tab:purple", marker="s", markersize=3, label="KL to teacher (held out)")
        twin.set_ylabel("KL(teacher || steered) per token")
        twin.set_ylim(bottom=0)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "curve.png", dpi=150)
    plt.close(fig)
