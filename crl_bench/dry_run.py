"""`crl-bench bench --dry-run`: what a bench run would do, printed before paying for it.

The stages in order with what is reused and what runs, the model and where it runs (device,
dtype, parameters), the SAE, the RL budget per task, and a memory estimate for the weights and
for one RLVR micro-batch's activations (what a GRPO step's backward pass keeps). Nothing is trained,
evaluated or downloaded beyond the model's config.
"""

from __future__ import annotations

from typing import Any

from crl_bench.bench_config import (
    BenchConfig,
    corrsteer_config,
    crl_configs,
    multi_layer_skipped,
    rlvr_configs,
    vector_config,
)
from crl_bench.ladder import GRPO_RUNGS, SAE_RUNGS, ladder_runs
from rl.config import activation_bytes

GIB = 1024**3


def _parameters(config: Any) -> int:
    """The model's parameter count from its config alone (built on the meta device: no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def describe(config: BenchConfig) -> str:
    """The plan of `config` as text (one line per stage)."""
    import torch

    from baselines.train import sweep_done
    from harness.models import default_device, load_config, model_info, resolve_dtype
    from harness.tasks import load_task, task_manager
    from rl.runs import run_done

    device = config.device or default_device()
    dtype = resolve_dtype(config.dtype, device)
    model_config = load_config(config.model)
    dtype_name = str(dtype).replace("torch.", "") if dtype != "auto" else "the checkpoint's"
    hf_config = load_config(config.model)
    info = model_info(config.model)
    params = _parameters(hf_config)
    width = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    manager = task_manager(names=config.tasks)
    lines = [
        f"crl-bench bench --dry-run: {config.model} ({info.n_layers} layers, d_model {info.d_model}, vocabulary "
        f"{info.vocab_size:,}, {params / 1e6:,.0f}M parameters)",
        f"device {device}, dtype {dtype_name}; profile {config.profile}, budget {config.budget}, seed {config.seed}",
        f"memory estimate: weights {params * width / GIB:.1f} GiB for evaluation; RLVR trains in "
        f"{'fp32 on CPU' if device == 'cpu' else 'bf16'} with LoRA",
        "",
        "stages, in order:",
        f"1. SAE: {config.sae}"
        + (
            ""
            if config.sae == "none"
            else f" (layer {config.sae_layer if config.sae_layer is not None else 'its own'})"
        ),
    ]
    number = 2
    skipped = multi_layer_skipped(config)
    if skipped:
        lines.append(f"   ({skipped})")
    kinds = {task: load_task(task, manager).OUTPUT_TYPE for task in config.tasks}
    for task, kind in kinds.items():
        if config.vectors:
            vectors = vector_config(config, task, kind)
            state = "reused" if sweep_done(vectors) else "runs"
            lines.append(f"{number}. vectors ({', '.join(config.vectors)}) on {task}: sweep {state}")
            number += 1
        if config.corrsteer and config.sae != "none":
            from baselines.corrsteer import done

            state = "reused" if done(corrsteer_config(config, task, kind)) else "runs"
            lines.append(f"{number}. CorrSteer on {task}: {state}")
            number += 1
        for rl in rlvr_configs(config, task) if config.rlvr else []:
            budget = rl.task_budget(load_task(task, manager))
            tokens = budget.max_new_tokens
            micro, _ = rl.micro_batches(budget.prompts_per_step * budget.samples_per_prompt, device)
            kept = activation_bytes(model_config, 512 + tokens, micro, "float32")
            lines.append(
                f"{number}. RLVR on {task} seed {rl.seed}: {budget.steps} steps x {budget.prompts_per_step} prompts x "
                f"{budget.samples_per_prompt} samples ({budget.rollouts:,} rollouts, up to {tokens} new tokens); "
                f"{'reused' if run_done(rl, 'rlvr') else 'trains'}; micro-batches of {micro} completions, about "
                f"{kept / GIB:.1f} GiB of fp32 activations each at 512 prompt tokens"
            )
            number += 1
        for crl in crl_configs(config, task, kind):
            lines.append(
                f"{number}. CRL {crl.setting} on {task} seed {crl.seed}: "
                f"{'reused' if run_done(crl, crl.method) else 'trains'}"
            )
            number += 1
        for method, setting, run in ladder_runs(config, task):  # the ladder's rungs and the controls
            label = method + (" on a random reward" if setting == "random-reward" else "")
            how = "distilled from RLVR's run, its budget" if method == "csft" else "RLVR's GRPO trainer and budget"
            lines.append(
                f"{number}. {label} on {task} seed {run.seed} ({how}): "
                f"{'reused' if run_done(run, method) else 'trains'}"
            )
            number += 1
    methods = ["base", *(f"vector {v}" for v in config.vectors), *(["rlvr"] if config.rlvr else [])]
    methods += [f"crl {s}" for s in config.crl] if config.sae != "none" else []
    methods += [r for r in config.ladder if r not in SAE_RUNGS or config.sae != "none"]
    methods += ["corrsteer"] if config.corrsteer and config.sae != "none" else []
    controlled = ["rlvr"] * config.rlvr + [r for r in config.ladder if r in GRPO_RUNGS]
    methods += [f"{m} (random reward)" for m in controlled] if config.controls else []
    limits = {task: config.limit_for(kind) for task, kind in kinds.items()}
    lines += [
        f"{number}. evaluation through lm-eval on "
        + ", ".join(task + (f" (first {limits[task]} test items)" if limits[task] else "") for task in config.tasks)
        + f": {', '.join(methods)} (finished evaluations with the same settings and inputs are reused)",
        f"{number + 1}. "
        + ("analyses: similarity, SAE-feature overlap, circuits, interactions" if config.analyses else "no analyses"),
        f"{number + 2}. breakdowns, figures, report: {config.results_dir}/",
    ]
    return "\n".join(lines)
