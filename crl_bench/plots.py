"""Figures generated from the results files (never from live state): accuracy with intervals
per task and method, the similarity-to-RLVR heatmap and the feature-overlap heatmap.

Each figure is written as PNG (for the report) and PDF (vector, for papers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.models import model_results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix in (".png", ".pdf"):
        target = path.with_suffix(suffix)
        # no creation date in the PDF: regenerating an unchanged figure leaves the file unchanged
        fig.savefig(target, dpi=160, bbox_inches="tight", metadata={"CreationDate": None} if suffix == ".pdf" else None)
        out.append(target)
    _pyplot().close(fig)
    return out


def row_label(row: dict[str, Any]) -> str:
    """A leaderboard row's method as the tables name it: `method` or `method:setting`."""
    return row["method"] if row["setting"] in ("-", None) else f"{row['method']}:{row['setting']}"


def accuracy_figure(results_dir: Path, model: str) -> list[Path]:
    """One panel per task of `model`: each method's score with its 95% interval, base as a
    dashed line; in the model's own folder."""
    plt = _pyplot()
    rows = [
        r
        for r in json.loads((results_dir / "leaderboard.json").read_text())["rows"]
        if r["seed"] != "all" and r["model"] == model
    ]
    tasks = sorted({(r["model"], r["task"], r["metric"], r["filter"]) for r in rows})
    if not tasks:
        return []
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, (model, task, metric, filter_name) in zip(axes[0], tasks):
        mine = [
            r for r in rows if (r["model"], r["task"], r["metric"], r["filter"]) == (model, task, metric, filter_name)
        ]
        mine.sort(key=lambda r: (r["method"] != "base", r["method"], str(r["setting"])))
        labels = [row_label(r) for r in mine]
        values = [r["value"] for r in mine]
        errors = [[r["value"] - r["ci95"][0] for r in mine], [r["ci95"][1] - r["value"] for r in mine]]
        colours = [
            "tab:gray"
            if r["method"] == "base"
            else "tab:red"
            if r["method"] == "crl"
            else "tab:blue"
            if r["method"] == "rlvr"
            else "tab:green"
            for r in mine
        ]
        ax.bar(range(len(mine)), values, yerr=errors, color=colours, capsize=3)
        base = next((r["value"] for r in mine if r["method"] == "base"), None)
        if base is not None:
            ax.axhline(base, color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(mine)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task} ({metric})", fontsize=9)
    axes[0][0].set_ylabel("score (95% CI)")
    fig.tight_layout()
    return _save(fig, model_results(results_dir, model) / "figures" / "accuracy")


def similarity_figure(results_dir: Path) -> list[Path]:
    """Heatmap: methods x tasks, coloured by the share of the base-to-RLVR gap closed; the
    answer agreement with RLVR printed in each cell."""
    path = results_dir / "similarity.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["rows"]
    if not rows:
        return []
    plt = _pyplot()
    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    import numpy as np

    grid = np.full((len(methods), len(tasks)), np.nan)
    text = [["" for _ in tasks] for _ in methods]
    for r in rows:
        i, j = methods.index(r["method"]), tasks.index(r["task"])
        grid[i, j] = np.nan if r["gap_closed"] is None else r["gap_closed"]
        text[i][j] = f"{r['answer_agreement']:.2f}"
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 0.9 + 0.45 * len(methods)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=-1, vmax=1, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(tasks)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    fig.colorbar(image, ax=ax, label="gap to RLVR closed (JS)")
    ax.set_title("Similarity to RLVR (cell: answer agreement)", fontsize=9)
    fig.tight_layout()
    return _save(fig, results_dir / "figures" / "similarity")


def overlap_figure(results_dir: Path) -> list[Path]:
    """One heatmap per task: pairwise Jaccard of the methods' top SAE features."""
    path = results_dir / "overlap.json"
    if not path.exists():
        return []
    tasks = {t: e for t, e in json.loads(path.read_text())["tasks"].items() if e["top"]}
    if not tasks:
        return []
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    for ax, (task, entry) in zip(axes[0], sorted(tasks.items())):
        names = sorted(entry["top"])
        grid = np.eye(len(names))
        for pair in entry["pairs"]:
            i, j = names.index(pair["a"]), names.index(pair["b"])
            grid[i, j] = grid[j, i] = pair["jaccard"]
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"{task}: top-{entry['k']} SAE features (Jaccard)", fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white")
    fig.tight_layout()
    return _save(fig, results_dir / "figures" / "overlap")


def all_figures(results_dir: str | Path) -> list[Path]:
    """Every model's figures, each in its own folder (`results/<model>/figures/`)."""
    results_dir = Path(results_dir)
    figures = []
    for model in board_models(results_dir):
        folder = model_results(results_dir, model)
        figures += [*accuracy_figure(results_dir, model), *similarity_figure(folder), *overlap_figure(folder)]
    return figures


def board_models(results_dir: Path) -> list[str]:
    """The models on the leaderboard of `results_dir`."""
    path = Path(results_dir) / "leaderboard.json"
    return sorted({r["model"] for r in json.loads(path.read_text())["rows"]}) if path.exists() else []
