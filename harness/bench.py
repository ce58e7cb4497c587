"""`crl-bench bench`: evaluate every method on every task and write the leaderboard.

Each (model, method, task) evaluation is a stage with its own run directory
`<runs>/<model>/<method>/<task>/` holding lm-eval's per-sample log (`samples.jsonl`),
its results (`results.json`), `manifest.json`, and `stage.json`, written last. A stage
whose `stage.json` matches the current settings is reused; `--force` recomputes it.
A failing stage stops the run with its error, and every finished stage stays on disk.

Before the evaluations:

- the SAE stage provisions the SAE (`--sae`; `auto` trains one for a model without a
  published SAE, once, then reuses it) and writes its quality record and feature cards
  (`results/saes/`);
- the vector stage fits the steering directions of `--vectors` on each task and chooses
  their layer and coefficient on the validation split (`baselines.train`, reused when its
  settings are unchanged; an interrupted sweep resumes from its last scored point).

- the RLVR stage trains a LoRA adapter with TRL's GRPO (`--rlvr`, `--budget`; `rl.rlvr`) on
  each task it supports, once per seed of the budget, reusing finished runs and resuming
  killed ones from their last checkpoint.

- the CRL stage trains a controller in each setting of `--crl` on the tasks of its kind
  (one-token and multi-layer: multiple-choice tasks; generation: generation tasks), once
  per seed, with the same budget as RLVR (`rl.crl`).

Evaluated methods: the base model (`base`), each steering vector (`vector`, setting = the
direction finder), RLVR (`rlvr`, through `rlvr_lora`) and CRL (`crl`, setting = the CRL
setting, through `crl_steered`, with every intervention logged next to the samples). Rows leave out the documents a task reserves for training when it
has no training split of its own (`harness.splits`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.leaderboard import Scores, write
from harness.manifest import build_manifest, fingerprint, write_json
from harness.models import DEFAULT_MODEL, model_slug
from harness.paths import runs_root
from harness.tasks import DATA_ENV, LOCAL_TASKS, data_dir

DEFAULT_TASKS = ("toy_sentiment", "arith_mc", "arith_gen", "arc_easy", "boolq")
STAGE = "stage.json"

# What a bench run does when its flags leave it open. `laptop` (the embedded model on a CPU:
# `make bench` within 45 minutes on 2 cores) covers all three CRL settings with one
# one-token task and one generation task, the `laptop` budget, and a smaller vector sweep on
# generation tasks (each point generates for every validation document); `full` is the
# whole default task set and the `cpu` budget (`gpu` on a GPU).
PROFILES: dict[str, dict[str, Any]] = {
    "laptop": {"tasks": ["toy_sentiment", "arith_gen"], "budget": "laptop",
               "generation_sweep": {"val_limit": 32, "coefs": [0.5, 1.0, 2.0], "layer_fractions": (1 / 3, 1 / 2)}},
    "full": {"tasks": list(DEFAULT_TASKS), "budget": {"cpu": "cpu", "cuda": "gpu"}, "generation_sweep": {}},
}


@dataclass
class BenchConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local directory, or gemma-3-270m (embedded)"})
    profile: str = field(default="auto", metadata={"help": "defaults for what the flags leave open: laptop (tasks toy_sentiment,arith_gen, "
                                                          "laptop budget, small generation sweeps), full (every default task), or auto "
                                                          "(laptop for the embedded model on a CPU, else full)"})
    tasks: list[str] | None = field(default=None, metadata={"help": "lm-eval task names (default: the profile's)"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N items of each task"})
    batch_size: int = field(default=16, metadata={"help": "evaluation batch size"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)"})
    dtype: str = field(default="auto", metadata={"help": "model dtype; auto = bf16 on a CPU with native bf16 (AVX512-BF16, AMX), else fp32"})
    seed: int = field(default=0, metadata={"help": "seed for lm-eval's sampling and few-shot selection"})
    sae: str = field(default="auto", metadata={"help": "SAE for the SAE-based methods: sae-lens <release>/<id>, a directory, auto (published, else trained and cached), or none"})
    sae_layer: int | None = field(default=None, metadata={"help": "layer of the SAE (default: the SAE's own; the middle layer for auto)"})
    sae_corpus: str = field(default="builtin", metadata={"help": "text to train an auto SAE on and to measure SAEs with (see `crl-bench sae train --help`)"})
    vectors: list[str] = field(default_factory=lambda: ["mean_diff", "kmeans", "probe", "pca", "das"],
                               metadata={"help": "steering-vector methods to train and evaluate (none: skip)"})
    vector_val_limit: int | None = field(default=64, metadata={"help": "validation documents per point of the vector sweep"})
    rlvr: bool = field(default=True, metadata={"help": "train and evaluate the RLVR reference (LoRA + GRPO) on each task it supports"})
    budget: str = field(default="auto", metadata={"help": "RL training budget shared by RLVR and CRL: preset (smoke, laptop, cpu, gpu), "
                                                        "YAML file, or auto (the profile's: laptop, else cpu, gpu on a GPU)"})
    rl_settings: str | None = field(default=None, metadata={"help": "YAML file of RLVR/CRL training settings per task, "
                                                               "e.g. {arith_gen: {steps: 100, rlvr: {temperature: 0.5}}}: "
                                                               "budget fields apply to both methods (their runs stay "
                                                               "matched); rlvr:/crl: hold one method's own"})
    crl: list[str] = field(default_factory=lambda: ["one-token", "multi-layer", "generation"],
                           metadata={"help": "CRL settings to train and evaluate (none: skip); each runs on the tasks of its kind"})
    analyses: bool = field(default=True, metadata={"help": "after the evaluations: similarity to RLVR, SAE-feature overlap, circuits and CRL interactions (results/{similarity,overlap,circuits,interactions}.md)"})
    force: bool = field(default=False, metadata={"help": "recompute stages that are already done"})
    results_dir: str = field(default="results", metadata={"help": "where leaderboard tables go"})
    runs_dir: str | None = field(default=None, metadata={"help": "run directories (default: $CRL_BENCH_RUNS or <cache>/runs)"})

    def __post_init__(self) -> None:
        from harness.models import default_device

        device = "cuda" if str(self.device or default_device()).startswith("cuda") else "cpu"
        if self.profile == "auto":
            self.profile = "laptop" if self.model == DEFAULT_MODEL and device == "cpu" else "full"
        if self.profile not in PROFILES:
            raise ValueError(f"unknown --profile {self.profile!r}; choose from {', '.join(PROFILES)}, or auto")
        defaults = PROFILES[self.profile]
        if self.tasks is None:
            self.tasks = list(defaults["tasks"])
        if self.budget == "auto":
            budget = defaults["budget"]
            self.budget = budget[device] if isinstance(budget, dict) else budget
        if isinstance(self.tasks, str):
            self.tasks = [t for t in self.tasks.split(",") if t]
        if not self.tasks:
            raise ValueError("no tasks given; pass --tasks toy_sentiment,arith_mc (comma-separated)")
        if isinstance(self.vectors, str):
            self.vectors = [v for v in self.vectors.split(",") if v]
        if self.vectors in (["none"], []):
            self.vectors = []
        if isinstance(self.crl, str):
            self.crl = [c for c in self.crl.split(",") if c]
        if self.crl in (["none"], []):
            self.crl = []
        from rl.crl import SETTINGS

        wrong = [c for c in self.crl if c not in SETTINGS]
        if wrong:
            raise ValueError(f"unknown --crl settings {', '.join(wrong)}; choose from {', '.join(SETTINGS)}, or none")
        from baselines.fitters import METHODS

        unknown = [v for v in self.vectors if v not in METHODS]
        if unknown:
            raise ValueError(f"unknown --vectors {', '.join(unknown)}; choose from {', '.join(METHODS)}, or none")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be a positive number of items, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.rl_settings is not None:
            from rl.settings import read_rl_settings

            read_rl_settings(self.rl_settings)  # a bad file fails here, before anything runs


@dataclass
class Stage:
    method: str
    task: str
    settings: dict[str, Any]
    run_dir: Path
    artifact: Path | None = None  # the steering artifact a vector stage evaluates
    adapter: Path | None = None  # the LoRA adapter an rlvr stage evaluates
    controller: Path | None = None  # the CRL run a crl stage evaluates

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def done(self) -> bool:
        marker = self.run_dir / STAGE
        return marker.exists() and json.loads(marker.read_text()).get("fingerprint") == self.fingerprint


def _file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def vector_config(config: BenchConfig, task: str, output_type: str | None = None) -> Any:
    """The vector sweep of `task`; a generation task (`output_type` generate_until) gets the
    profile's smaller sweep."""
    from baselines.train import VectorTrainConfig

    sweep = PROFILES[config.profile]["generation_sweep"] if output_type == "generate_until" else {}
    layers = None
    if "layer_fractions" in sweep:
        from baselines.train import default_layers
        from harness.models import model_info

        layers = default_layers(model_info(config.model).n_layers, sweep["layer_fractions"])
    extra = {"coefs": list(sweep["coefs"])} if "coefs" in sweep else {}
    val_limit = config.vector_val_limit
    if "val_limit" in sweep and val_limit is not None:
        val_limit = min(val_limit, sweep["val_limit"])
    return VectorTrainConfig(model=config.model, task=task, methods=list(config.vectors), val_limit=val_limit, layers=layers,
                             batch_size=config.batch_size, seed=config.seed, dtype=config.dtype, device=config.device,
                             results_dir=config.results_dir, runs_dir=config.runs_dir, **extra)


def rlvr_configs(config: BenchConfig, task: str) -> list[Any]:
    """One RLVR run per seed of the budget."""
    from rl.budget import Budget
    from rl.rlvr import RLVRConfig

    settings = rl_settings(config, task, "rlvr")
    seeds = Budget.resolve(settings.get("budget", config.budget)).seeds
    return [RLVRConfig(**{"budget": config.budget, **settings}, model=config.model, task=task, seed=seed,
                       device=config.device, results_dir=config.results_dir, runs_dir=config.runs_dir)
            for seed in seeds]


def rl_settings(config: BenchConfig, task: str, method: str) -> dict[str, Any]:
    """The `--rl-settings` of one task's runs of one method (none: {})."""
    from rl.settings import read_rl_settings

    return read_rl_settings(config.rl_settings).get(task, {}).get(method, {}) if config.rl_settings else {}


def crl_configs(config: BenchConfig, task: str, output_type: str) -> list[Any]:
    """One CRL run per (setting that fits the task's kind, seed of the budget)."""
    from rl.budget import Budget
    from rl.crl import CRLConfig

    if config.sae == "none":
        return []
    fits = [s for s in config.crl if (s == "generation") == (output_type == "generate_until")]
    settings = rl_settings(config, task, "crl")
    seeds = Budget.resolve(settings.get("budget", config.budget)).seeds
    layers = [config.sae_layer] if config.sae_layer is not None else None
    return [CRLConfig(**{"sae": config.sae, "sae_corpus": config.sae_corpus, "budget": config.budget,
                         "layers": layers if setting != "multi-layer" else None, **settings},
                      model=config.model, task=task, setting=setting, seed=seed, device=config.device,
                      results_dir=config.results_dir, runs_dir=config.runs_dir)
            for setting in fits for seed in seeds]


def _output_types(tasks: list[str], manager: Any) -> dict[str, str]:
    from harness.tasks import load_task

    return {task: load_task(task, manager).OUTPUT_TYPE for task in tasks}


def plan(config: BenchConfig, output_types: dict[str, str] | None = None) -> list[Stage]:
    """Evaluation stages; a vector or RLVR stage is planned once its artifact exists."""
    from baselines.train import vectors_dir
    from harness.vectors import VECTORS_FILE

    root = Path(config.runs_dir) if config.runs_dir else runs_root()
    slug = model_slug(config.model)
    stages = []
    for task in config.tasks:
        common = {"model": config.model, "task": task, "limit": config.limit, "seed": config.seed, "dtype": config.dtype}
        stages.append(Stage("base", task, {**common, "method": "base"}, root / slug / "base" / task))
        for method in config.vectors:
            artifact = vectors_dir(vector_config(config, task, (output_types or {}).get(task))) / method
            if not (artifact / VECTORS_FILE).exists():
                continue
            settings = {**common, "method": "vector", "setting": method,
                        "artifact": _file_digest(artifact / VECTORS_FILE, artifact / "config.json")}
            stages.append(Stage("vector", task, settings, root / slug / "vector" / method / task, artifact))
        if config.rlvr:
            from rl.rlvr import run_dir_for

            for rl_config in rlvr_configs(config, task):
                adapter = run_dir_for(rl_config, "rlvr")
                if not (adapter / "adapter_model.safetensors").exists():
                    continue
                settings = {**common, "seed": rl_config.seed, "method": "rlvr",
                            "adapter": _file_digest(adapter / "adapter_model.safetensors", adapter / "config.json")}
                stages.append(Stage("rlvr", task, settings, adapter / "eval", adapter=adapter))
        for crl_config in crl_configs(config, task, (output_types or {}).get(task, "")):
            from rl.rlvr import run_dir_for

            controller = run_dir_for(crl_config, crl_config.method)
            if not (controller / "controller.safetensors").exists():
                continue
            settings = {**common, "seed": crl_config.seed, "method": "crl", "setting": crl_config.setting,
                        "controller": _file_digest(controller / "controller.safetensors", controller / "config.json")}
            stages.append(Stage("crl", task, settings, controller / "eval", controller=controller))
    return stages


def interventions(stage: Stage) -> list:
    if stage.artifact is None:
        return []
    from harness.vectors import SteeringVectors

    return [SteeringVectors.load(stage.artifact).intervention()]


def _evaluate(lm: Any, stage: Stage, config: BenchConfig, manager: Any) -> None:
    from lm_eval import simple_evaluate

    started = time.time()
    try:
        output = simple_evaluate(
            model=lm, tasks=[stage.task], task_manager=manager, limit=config.limit, log_samples=True,
            random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed,
            fewshot_random_seed=config.seed, bootstrap_iters=0,
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
    write_json(stage.run_dir / "manifest.json", build_manifest(settings=stage.settings, wall_time_s=time.time() - started))
    write_json(stage.run_dir / STAGE, {"fingerprint": stage.fingerprint, "settings": stage.settings})


def read_scores(stage: Stage, model: str, exclude: frozenset[int] = frozenset()) -> list[Scores]:
    """Per-item scores from a finished stage's samples.jsonl, one Scores per (filter, metric);
    documents in `exclude` (reserved for training, `harness.splits`) are left out."""
    from harness.tasks import cluster_of

    manifest = stage.run_dir / "manifest.json"
    where = json.loads(manifest.read_text()).get("processor") if manifest.exists() else None
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
        Scores(model=model, task=stage.task, method=stage.method, setting=stage.settings.get("setting", "-"),
               seed=stage.settings["seed"], metric=metric, filter=filter_name, doc_ids=ids, values=values,
               run_dir=str(stage.run_dir), clusters=None if None in clusters else clusters, processor=where)
        for (filter_name, metric), (ids, values, clusters) in sorted(grouped.items())
    ]


def _rlvr_stage(config: BenchConfig, console: Any) -> None:
    """Train RLVR on every task it supports (reusing finished runs; resuming killed ones)."""
    from transformers import AutoTokenizer

    from harness.models import resolve_model
    from harness.tasks import load_task
    from rl import rlvr

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    for task in config.tasks:
        why = rlvr.unsupported(load_task(task), tokenizer)
        if why:
            console.print(f"RLVR skips {task}: {why}")
            continue
        for rl_config in rlvr_configs(config, task):
            if config.force or not rlvr.run_done(rl_config, "rlvr"):
                console.rule(f"RLVR on {task} (seed {rl_config.seed})")
                rlvr.train(rl_config)


def _crl_stage(config: BenchConfig, console: Any, output_types: dict[str, str]) -> None:
    """Train CRL in each setting on the tasks of its kind (reusing finished runs; resuming killed ones)."""
    from rl import crl
    from rl.rlvr import run_done

    if config.sae == "none":
        console.print("CRL skipped: --sae none (CRL steers with SAE features)")
        return
    for task in config.tasks:
        for crl_config in crl_configs(config, task, output_types[task]):
            if config.force or not run_done(crl_config, crl_config.method):
                console.rule(f"CRL {crl_config.setting} on {task} (seed {crl_config.seed})")
                crl.train(crl_config)


def _breakdowns(config: BenchConfig, reserved: dict[str, frozenset[int]], console: Any) -> None:
    """`results/breakdown/<task>.md` for the tasks with a default grouping (`harness.breakdown`),
    from the leaderboard's runs; a task whose older runs are not on this machine is skipped."""
    from harness import breakdown

    for task in config.tasks:
        if breakdown.default_grouping(task) is None:
            continue
        try:
            path = breakdown.run(task, config.results_dir, model=config.model, exclude=reserved.get(task, frozenset()),
                                 leaderboard=Path(config.results_dir) / "leaderboard.json")
        except (FileNotFoundError, ValueError) as err:
            console.print(f"[yellow]breakdown of {task} skipped:[/] {err}")
            continue
        console.print(f"breakdown: {path}")


def reserved_documents(tasks: list[str], manager: Any = None) -> dict[str, frozenset[int]]:
    """Per task, the evaluated documents reserved for training (`harness.splits`)."""
    from harness.splits import method_splits
    from harness.tasks import load_task, task_manager

    manager = manager or task_manager(names=tasks)
    return {task: method_splits(load_task(task, manager)).reserved_ids for task in tasks}


def _sae_stage(config: BenchConfig, console: Any) -> None:
    from harness.models import default_device, model_info
    from harness.sae import load_sae
    from harness.sae.assess import assess
    from harness.sae.quality import SAEEvalConfig

    console.rule(f"SAE: {config.sae}")
    device = config.device or default_device()
    info = model_info(config.model)
    started = time.time()
    loaded = load_sae(config.sae, info, config.sae_layer, device=device, corpus=config.sae_corpus)
    record = assess(loaded, SAEEvalConfig(
        model=config.model, sae=config.sae, layer=loaded.layer, eval_corpus=None if loaded.source == "trained" else config.sae_corpus,
        dtype=config.dtype, device=device, results_dir=config.results_dir))
    m = record["metrics"]
    console.print(f"SAE {loaded.name} (layer {loaded.layer}, {loaded.d_sae} features): L0 {m['l0']:.1f}, "
                  f"FVU {m['fvu']:.3f}, CE recovered {m['ce_loss_recovered']:.3f}, dead {m['dead_fraction']:.1%} "
                  f"[{time.time() - started:.0f} s]")


def run(config: BenchConfig) -> Path:
    from rich.console import Console

    from harness.lmeval_plugin import register_models
    from harness.tasks import check_tasks, task_manager

    console = Console(stderr=True, soft_wrap=True)  # status lines stay whole (greppable)
    manager = task_manager(names=config.tasks)
    check_tasks(config.tasks, manager)  # before any model load: a typo costs a second
    register_models()
    if config.sae != "none":
        _sae_stage(config, console)
    lm = None

    def shared_lm():
        nonlocal lm
        if lm is None:
            from harness.lm_models import LeanHFLM

            lm = LeanHFLM(pretrained=config.model, batch_size=config.batch_size, device=config.device, dtype=config.dtype)
        return lm

    output_types = _output_types(config.tasks, manager)
    if config.vectors:
        from baselines import train

        for task in config.tasks:
            vectors = vector_config(config, task, output_types[task])
            if config.force or not train.sweep_done(vectors):
                console.rule(f"vectors: {', '.join(config.vectors)} on {task}")
                train.run(vectors, lm=shared_lm())
            else:  # reused: its table and plot still belong in this run's results
                train.publish(vectors)
    if config.rlvr:
        _rlvr_stage(config, console)
    if config.crl:
        _crl_stage(config, console, output_types)
    stages = plan(config, output_types)
    todo = [s for s in stages if config.force or not s.done()]
    console.print(f"[bold]crl-bench[/] {config.model}: {len(stages)} evaluation stages, {len(stages) - len(todo)} reused")
    for number, stage in enumerate(todo, 1):
        label = stage.method + (f" {stage.settings['setting']}" if "setting" in stage.settings else "")
        console.rule(f"stage {number}/{len(todo)}: {label} on {stage.task}")
        if stage.controller is not None:
            from harness.lm_models import CRLSteeredLM

            steered = CRLSteeredLM(pretrained=config.model, controller=str(stage.controller), batch_size=config.batch_size,
                                   device=config.device, dtype=config.dtype,
                                   log_interventions=str(stage.run_dir / "interventions.jsonl"))
            (stage.run_dir / "interventions.jsonl").unlink(missing_ok=True)
            _evaluate(steered, stage, config, manager)
            del steered
            continue
        if stage.adapter is not None:
            from harness.lm_models import RLVRLoraLM

            adapted = RLVRLoraLM(pretrained=config.model, adapter=str(stage.adapter), batch_size=config.batch_size,
                                 device=config.device, dtype=config.dtype)
            _evaluate(adapted, stage, config, manager)
            del adapted
            continue
        model = shared_lm()
        model.active = interventions(stage)
        try:
            _evaluate(model, stage, config, manager)
        finally:
            model.active = []
    reserved = reserved_documents(config.tasks, manager)
    scores = [s for stage in stages for s in read_scores(stage, config.model, reserved.get(stage.task, frozenset()))]
    path = write(Path(config.results_dir), scores, bench_config=asdict(config))
    console.print(f"leaderboard: {path} (+ leaderboard.md, leaderboard.csv)")
    if config.analyses:
        from harness import analysis

        console.rule("analyses: similarity to RLVR, SAE-feature overlap, circuits, CRL interactions")
        analysis.run(config, stages, reserved, console)
    _breakdowns(config, reserved, console)
    from harness.plots import all_figures

    from harness.report import build

    figures = all_figures(config.results_dir)
    console.print(f"figures: {', '.join(sorted({f.stem for f in figures}))} in {Path(config.results_dir) / 'figures'}")
    console.print(f"report: {build(config.results_dir)}")
    return path
