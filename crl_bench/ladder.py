"""The rungs of the ladder trained beside RLVR: those the one GRPO trainer trains (`rl.grpo`,
issue 26), the RL steering vector (`rl-vector`, one dense vector per layer) and CRL through the
LM (`crl-lm`, a few SAE features per token), and C-SFT (`csft`, issue 27: the same feature
controller distilled from RLVR's own run of the seed). Each has RLVR's budget, prompts and
sampling (its `--rl-settings` temperature), per seed of the budget.

Bench trains them after RLVR (reusing finished runs, resuming killed ones) and evaluates them
like the other methods: the RL vector through `vector_steered` (its run directory is a steering
artifact), CRL through the LM and C-SFT through `crl_steered` (their run directories name the
controller kind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crl_bench.bench_config import BenchConfig, rl_settings, seeded_configs

ARTIFACT = {
    "rlvr": "adapter_model.safetensors",
    "rl-vector": "vectors.safetensors",
    "crl-lm": "controller.safetensors",
    "csft": "controller.safetensors",
}
GRPO_RUNGS = ("rl-vector", "crl-lm")  # the rungs the random-reward control also trains (C-SFT has no reward)
SAE_RUNGS = ("crl-lm", "csft")  # the rungs that add SAE features (none without an SAE)
SAMPLING = ("temperature",)  # RLVR's sampling, shared by every rung the GRPO trainer trains


def config_class(rung: str) -> type:
    if rung == "rl-vector":
        from rl.vector.config import RLVectorConfig

        return RLVectorConfig
    if rung == "csft":
        from rl.csft.config import CSFTConfig

        return CSFTConfig
    from rl.crl.through_lm.config import CRLThroughLMConfig

    return CRLThroughLMConfig


def rung_configs(config: BenchConfig, task: str, rung: str) -> list[Any]:
    """One run of `rung` per seed of the budget, with RLVR's sampling settings from `--rl-settings`;
    C-SFT's teacher is RLVR's run of the same seed."""
    from dataclasses import replace

    from crl_bench.bench_config import rlvr_configs
    from rl.runs import run_dir_for

    rlvr = rl_settings(config, task, "rlvr")
    settings = {**{k: rlvr[k] for k in SAMPLING if k in rlvr}, **rl_settings(config, task, rung)}
    if rung in SAE_RUNGS:
        settings = {"sae": config.sae, "sae_corpus": config.sae_corpus, "layer": config.sae_layer, **settings}
    if rung != "csft":
        return seeded_configs(config_class(rung), config, task, settings)
    teachers = {c.seed: str(run_dir_for(c, "rlvr")) for c in rlvr_configs(config, task)}
    runs = seeded_configs(config_class(rung), config, task, {**settings, "teacher": teachers[min(teachers)]})
    return [replace(c, teacher=teachers.get(c.seed, c.teacher)) for c in runs]


def trainer(method: str) -> Any:
    if method == "rlvr":
        from rl.rlvr.trainer import train

        return train
    if method == "rl-vector":
        from rl.vector.trainer import train

        return train
    if method == "csft":
        from rl.csft.trainer import train

        return train
    from rl.crl.through_lm.trainer import train

    return train


def ladder_runs(config: BenchConfig, task: str) -> list[tuple[str, str, Any]]:
    """(method, setting, run config) of every run the ladder makes for `task` beyond RLVR's own:
    each rung per seed of the budget, and with `--controls random-reward` one run of RLVR and of
    each GRPO rung on a random reward (the first seed)."""
    from dataclasses import replace

    from crl_bench.bench_config import rlvr_configs

    runs = []
    for rung in config.ladder:
        if rung in SAE_RUNGS and config.sae == "none":
            continue
        runs += [(rung, "-", c) for c in rung_configs(config, task, rung)]
    if "random-reward" in config.controls:
        firsts = [("rlvr", rlvr_configs(config, task)[0])] if config.rlvr else []
        for rung in [r for r in config.ladder if r in GRPO_RUNGS]:
            mine = [c for method, _, c in runs if method == rung]
            if mine:
                firsts.append((rung, mine[0]))
        runs += [(method, "random-reward", replace(c, reward="random")) for method, c in firsts]
    return runs


def train_rungs(config: BenchConfig, console: Any, times: Any = None) -> None:
    """Train the rungs of `--ladder` and the `--controls` on the tasks the GRPO trainer supports
    (`times`: the bench's stage table, a row per run)."""
    from transformers import AutoTokenizer

    from crl_bench.training import train_once
    from harness.models import resolve_model
    from harness.tasks import load_task
    from rl import grpo

    for rung in [r for r in config.ladder if r in SAE_RUNGS and config.sae == "none"]:
        console.print(f"{rung} skipped: --sae none (it adds SAE features)")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    for task in config.tasks:
        why = grpo.unsupported(load_task(task), tokenizer)
        if why:
            console.print(f"the ladder's GRPO rungs skip {task}: {why}")
            continue
        for method, setting, run_config in ladder_runs(config, task):
            if method == "csft" and not (Path(run_config.teacher) / "adapter_model.safetensors").exists():
                console.print(f"csft on {task} (seed {run_config.seed}) skipped: no RLVR run to distil")
                continue
            label = method + (" on a random reward" if setting == "random-reward" else "")
            train_once(config, run_config, method, label, trainer(method), console, times)


def rung_runs(config: BenchConfig, task: str) -> list[tuple[str, str, int, Any]]:
    """(method, setting, seed, run directory) of each finished run of `ladder_runs`, for the evaluation stages."""
    from rl.runs import run_dir_for

    found = []
    for method, setting, run_config in ladder_runs(config, task):
        run_dir = run_dir_for(run_config, method)
        if (run_dir / ARTIFACT[method]).exists() and (run_dir / "manifest.json").exists():
            found.append((method, setting, run_config.seed, run_dir))
    return found


# the ladder from a fixed vector to LoRA, in order: (method, label); "vector" and "crl" take the
# task's best setting (of the five vectors; of CRL's settings)
LADDER_ORDER = (
    ("base", "base"),
    ("corrsteer", "CorrSteer"),
    ("vector", "vector (best of the sweep's)"),
    ("crl", "CRL (PPO, best setting)"),
    ("crl-lm", "CRL through the LM"),
    ("csft", "C-SFT (distilled from RLVR)"),
    ("rl-vector", "RL steering vector"),
    ("rlvr", "RLVR (LoRA)"),
)


def training_run(row: dict[str, Any]) -> Path | None:
    """The training run behind a leaderboard row (its evaluation is `<run>/eval/<settings>`), or None."""
    run_dir = Path(str(row["run_dir"]).split(";")[0])
    return run_dir.parent.parent if run_dir.parent.name == "eval" else None


def _training(row: dict[str, Any]) -> dict[str, Any]:
    """Budget, trainable parameters and wall time of the run behind a row."""
    import json

    run = training_run(row)
    path = run / "manifest.json" if run is not None else None
    if path is None or not path.exists():
        return {}
    manifest = json.loads(path.read_text())
    spent = manifest.get("spent", {})
    return {
        "trainable_parameters": spent.get("trainable_parameters"),
        "wall_s": spent.get("wall_s", manifest.get("wall_s")),
    }


def ladder(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task of one model's leaderboard rows: the rungs in order (the seeds' row where there is
    one), each with its value, Δ vs base and vs RLVR, budget, trainable parameters and wall time;
    then the random-reward controls."""
    found: dict[str, list[dict[str, Any]]] = {}
    primary = [r for r in rows if (r["metric"], r["filter"]) == _primary(rows, r["task"])]
    for task in sorted({r["task"] for r in primary}):
        mine = [r for r in primary if r["task"] == task]
        pooled = {(r["method"], r["setting"], r.get("budget")) for r in mine if r["seed"] == "all"}
        mine = [r for r in mine if r["seed"] == "all" or (r["method"], r["setting"], r.get("budget")) not in pooled]
        entries = []
        for method, label in LADDER_ORDER:
            candidates = [r for r in mine if r["method"] == method and r["setting"] != "random-reward"]
            if not candidates:
                continue
            best = max(candidates, key=lambda r: (r["value"], str(r.get("budget"))))
            entries.append(_entry(best, label))
        entries += [
            _entry(r, f"{r['method']} on a random reward (control)") for r in mine if r["setting"] == "random-reward"
        ]
        found[task] = entries
    return found


def _primary(rows: list[dict[str, Any]], task: str) -> tuple[str, str]:
    """The (metric, filter) a task's ladder compares: its base row's, else its first row's."""
    mine = [r for r in rows if r["task"] == task]
    first = next((r for r in mine if r["method"] == "base"), mine[0])
    return first["metric"], first["filter"]


def _entry(row: dict[str, Any], label: str) -> dict[str, Any]:
    from crl_bench.leaderboard import control_gained, method_label

    return {
        "rung": label,
        "marks": method_label(row)[len(row["method"]) :].strip(),  # the leaderboard's † ‡ § ¶
        "method": row["method"],
        "setting": row["setting"],
        "seed": row["seed"],
        "value": row["value"],
        "n": row["n"],
        "delta_vs_base": row.get("delta_vs_base"),
        "delta_vs_base_ci95": row.get("delta_vs_base_ci95"),
        "p_vs_base": row.get("p_vs_base"),
        "delta_vs_rlvr": row.get("delta_vs_rlvr"),
        "budget": row.get("budget"),
        "control_gained": control_gained(row),
        **_training(row),
    }


def write_ladder(results_dir: Any) -> list[Any]:
    """`results/<model>/ladder.{json,md}` and `figures/ladder-<task>.{png,pdf}` for each model of
    the leaderboard; returns the markdown files written."""
    import json
    from pathlib import Path

    from harness.manifest import build_manifest, write_json, write_text
    from harness.models import model_results

    results = Path(results_dir)
    rows = json.loads((results / "leaderboard.json").read_text())["rows"]
    written = []
    for model in sorted({r["model"] for r in rows}):
        folder = model_results(results, model)
        tasks = ladder([r for r in rows if r["model"] == model])
        if not tasks:
            continue
        write_json(folder / "ladder.json", build_manifest(kind="ladder", model=model, tasks=tasks))
        write_text(folder / "ladder.md", render_ladder(model, tasks))
        for task, entries in tasks.items():
            _plot_ladder(task, entries, folder / "figures" / f"ladder-{task}")
        written.append(folder / "ladder.md")
    return written


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_ladder(model: str, tasks: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        f"# The ladder on {model}: from a fixed vector to LoRA",
        "",
        "Generated from leaderboard.json by `crl_bench.ladder` (never edit by hand). Per task, each rung's best row "
        "(vectors: the best of the sweep's directions; CRL: its best setting; the seeds' row where there is one), "
        "its gain over base with the 95% interval and Holm-corrected p, its distance to RLVR, the budget it "
        "trained on, its trainable parameters and the wall time of its training run (blank where the run is not "
        "on this machine or its row predates budgets). Marks as on the leaderboard (leaderboard.md): † legacy, "
        "‡ compared with a run on another processor, § another library stack, ¶ a random-reward control still "
        "above base.",
        "",
    ]
    for task, entries in tasks.items():
        lines += [
            f"## {task}",
            "",
            "| rung | value | Δ vs base [95% CI] | p (Holm) | Δ vs RLVR | budget | trainable parameters | training s |",
            "|---|---:|---|---:|---:|---|---:|---:|",
        ]
        for e in entries:
            ci = e["delta_vs_base_ci95"]
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            wall = f"{e['wall_s']:.0f}" if e.get("wall_s") is not None else ""
            p = e["p_vs_base"]
            p_text = "" if p is None else f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"
            lines.append(
                f"| {e['rung']}{' ' + e['marks'] if e['marks'] else ''} | {_fmt(e['value'])} | "
                f"{_fmt(e['delta_vs_base'])}{interval} | {p_text} | "
                f"{_fmt(e['delta_vs_rlvr'])} | "
                f"{e['budget'] or ''} | {_fmt(e.get('trainable_parameters'))} | {wall} |"
            )
        lines.append("")
    return "\n".join(lines)


def _plot_ladder(task: str, entries: list[dict[str, Any]], stem: Any) -> None:
    """Each rung's gain over base with its 95% interval, RLVR's gain as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in entries if e["delta_vs_base"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(shown) + 1.4))
    for y, e in enumerate(shown):
        ci = e["delta_vs_base_ci95"] or (e["delta_vs_base"], e["delta_vs_base"])
        colour = "tab:gray" if "control" in e["rung"] else ("tab:red" if e["method"] == "rlvr" else "tab:blue")
        ax.errorbar(
            e["delta_vs_base"],
            y,
            xerr=[[e["delta_vs_base"] - ci[0]], [ci[1] - e["delta_vs_base"]]],
            fmt="o",
            color=colour,
            capsize=3,
        )
    rlvr = next((e for e in shown if e["method"] == "rlvr" and "control" not in e["rung"]), None)
    if rlvr is not None:
        ax.axvline(rlvr["delta_vs_base"], color="tab:red", linestyle="--", linewidth=1, label="RLVR's gain")
        ax.legend(fontsize=7, loc="lower right")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [e["rung"] for e in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("gain over base (95% interval)")
    ax.set_title(f"The ladder on {task}", fontsize=10)
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix), dpi=150)
    plt.close(fig)
