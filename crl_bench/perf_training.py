"""`crl-bench perf`'s training comparison (`--train-steps`, 0 to skip): RLVR (LoRA + GRPO) and
CRL, each in a fresh subprocess, with the same budget on the same task, on a one-token task
(CRL setting 1) and a generation task (CRL setting 3): rollouts per second over the
optimisation steps (loading and validation excluded) and peak resident memory, CRL as a
ratio of RLVR; and generation timed at bench's rows per generate call and under the trained
setting-3 controller. Written to results/perf_training.{json,md}."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crl_bench.perf import PerfConfig, _rss_mb
from harness.manifest import build_manifest, write_json
from harness.models import cpu_dtype
from rl.config import CPU_MICRO_BATCH

# The training comparison: the one-token task trains RLVR and CRL setting 1; the generation
# task trains RLVR and CRL setting 3, RLVR with TRL's row-by-row passes (`--no-shared-prefix`:
# the baseline of RLVR's speed) and RLVR row by row with a step in one micro-batch (the default
# before micro-batches and shared prompts: the baseline of RLVR's memory), and RLVR sampling its
# rollouts from the fp32 model it trains (`--rollout-dtype float32`: the baseline of the bf16
# rollout copy, which `auto` uses on a CPU with native bf16; elsewhere the two are the same run).
TRAINED = {
    "one-token": ("rlvr", "crl"),
    "generation": ("rlvr", "rlvr-row-by-row", "rlvr-one-micro-batch", "rlvr-fp32-rollouts", "crl"),
}


def train_worker(variant: str, config: PerfConfig, runs_dir: str) -> dict[str, Any]:
    """Runs inside the subprocess: train one method with the shared budget, measure.
    `variant` is `<setting>:<method>`, a setting and a method of `TRAINED`."""
    setting, method = variant.split(":")
    task = config.training_tasks()[setting]
    common = dict(
        model=config.model,
        task=task,
        budget="smoke",
        steps=config.train_steps,
        prompts_per_step=config.train_prompts_per_step,
        samples_per_prompt=config.train_samples,
        max_new_tokens=config.train_max_new_tokens,
        eval_every=0,
        val_limit=2,
        checkpoint_every=10**6,
        runs_dir=runs_dir,
        results_dir=str(Path(runs_dir) / "results"),
    )
    if method.startswith("rlvr"):
        from rl.rlvr.config import RLVRConfig
        from rl.rlvr.trainer import train

        whole = config.train_prompts_per_step * config.train_samples if method == "rlvr-one-micro-batch" else None
        settings = {
            "micro_batch": whole,
            "shared_prefix": method in ("rlvr", "rlvr-fp32-rollouts"),
            # the shared-prefix and micro-batch baselines sample as their reference, rlvr-fp32-rollouts, does
            "rollout_dtype": "auto" if method == "rlvr" else "float32",
            "runs_dir": str(Path(runs_dir) / method),
        }
        run_dir = train(RLVRConfig(**{**common, **settings}))
    else:
        from rl.crl.config import CRLConfig
        from rl.crl.trainer import train

        run_dir = train(CRLConfig(**common, setting=setting, sae=config.sae, sae_corpus=config.sae_corpus))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    spent, curve = manifest["spent"], manifest["curve"]
    return {
        "task": task,
        "setting": setting,
        "variant": method,
        **spent,
        "run_dir": str(run_dir),
        "rewards": [row.get("reward") for row in curve[1:]],
        "first_step_loss": curve[1].get("loss") if len(curve) > 1 else None,
        "rollout_dtype": manifest.get("rollout_dtype"),
        "rollouts_per_s": spent["rollouts"] / spent["train_s"],
        "peak_rss_mb": _rss_mb(),
    }


def _rounded(values: list) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.3f}" for v in values) + "]"


def _generation_under_controller(config: PerfConfig, controller: str, folder: Path, console: Any) -> dict | None:
    """Time the generation task unsteered at --batch-size rows per generate call (the baseline),
    unsteered at --generation-batch-size rows (same completions), and under the trained setting-3
    controller at --generation-batch-size rows, each in its own process; the controller per
    generated token (steered completions may differ in length)."""
    if config.generation_items <= 0:
        return None
    task = config.train_generation_task
    measured, completions = {}, {}
    runs = {
        "hf_lean_batch": ("hf_lean", config.batch_size),
        "hf_lean": ("hf_lean", config.generation_batch_size),
        "crl_steered": ("crl_steered", config.generation_batch_size),
    }
    from crl_bench.perf import measure

    for name, (variant, rows) in runs.items():
        cmd = [sys.executable, "-m", "crl_bench.perf", variant, json.dumps(asdict(config)), controller]
        spec = json.dumps([task, None, config.generation_items, rows])
        found = measure(folder / f"generation-{name}.json", cmd, console, after=(spec,))
        if found is None:
            console.print(f"perf: generation ({name}) was killed (out of memory); no generation timings")
            return None
        measured[name] = {"rows": rows, **{k: found[k] for k in ("eval_s", "generated_tokens", "peak_rss_mb")}}
        completions[name] = found["loglikelihoods"]
    per_token = {v: m["eval_s"] / max(1, m["generated_tokens"]) for v, m in measured.items()}
    time_ratio_rows = measured["hf_lean"]["eval_s"] / measured["hf_lean_batch"]["eval_s"]
    console.print(
        f"perf: generation at {config.generation_batch_size} rows {time_ratio_rows:.2f}x the time at "
        f"{config.batch_size}; under the controller {per_token['crl_steered'] / per_token['hf_lean']:.2f}x"
    )
    return {
        "task": task,
        "items": config.generation_items,
        **measured,
        "time_ratio_rows": time_ratio_rows,
        "same_completions_across_rows": completions["hf_lean"] == completions["hf_lean_batch"],
        "time_per_token_ratio": per_token["crl_steered"] / per_token["hf_lean"],
    }


def run_training(config: PerfConfig, console: Any) -> Path:
    """Trains every method of `TRAINED` in its own process with the same budget; CRL's
    rollouts per second and peak memory as ratios of RLVR's on the same task."""
    from rich.progress import track

    from crl_bench.perf import measure, measurements_dir

    tasks = config.training_tasks()
    jobs = [(setting, method) for setting in tasks for method in TRAINED[setting]]
    rows, killed = [], []
    folder = measurements_dir(config)  # each measurement kept as it finishes: a rerun resumes
    for setting, method in track(jobs, description="perf training", console=console):
        cmd = [
            sys.executable,
            "-m",
            "crl_bench.perf_training",
            f"{setting}:{method}",
            json.dumps(asdict(config)),
            str(folder / "runs"),
        ]
        found = measure(folder / f"train-{setting}-{method}.json", cmd, console)
        if found is None:
            console.print(
                f"perf: {method} on {tasks[setting]} was killed (out of memory); its comparisons are left out"
            )
            killed.append({"task": tasks[setting], "setting": setting, "variant": method})
        else:
            rows.append(found)
    controller = next((r["run_dir"] for r in rows if (r["setting"], r["variant"]) == ("generation", "crl")), None)
    generation = _generation_under_controller(config, controller, folder, console) if controller else None
    ratios, micro_batches, shared, copies = [], [], [], []
    for setting in tasks:
        measured = {r["variant"]: r for r in rows if r["setting"] == setting}
        if "rlvr" not in measured:  # killed: nothing on this task has its baseline
            continue
        rlvr = measured.pop("rlvr")
        whole = measured.pop("rlvr-one-micro-batch", None)
        rows_apart = measured.pop("rlvr-row-by-row", None)
        fp32 = measured.pop("rlvr-fp32-rollouts", None)
        if fp32 is not None:  # RLVR's rollouts from its bf16 copy (where `auto` makes one) against the fp32 model's
            copies.append(
                {
                    "task": rlvr["task"],
                    "rollout_dtype": rlvr["rollout_dtype"],
                    "rollouts_per_s_over_fp32_rollouts": rlvr["rollouts_per_s"] / fp32["rollouts_per_s"],
                    "peak_rss_over_fp32_rollouts": rlvr["peak_rss_mb"] / fp32["peak_rss_mb"],
                    "rewards": rlvr["rewards"],
                    "rewards_fp32_rollouts": fp32["rewards"],
                }
            )
        reference = fp32 or rlvr  # the same samples as the two baselines below: their losses compare
        if rows_apart is not None:  # RLVR's speed with shared prompts against TRL's row-by-row passes
            shared.append(
                {
                    "task": rlvr["task"],
                    "rollouts_per_s_over_row_by_row": reference["rollouts_per_s"] / rows_apart["rollouts_per_s"],
                    "peak_rss_over_row_by_row": reference["peak_rss_mb"] / rows_apart["peak_rss_mb"],
                    "first_step_loss_difference": abs(reference["first_step_loss"] - rows_apart["first_step_loss"]),
                    "rewards": reference["rewards"],
                    "rewards_row_by_row": rows_apart["rewards"],
                }
            )
        if whole is not None:  # RLVR's memory against its one-micro-batch baseline, and the same training
            micro_batches.append(
                {
                    "task": rlvr["task"],
                    "peak_rss_over_one_micro_batch": reference["peak_rss_mb"] / whole["peak_rss_mb"],
                    "first_step_loss_difference": abs(reference["first_step_loss"] - whole["first_step_loss"]),
                    "rewards": reference["rewards"],
                    "rewards_one_micro_batch": whole["rewards"],
                }
            )
        ratios += [
            {
                "task": crl["task"],
                "setting": setting,
                "variant": method,
                "rollouts_per_s_over_rlvr": crl["rollouts_per_s"] / rlvr["rollouts_per_s"],
                "peak_rss_over_rlvr": crl["peak_rss_mb"] / rlvr["peak_rss_mb"],
            }
            for method, crl in measured.items()
        ]
    results_dir = Path(config.results_dir)
    path = results_dir / "perf_training.json"
    write_json(
        path,
        {
            "manifest": build_manifest(perf_config=asdict(config)),
            "rows": rows,
            "killed": killed,
            "ratios": ratios,
            "rlvr_micro_batches": micro_batches,
            "rlvr_shared_prefix": shared,
            "rlvr_rollout_copy": copies,
            "generation_under_controller": generation,
        },
    )
    title = " and ".join(f"{task} ({setting})" for setting, task in tasks.items())
    lines = [
        f"# Training throughput: CRL vs RLVR, {config.model}, {title}",
        "",
        f"Generated by `crl-bench perf` from perf_training.json. Same budget for every method on a task: "
        f"{config.train_steps} steps x {config.train_prompts_per_step} prompts x {config.train_samples} samples "
        f"(generation: up to {config.train_max_new_tokens} new tokens); rollouts per second over the optimisation "
        "steps only (loading, candidates and validation excluded); each method in its own process. RLVR trains "
        "LoRA with TRL's GRPO (fp32 on CPU: it needs backward passes through the LLM); CRL runs the frozen LLM "
        f"forward only ({cpu_dtype()} on this CPU) and trains the controller on stored residuals; "
        "Setting 3 also decodes each training prompt once "
        "unsteered (its advantage baseline): those decodes count among its rollouts.",
        "",
        "| task | setting | method | rollouts | generated tokens | train s | rollouts / s | trainable parameters | "
        "peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        lines.append(
            f"| {m['task']} | {m['setting']} | {m['variant']} | {m['rollouts']} | {m['generated_tokens']:,} | "
            f"{m['train_s']:.1f} | {m['rollouts_per_s']:.2f} | {m['trainable_parameters']:,} | {m['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    lines += [
        f"- {r['task']}, {r['variant']} / RLVR: **{r['rollouts_per_s_over_rlvr']:.1f}x** the rollouts per second, "
        f"{r['peak_rss_over_rlvr']:.2f}x the peak memory."
        for r in ratios
    ]
    lines += [
        f"- {m['task']}, RLVR with shared prompts (the default; rollouts from the fp32 model) / TRL's row-by-row "
        "passes: "
        f"**{m['rollouts_per_s_over_row_by_row']:.2f}x** the rollouts per second, "
        f"{m['peak_rss_over_row_by_row']:.2f}x the peak memory; first-step loss differs by "
        f"{m['first_step_loss_difference']:.1e}; training reward per step {_rounded(m['rewards'])} vs "
        f"{_rounded(m['rewards_row_by_row'])} (same seed)."
        for m in shared
    ]
    lines += [
        f"- {m['task']}, RLVR in micro-batches of {CPU_MICRO_BATCH} with shared prompts (the CPU default; rollouts "
        "from the fp32 model) / TRL's row-by-row passes in one micro-batch of "
        f"{config.train_prompts_per_step * config.train_samples}: **{m['peak_rss_over_one_micro_batch']:.2f}x** the "
        f"peak memory; first-step loss differs by {m['first_step_loss_difference']:.1e}; training reward per step "
        f"{_rounded(m['rewards'])} vs {_rounded(m['rewards_one_micro_batch'])} (same seed)."
        for m in micro_batches
    ]
    lines += [
        f"- {m['task']}, RLVR sampling its rollouts in {m['rollout_dtype']} (`--rollout-dtype auto`) / from the "
        f"fp32 model it trains: **{m['rollouts_per_s_over_fp32_rollouts']:.2f}x** the rollouts per second, "
        f"{m['peak_rss_over_fp32_rollouts']:.2f}x the peak memory; training reward per step {_rounded(m['rewards'])} "
        f"vs {_rounded(m['rewards_fp32_rollouts'])} (same seed; bf16 samples may differ)."
        for m in copies
    ]
    lines += [
        f"- {k['task']}, {k['variant']}: **killed** by the out-of-memory killer on this machine; the comparisons "
        "against it are left out."
        for k in killed
    ]
    if generation:
        lines.append(
            f"- {generation['task']}, unsteered generation (`hf_lean`), {generation['items']} items, "
            f"{generation['hf_lean']['rows']} rows per generate call / {generation['hf_lean_batch']['rows']} rows: "
            f"**{generation['time_ratio_rows']:.2f}x** the time ({generation['hf_lean']['eval_s']:.1f} s vs "
            f"{generation['hf_lean_batch']['eval_s']:.1f} s), "
            + ("the same completions." if generation["same_completions_across_rows"] else "**different completions**.")
        )
        lines.append(
            f"- {generation['task']}, generation under the trained setting-3 controller (`crl_steered`, a decision at "
            f"every generated token) / unsteered (`hf_lean`), {generation['items']} items: "
            f"**{generation['time_per_token_ratio']:.2f}x** the time per generated token "
            f"({generation['crl_steered']['eval_s']:.1f} s for {generation['crl_steered']['generated_tokens']:,} "
            f"tokens vs {generation['hf_lean']['eval_s']:.1f} s for {generation['hf_lean']['generated_tokens']:,})."
        )
    (results_dir / "perf_training.md").write_text("\n".join(lines) + "\n")
    console.print(f"perf: {path} (+ perf_training.md)")
    return path


if __name__ == "__main__":  # subprocess entry: <setting>:<method>, config json, runs dir, output file
    _variant, _config, _runs, _out = sys.argv[1:5]
    write_json(Path(_out), train_worker(_variant, PerfConfig(**json.loads(_config)), _runs))
