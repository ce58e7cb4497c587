"""The rungs of the ladder that the one GRPO trainer trains beside RLVR (`rl.grpo`, issue 26):
the RL steering vector (`rl-vector`, one dense vector per layer) and CRL through the LM
(`crl-lm`, a few SAE features per token), each with RLVR's budget, prompts, rewards and
sampling (its `--rl-settings` temperature), per seed of the budget.

Bench trains them after RLVR (reusing finished runs, resuming killed ones) and evaluates them
like the other methods: the RL vector through `vector_steered` (its run directory is a steering
artifact), CRL through the LM through `crl_steered` (its run directory names its controller kind).
"""

from __future__ import annotations

from typing import Any

from crl_bench.bench_config import BenchConfig, rl_settings

ARTIFACT = {
    "rlvr": "adapter_model.safetensors",
    "rl-vector": "vectors.safetensors",
    "crl-lm": "controller.safetensors",
}
SAMPLING = ("temperature",)  # RLVR's sampling, shared by every rung the GRPO trainer trains


def config_class(rung: str) -> type:
    if rung == "rl-vector":
        from rl.vector.config import RLVectorConfig

        return RLVectorConfig
    from rl.crl.through_lm.config import CRLThroughLMConfig

    return CRLThroughLMConfig


def rung_configs(config: BenchConfig, task: str, rung: str) -> list[Any]:
    """One run of `rung` per seed of the budget, with RLVR's sampling settings from `--rl-settings`."""
    from rl.budget import Budget

    rlvr = rl_settings(config, task, "rlvr")
    settings = {**{k: rlvr[k] for k in SAMPLING if k in rlvr}, **rl_settings(config, task, rung)}
    if rung == "crl-lm":
        settings = {"sae": config.sae, "sae_corpus": config.sae_corpus, "layer": config.sae_layer, **settings}
    seeds = Budget.resolve(settings.get("budget", config.budget)).seeds
    return [
        config_class(rung)(
            **{"budget": config.budget, **settings},
            model=config.model,
            task=task,
            seed=seed,
            device=config.device,
            results_dir=config.results_dir,
            runs_dir=config.runs_dir,
        )
        for seed in seeds
    ]


def trainer(method: str) -> Any:
    if method == "rlvr":
        from rl.rlvr.trainer import train

        return train
    if method == "rl-vector":
        from rl.vector.trainer import train

        return train
    from rl.crl.through_lm.trainer import train

    return train


def grpo_runs(config: BenchConfig, task: str) -> list[tuple[str, str, Any]]:
    """(method, setting, run config) of every run the GRPO trainer makes for `task` beyond RLVR's
    own: each rung per seed of the budget, and with `--controls random-reward` one run of RLVR and
    of each rung on a random reward (the first seed)."""
    from dataclasses import replace

    from crl_bench.bench_config import rlvr_configs

    runs = []
    for rung in config.ladder:
        if rung == "crl-lm" and config.sae == "none":
            continue
        runs += [(rung, "-", c) for c in rung_configs(config, task, rung)]
    if "random-reward" in config.controls:
        firsts = [("rlvr", rlvr_configs(config, task)[0])] if config.rlvr else []
        for rung in config.ladder:
            mine = [c for method, _, c in runs if method == rung]
            if mine:
                firsts.append((rung, mine[0]))
        runs += [(method, "random-reward", replace(c, reward="random")) for method, c in firsts]
    return runs


def train_rungs(config: BenchConfig, console: Any) -> None:
    """Train the rungs of `--ladder` and the `--controls` on the tasks the GRPO trainer supports."""
    from transformers import AutoTokenizer

    from harness.models import resolve_model
    from harness.tasks import load_task
    from rl import grpo
    from rl.runs import run_done, run_lock, why_retrain

    if "crl-lm" in config.ladder and config.sae == "none":
        console.print("crl-lm skipped: --sae none (it adds SAE features)")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    for task in config.tasks:
        why = grpo.unsupported(load_task(task), tokenizer)
        if why:
            console.print(f"the ladder's GRPO rungs skip {task}: {why}")
            continue
        for method, setting, run_config in grpo_runs(config, task):
            if config.force or not run_done(run_config, method):
                with run_lock(run_config, method):
                    if config.force or not run_done(run_config, method):  # not finished by another run meanwhile
                        label = method + (" on a random reward" if setting == "random-reward" else "")
                        console.rule(f"{label} on {task} (seed {run_config.seed})")
                        changed = why_retrain(run_config, method)
                        if changed:
                            console.print(changed)
                        trainer(method)(run_config)


def rung_runs(config: BenchConfig, task: str) -> list[tuple[str, str, int, Any]]:
    """(method, setting, seed, run directory) of each finished run of `grpo_runs`, for the evaluation stages."""
    from rl.runs import run_dir_for

    found = []
    for method, setting, run_config in grpo_runs(config, task):
        run_dir = run_dir_for(run_config, method)
        if (run_dir / ARTIFACT[method]).exists() and (run_dir / "manifest.json").exists():
            found.append((method, setting, run_config.seed, run_dir))
    return found
