"""`crl-bench bench`: evaluate every method on every task and write the leaderboard.

Each (model, method, task) evaluation is a stage (`crl_bench.stages`) with its own run
directory holding lm-eval's per-sample log (`samples.jsonl`), its results (`results.json`),
`manifest.json`, and `stage.json`, written last. A stage whose `stage.json` matches the
current settings is reused; `--force` recomputes it. A failing stage stops the run with its
error, and every finished stage stays on disk.

Before the evaluations:

- the SAE stage provisions the SAE (`--sae`; `auto` trains one for a model without a
  published SAE, once, then reuses it) and writes its quality record and feature cards
  (`results/saes/`);
- the vector stage fits the steering directions of `--vectors` on each task and chooses
  their layer and coefficient on the validation split (`baselines.train`, reused when its
  settings are unchanged; an interrupted sweep resumes from its last scored point);
- the CorrSteer stage ranks the SAE's features by their correlation with correctness and
  validates them by intervention (`baselines.corrsteer`; `--no-corrsteer` skips it);
- the RLVR stage trains a LoRA adapter with TRL's GRPO (`--rlvr`, `--budget`; `rl.rlvr`) on
  each task it supports, once per seed of the budget, reusing finished runs and resuming
  killed ones from their last checkpoint;
- the CRL stage trains a controller in each setting of `--crl` on the tasks of its kind
  (one-token and multi-layer: multiple-choice tasks; generation: generation tasks), once
  per seed, with the same budget as RLVR (`rl.crl`);
- the ladder stage trains the rungs of `--ladder` with RLVR's GRPO trainer and budget (the RL
  steering vector and CRL through the LM), and the `--controls` (`crl_bench.ladder`).

Evaluated methods: the base model (`base`), each steering vector (`vector`, setting = the
direction finder), CorrSteer (`corrsteer`, through `vector_steered`), RLVR (`rlvr`, through
`rlvr_lora`), CRL (`crl`, setting = the CRL setting, through `crl_steered`, with every
intervention logged next to the samples), the RL steering vector (`rl-vector`, through
`vector_steered`) and CRL through the LM (`crl-lm`, through `crl_steered`, logged); a
random-reward control has setting `random-reward`. Rows leave out the documents a task
reserves for training when it has no training split of its own (`harness.splits`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crl_bench.bench_config import (
    BenchConfig,
    corrsteer_config,
    crl_configs,
    multi_layer_skipped,
    reserved_documents,
    rlvr_configs,
    vector_config,
)
from crl_bench.ladder import train_rungs
from crl_bench.leaderboard import write
from crl_bench.stages import STAGE, Stage, interventions, plan, read_scores, task_output_types
from harness.manifest import build_manifest, write_json
from harness.task_paths import DATA_ENV, data_dir
from harness.tasks import LOCAL_TASKS


def _evaluate(lm: Any, stage: Stage, config: BenchConfig, manager: Any) -> None:
    from lm_eval import simple_evaluate

    started = time.time()
    try:
        output = simple_evaluate(
            model=lm,
            tasks=[stage.task],
            task_manager=manager,
            limit=stage.settings["limit"],
            log_samples=True,
            random_seed=config.seed,
            numpy_random_seed=config.seed,
            torch_random_seed=config.seed,
            fewshot_random_seed=config.seed,
            bootstrap_iters=0,
        )
    except (FileNotFoundError, ConnectionError, OSError) as err:
        if stage.task in LOCAL_TASKS and data_dir() is None:
            raise RuntimeError(
                f"task {stage.task} could not load its data from the hub ({err}); set {DATA_ENV} to a local "
                f"copy (e.g. {DATA_ENV}=../shared/data) or run with hub access"
            ) from err
        raise
    samples = output.pop("samples")
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    with open(stage.run_dir / "samples.jsonl.tmp", "w") as handle:
        for task_samples in samples.values():
            for sample in task_samples:
                handle.write(json.dumps(sample, default=str) + "\n")
    (stage.run_dir / "samples.jsonl.tmp").replace(stage.run_dir / "samples.jsonl")
    write_json(stage.run_dir / "results.json", output)
    write_json(
        stage.run_dir / "manifest.json", build_manifest(settings=stage.settings, wall_time_s=time.time() - started)
    )
    write_json(stage.run_dir / STAGE, {"fingerprint": stage.fingerprint, "settings": stage.settings})


def _rlvr_stage(config: BenchConfig, console: Any, times: Any) -> None:
    """Train RLVR on every task it supports (reusing finished runs; resuming killed ones)."""
    from transformers import AutoTokenizer

    from crl_bench.training import train_once
    from harness.models import resolve_model
    from harness.tasks import load_task
    from rl import grpo
    from rl.rlvr import trainer as rlvr

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    for task in config.tasks:
        why = grpo.unsupported(load_task(task), tokenizer)
        if why:
            console.print(f"RLVR skips {task}: {why}")
            continue
        for rl_config in rlvr_configs(config, task):
            train_once(config, rl_config, "rlvr", "RLVR", rlvr.train, console, times)


def _crl_stage(config: BenchConfig, console: Any, output_types: dict[str, str], times: Any) -> None:
    """Train CRL in each setting on the tasks of its kind (reusing finished runs; resuming killed ones)."""
    from crl_bench.training import train_once
    from rl.crl import trainer as crl

    if config.sae == "none":
        console.print("CRL skipped: --sae none (CRL steers with SAE features)")
        return
    skipped = multi_layer_skipped(config)
    if skipped:
        console.print(skipped)
    for task in config.tasks:
        for crl_config in crl_configs(config, task, output_types[task]):
            label = f"CRL {crl_config.setting}"
            train_once(config, crl_config, crl_config.method, label, crl.train, console, times)


def _breakdowns(config: BenchConfig, reserved: dict[str, frozenset[int]], console: Any) -> None:
    """`results/<model>/breakdown/<task>.md` for the tasks with a default grouping (`crl_bench.analyses.breakdown`),
    from the leaderboard's runs; a task whose older runs are not on this machine is skipped."""
    from crl_bench.analyses import breakdown

    for task in config.tasks:
        if breakdown.default_grouping(task) is None:
            continue
        try:
            path = breakdown.run(
                task,
                config.results_dir,
                model=config.model,
                exclude=reserved.get(task, frozenset()),
                leaderboard=Path(config.results_dir) / "leaderboard.json",
            )
        except (FileNotFoundError, ValueError) as err:
            console.print(f"[yellow]breakdown of {task} skipped:[/] {err}")
            continue
        console.print(f"breakdown: {path}")


def _auto_sae_layers(config: BenchConfig, output_types: dict[str, str]) -> list[int]:
    """The layers this run needs an `auto` SAE at: the SAE's layer, then the multi-layer CRL
    setting's others (empty when a published SAE serves the SAE's layer)."""
    from harness.models import model_info
    from harness.sae.provision import published_sae
    from rl.crl.trainer import controlled_layers

    if config.sae != "auto":
        return []
    info = model_info(config.model)
    main = info.check_layer(config.sae_layer if config.sae_layer is not None else info.n_layers // 2)
    if published_sae(info, main):
        return []
    layers = [main]
    for task in config.tasks:
        for crl in crl_configs(config, task, output_types[task]):
            layers += [layer for layer in controlled_layers(crl, info.n_layers, main) if layer not in layers]
    return layers


def _sae_stage(config: BenchConfig, console: Any, output_types: dict[str, str]) -> None:
    from harness.models import default_device, model_info
    from harness.sae import load_sae
    from harness.sae.assess import assess
    from harness.sae.quality import SAEEvalConfig

    console.rule(f"SAE: {config.sae}")
    device = config.device or default_device()
    info = model_info(config.model)
    started = time.time()
    layers = _auto_sae_layers(config, output_types)
    if len(layers) > 1:  # the multi-layer CRL setting's SAEs: trained from one forward pass, not one each
        from harness.sae.provision import train_auto_saes

        console.print(f"auto SAEs at layers {', '.join(map(str, layers))}: trained together, one forward pass")
        train_auto_saes(info, layers, corpus=config.sae_corpus)
    loaded = load_sae(config.sae, info, config.sae_layer, device=device, corpus=config.sae_corpus)
    record = assess(
        loaded,
        SAEEvalConfig(
            model=config.model,
            sae=config.sae,
            layer=loaded.layer,
            eval_corpus=None if loaded.source == "trained" else config.sae_corpus,
            sequences=config.sae_sequences,
            ce_sequences=min(64, config.sae_sequences // 8),
            dtype=config.dtype,
            device=device,
            results_dir=config.results_dir,
        ),
    )
    m = record["metrics"]
    console.print(
        f"SAE {loaded.name} (layer {loaded.layer}, {loaded.d_sae} features): L0 {m['l0']:.1f}, "
        f"FVU {m['fvu']:.3f}, CE recovered {m['ce_loss_recovered']:.3f}, dead {m['dead_fraction']:.1%} "
        f"[{time.time() - started:.0f} s]"
    )


def run(config: BenchConfig) -> Path | None:
    from rich.console import Console

    from harness.lmeval_plugin import register_models
    from harness.models import load_config
    from harness.tasks import check_tasks, task_manager

    console = Console(stderr=True, soft_wrap=True)  # status lines stay whole (greppable)
    manager = task_manager(names=config.tasks)
    check_tasks(config.tasks, manager)  # before any model load: a typo costs a second
    load_config(config.model)  # a model that cannot be found fails now, with the fix, not mid-run
    if config.dry_run:
        from crl_bench.dry_run import describe

        print(describe(config))
        return None
    register_models()
    from crl_bench.timings import StageTimes
    from harness.models import default_device

    times = StageTimes(device=config.device or default_device())
    times.after_each = lambda: _write_times(times, config, finished=False)
    output_types = task_output_types(config.tasks, manager)
    if config.sae != "none":
        with times("SAE"):
            _sae_stage(config, console, output_types)
    lm = None

    def shared_lm():
        nonlocal lm
        if lm is None:
            from harness.lm_models import LeanHFLM

            lm = LeanHFLM(pretrained=config.model, **_model_kwargs(config))
        return lm

    if config.vectors:
        from baselines import train

        for task in config.tasks:
            vectors = vector_config(config, task, output_types[task])
            if config.force or not train.sweep_done(vectors):
                console.rule(f"vectors: {', '.join(config.vectors)} on {task}")
                with times("vectors: sweep", task):
                    train.run(vectors, lm=shared_lm())
            else:  # reused: its table and plot still belong in this run's results
                train.publish(vectors)
    if config.corrsteer and config.sae != "none":
        from baselines import corrsteer

        for task in config.tasks:
            chosen = corrsteer_config(config, task, output_types[task])
            if config.force or not corrsteer.done(chosen):
                console.rule(f"CorrSteer on {task}")
                with times("CorrSteer", task):
                    corrsteer.train(chosen, lm=shared_lm())
    if config.rlvr:
        _rlvr_stage(config, console, times)
    if config.crl:
        _crl_stage(config, console, output_types, times)
    if config.ladder:
        train_rungs(config, console, times)
    stages = plan(config, output_types, manager)
    todo = [s for s in stages if config.force or not s.done()]
    for stage in todo:
        why = stage.why_not_reused()
        if why:
            console.print(why)
    console.print(
        f"[bold]crl-bench[/] {config.model}: {len(stages)} evaluation stages, {len(stages) - len(todo)} reused"
    )
    for number, stage in enumerate(todo, 1):
        label = stage.method + (f" {stage.settings['setting']}" if "setting" in stage.settings else "")
        console.rule(f"stage {number}/{len(todo)}: {label} on {stage.task}")
        with stage.lock():
            if not config.force and stage.done():  # a concurrent run with these settings finished it meanwhile
                console.print(f"{stage.run_dir}: finished by another run; reused")
                continue
            with times(f"evaluation: {label}", stage.task):
                _run_stage(stage, config, manager, shared_lm)
    reserved = reserved_documents(config.tasks, manager)
    scores = [s for stage in stages for s in read_scores(stage, config.model, reserved.get(stage.task, frozenset()))]
    path = write(Path(config.results_dir), scores, bench_config=asdict(config))
    console.print(f"leaderboard: {path} (+ leaderboard.md, leaderboard.csv)")
    if config.analyses:
        from crl_bench.analyses import runner as analysis

        console.rule("analyses: similarity to RLVR, SAE-feature overlap, circuits, CRL interactions")
        analysis.run(config, stages, reserved, console, times)
    with times("breakdowns"):
        _breakdowns(config, reserved, console)
    from crl_bench.plots import all_figures
    from crl_bench.report import build

    with times("figures and report"):
        figures = all_figures(config.results_dir)
        console.print(f"figures: {len(figures)} files in {Path(config.results_dir)}/<model>/figures")
        console.print(f"report: {build(config.results_dir)}")
    console.print(f"timings: {_write_times(times, config)}")
    return path


def _write_times(times: Any, config: BenchConfig, finished: bool = True) -> Path:
    """This run's per-stage table, named by profile, budget and (when not the profile's) tasks;
    another command's table of that name is kept (`StageTimes.file_name`)."""
    import sys

    from crl_bench.bench_config import PROFILES
    from harness.manifest import build_manifest
    from harness.models import model_results

    name = f"{config.profile}-{Path(config.budget).stem}"
    if list(config.tasks) != list(PROFILES[config.profile]["tasks"]):
        name += "-" + "+".join(Path(t).name for t in config.tasks)
    command = " ".join(["crl-bench", *sys.argv[1:]]) if sys.argv and "crl-bench" in sys.argv[0] else "crl-bench bench"
    manifest = build_manifest(bench_config=asdict(config), command=command)
    folder = model_results(config.results_dir, config.model) / "bench_timings"
    return times.write(folder, name, command, manifest, finished=finished)


def _model_kwargs(config: BenchConfig) -> dict[str, Any]:
    """What every lm-eval model bench builds shares: batch sizes, device, dtype."""
    return {
        "batch_size": config.batch_size,
        "generation_batch_size": config.generation_batch_size,
        "device": config.device,
        "dtype": config.dtype,
    }


def _run_stage(stage: Stage, config: BenchConfig, manager: Any, shared_lm: Any) -> None:
    """Evaluate one stage with the lm-eval model its method needs."""
    if stage.controller is not None:
        from rl.crl.lm import CRLSteeredLM

        steered = CRLSteeredLM(
            pretrained=config.model,
            controller=str(stage.controller),
            **_model_kwargs(config),
            log_interventions=str(stage.run_dir / "interventions.jsonl"),
        )
        (stage.run_dir / "interventions.jsonl").unlink(missing_ok=True)
        _evaluate(steered, stage, config, manager)
        del steered
        return
    if stage.adapter is not None:
        from harness.lm_models import RLVRLoraLM

        adapted = RLVRLoraLM(
            pretrained=config.model,
            adapter=str(stage.adapter),
            **_model_kwargs(config),
        )
        _evaluate(adapted, stage, config, manager)
        del adapted
        return
    model = shared_lm()
    model.active = interventions(stage)
    try:
        _evaluate(model, stage, config, manager)
    finally:
        model.active = []
