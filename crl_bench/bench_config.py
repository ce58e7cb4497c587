"""What a `crl-bench bench` run will do: its settings (`BenchConfig`), the profiles that fill
what the flags leave open, and the per-task configurations of the vector sweep, RLVR and CRL
runs it trains (read by bench and by the analyses that find those runs again)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from harness.config import GENERATION_BATCH_SIZE, Dtype, RunConfig
from harness.models import DEFAULT_MODEL

# the full profile: crl-bench's tasks and the public benchmarks users name (`--tasks gsm8k,arc`)
DEFAULT_TASKS = ("toy_sentiment", "arith_mc", "arith_gen", "arc_easy", "arc_challenge", "boolq", "gsm8k")
# the ladder's rungs trained beside RLVR (`crl_bench.ladder`): two by its GRPO trainer, and C-SFT
# distilled from its run
RUNGS: tuple[str, ...] = ("rl-vector", "crl-lm", "csft")


# What a bench run does when its flags leave it open. `laptop` (the embedded model on a CPU:
# every method and analysis of `make bench` on 2 cores, timed in
# results/<model>/bench_timings/laptop-laptop.md) covers all three CRL settings with one
# one-token task and one generation task, the `laptop` budget, the first 128 test items of a
# generation task (each costs a generated answer per method; its rows say "limit 128"), and
# a smaller vector sweep on generation tasks (each point generates for every validation
# document); `full` is the whole default task set, every test item and the `cpu` budget
# (`gpu` on a GPU). docs/bench.md says what each cut changes.
PROFILES: dict[str, dict[str, Any]] = {
    "laptop": {
        "tasks": ["toy_sentiment", "arith_gen"],
        "budget": "laptop",
        "generation_limit": 128,
        "generation_sweep": {"val_limit": 32, "coefs": [0.5, 1.0, 2.0], "layer_fractions": (1 / 6,)},
    },
    "full": {
        "tasks": list(DEFAULT_TASKS),
        "budget": {"cpu": "cpu", "cuda": "gpu"},
        "generation_limit": None,
        "generation_sweep": {},
    },
}


@dataclass
class BenchConfig(RunConfig):
    profile: Literal["auto", "laptop", "full"] = field(
        default="auto",
        metadata={
            "help": "defaults for what the flags leave open: laptop (tasks toy_sentiment,arith_gen, "
            "laptop budget, small generation sweeps), full (every default task), or auto "
            "(laptop for the embedded model on a CPU, else full)"
        },
    )
    tasks: list[str] | None = field(default=None, metadata={"help": "lm-eval task names (default: the profile's)"})
    limit: int | None = field(
        default=None,
        metadata={"help": "evaluate only the first N items of each task (and at most N validation items per analysis)"},
    )
    generation_limit: int | None = field(
        default=None,
        metadata={
            "help": "evaluate only the first N items of each generation task (default: the profile's: 128 on "
            "laptop, every item on full; 0: every item)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "evaluation batch size"})
    generation_batch_size: int = field(
        default=GENERATION_BATCH_SIZE,
        metadata={"help": "rows per generate call of generation tasks (a CPU decodes 64 rows ~1.6x faster than 16)"},
    )
    dtype: Dtype = field(
        default="auto",
        metadata={"help": "model dtype; auto = bf16 on a CPU with native bf16 (AVX512-BF16, AMX), else fp32"},
    )
    seed: int = field(default=0, metadata={"help": "seed for lm-eval's sampling and few-shot selection"})
    sae: str = field(
        default="auto",
        metadata={
            "help": "SAE for the SAE-based methods: sae-lens <release>/<id>, a directory, auto (published, else "
            "trained and cached), or none"
        },
    )
    sae_layer: int | None = field(
        default=None, metadata={"help": "layer of the SAE (default: the SAE's own; the middle layer for auto)"}
    )
    sae_corpus: str = field(
        default="builtin",
        metadata={"help": "text to train an auto SAE on and to measure SAEs with (see `crl-bench sae train --help`)"},
    )
    sae_sequences: int = field(
        default=512,
        metadata={
            "help": "held-out sequences of the corpus the SAE's quality and feature cards are measured on "
            "(the cross-entropy metrics on an eighth of them, at most 64)"
        },
    )
    vectors: list[str] = field(
        default_factory=lambda: ["mean_diff", "kmeans", "probe", "pca", "das"],
        metadata={"help": "steering-vector methods to train and evaluate (none: skip)"},
    )
    vector_val_limit: int | None = field(
        default=64, metadata={"help": "validation documents per point of the vector sweep"}
    )
    corrsteer: bool = field(
        default=True,
        metadata={
            "help": "train CorrSteer on each task (SAE features correlated with correctness; needs --sae) and "
            "evaluate it (--no-corrsteer: skip)"
        },
    )
    rlvr: bool = field(
        default=True, metadata={"help": "train and evaluate the RLVR reference (LoRA + GRPO) on each task it supports"}
    )
    budget: str = field(
        default="auto",
        metadata={
            "help": "RL training budget shared by RLVR and CRL: preset (smoke, laptop, cpu, gpu), "
            "YAML file, or auto (the profile's: laptop, else cpu, gpu on a GPU)"
        },
    )
    rl_settings: str | None = field(
        default=None,
        metadata={
            "help": "YAML file of RLVR/CRL training settings per task, "
            "e.g. {arith_gen: {steps: 100, rlvr: {temperature: 0.5}}}: "
            "budget fields apply to both methods (their runs stay "
            "matched); rlvr:/crl: hold one method's own"
        },
    )
    crl: list[str] = field(
        default_factory=lambda: ["one-token", "multi-layer", "generation"],
        metadata={"help": "CRL settings to train and evaluate (none: skip); each runs on the tasks of its kind"},
    )
    ladder: list[str] = field(
        default_factory=lambda: list(RUNGS),
        metadata={
            "help": "rungs of the ladder trained with RLVR's budget and evaluated: rl-vector (one steering vector per "
            "layer, RLVR's GRPO trainer), crl-lm (CRL's features per token, trained through the LM by the same "
            "trainer), csft (the same feature controller distilled from RLVR's run); none: skip"
        },
    )
    controls: list[str] = field(
        default_factory=list,
        metadata={
            "help": "controls to train and evaluate: random-reward (RLVR and each GRPO rung once per task on a "
            "seeded coin-flip reward of the same mean, same budget: a gain that does not vanish is flagged)"
        },
    )
    analyses: bool = field(
        default=True,
        metadata={
            "help": "after the evaluations: similarity to RLVR, SAE-feature overlap, circuits and CRL "
            "interactions (results/{similarity,overlap,circuits,interactions}.md)"
        },
    )
    force: bool = field(default=False, metadata={"help": "recompute stages that are already done"})
    dry_run: bool = field(
        default=False,
        metadata={"help": "print the plan (stages, what is reused, model, device, dtype, budgets, memory) and exit"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from harness.models import default_device

        device = "cuda" if str(self.device or default_device()).startswith("cuda") else "cpu"
        if self.profile == "auto":
            self.profile = "laptop" if self.model == DEFAULT_MODEL and device == "cpu" else "full"
        defaults = PROFILES[self.profile]
        if self.tasks is None:
            self.tasks = list(defaults["tasks"])
        if self.budget == "auto":
            budget = defaults["budget"]
            self.budget = budget[device] if isinstance(budget, dict) else budget
        if self.generation_limit is None:
            self.generation_limit = defaults["generation_limit"]
        elif self.generation_limit == 0:
            self.generation_limit = None
        elif self.generation_limit < 0:
            raise ValueError(
                f"--generation-limit must be a number of items (0: every item), got {self.generation_limit}"
            )
        from rl.budget import Budget

        if self.sae_sequences < 8:
            raise ValueError(f"--sae-sequences must be at least 8, got {self.sae_sequences}")
        Budget.resolve(self.budget)  # a bad preset or budget file fails here, before anything runs
        if isinstance(self.tasks, str):
            self.tasks = [t for t in self.tasks.split(",") if t]
        if not self.tasks:
            raise ValueError("no tasks given; pass --tasks toy_sentiment,arith_mc (comma-separated)")
        paths = [
            t for t in self.tasks if any(c in t for c in "/\\") or t.endswith((".yaml", ".yml")) or t.startswith(".")
        ]
        if paths:  # a name becomes a folder name under the runs directory: it must be a name
            raise ValueError(
                f"--tasks takes task names (e.g. arith_gen), not paths: {', '.join(paths)}. To evaluate a task "
                "file of your own, pass its folder to lm-eval: `lm_eval --include_path FOLDER --tasks NAME "
                "--model crl_steered --model_args ...` (NAME: the file's `task:` field)"
            )
        if isinstance(self.vectors, str):
            self.vectors = [v for v in self.vectors.split(",") if v]
        if self.vectors in (["none"], []):
            self.vectors = []
        if isinstance(self.crl, str):
            self.crl = [c for c in self.crl.split(",") if c]
        if self.crl in (["none"], []):
            self.crl = []
        from rl.crl.config import SETTINGS

        wrong = [c for c in self.crl if c not in SETTINGS]
        if wrong:
            raise ValueError(f"unknown --crl settings {', '.join(wrong)}; choose from {', '.join(SETTINGS)}, or none")
        if isinstance(self.ladder, str):
            self.ladder = [r for r in self.ladder.split(",") if r]
        if self.ladder in (["none"], []):
            self.ladder = []
        if isinstance(self.controls, str):
            self.controls = [c for c in self.controls.split(",") if c and c != "none"]
        if [c for c in self.controls if c != "random-reward"]:
            raise ValueError(f"unknown --controls {', '.join(self.controls)}; choose random-reward, or none")
        odd = [r for r in self.ladder if r not in RUNGS]
        if odd:
            raise ValueError(f"unknown --ladder rungs {', '.join(odd)}; choose from {', '.join(RUNGS)}, or none")
        from baselines.fitters import METHODS

        unknown = [v for v in self.vectors if v not in METHODS]
        if unknown:
            raise ValueError(f"unknown --vectors {', '.join(unknown)}; choose from {', '.join(METHODS)}, or none")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be a positive number of items, got {self.limit}")
        if self.batch_size < 1 or self.generation_batch_size < 1:
            raise ValueError(
                f"--batch-size and --generation-batch-size must be at least 1, got {self.batch_size} and "
                f"{self.generation_batch_size}"
            )
        if self.rl_settings is not None:
            from crl_bench.rl_settings import read_rl_settings, settings_classes

            # a bad file fails here, before anything runs: its keys, and every value as the runs will get it
            for task, methods in read_rl_settings(self.rl_settings).items():
                for method, cls in settings_classes().items():
                    try:
                        cls(**{"budget": self.budget, **methods[method]}, task=task)
                    except (ValueError, TypeError) as err:
                        raise ValueError(f"--rl-settings {self.rl_settings}: {task}: {method}: {err}") from None

    def limit_for(self, output_type: str | None) -> int | None:
        """Test items evaluated on a task of this output type: --limit, and for a generation task at
        most --generation-limit (None: every item)."""
        limits = [self.limit]
        if output_type == "generate_until":
            limits.append(self.generation_limit)
        given = [n for n in limits if n is not None]
        return min(given) if given else None


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
    return VectorTrainConfig(
        model=config.model,
        task=task,
        methods=list(config.vectors),
        val_limit=sweep_val_limit(config, output_type),
        layers=layers,
        batch_size=config.batch_size,
        seed=config.seed,
        dtype=config.dtype,
        device=config.device,
        results_dir=config.results_dir,
        runs_dir=config.runs_dir,
        **extra,
    )


def sweep_val_limit(config: BenchConfig, output_type: str | None) -> int | None:
    """Validation documents per point of the vector sweep of a task of this output type (and per
    check of CorrSteer's): --vector-val-limit, at most the profile's for generation tasks."""
    sweep = PROFILES[config.profile]["generation_sweep"] if output_type == "generate_until" else {}
    val_limit = config.vector_val_limit
    if "val_limit" in sweep and val_limit is not None:
        val_limit = min(val_limit, sweep["val_limit"])
    return val_limit


def corrsteer_config(config: BenchConfig, task: str, output_type: str | None = None) -> Any:
    """The CorrSteer run of `task` (of `output_type`; None: looked up): the bench's SAE, validated
    on as many documents as the task's vector sweep."""
    from baselines.corrsteer import CorrSteerConfig

    if output_type is None:
        from harness.tasks import load_task

        output_type = load_task(task).OUTPUT_TYPE

    return CorrSteerConfig(
        model=config.model,
        task=task,
        sae=config.sae,
        sae_corpus=config.sae_corpus,
        layer=config.sae_layer,
        val_limit=sweep_val_limit(config, output_type),
        seed=config.seed,
        dtype=config.dtype,
        device=config.device,
        results_dir=config.results_dir,
        runs_dir=config.runs_dir,
    )


def rlvr_configs(config: BenchConfig, task: str) -> list[Any]:
    """One RLVR run per seed of the budget."""
    from rl.rlvr.config import RLVRConfig

    return seeded_configs(RLVRConfig, config, task, rl_settings(config, task, "rlvr"))


def seeded_configs(cls: type, config: BenchConfig, task: str, settings: dict[str, Any]) -> list[Any]:
    """One `cls` run of `task` per seed of the budget: the bench's budget unless `settings` (a
    method's `--rl-settings`) name another, and the bench's model, device and folders."""
    from rl.budget import Budget

    seeds = Budget.resolve(settings.get("budget", config.budget)).seeds
    return [
        cls(
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


def rl_settings(config: BenchConfig, task: str, method: str) -> dict[str, Any]:
    """The `--rl-settings` of one task's runs of one method (none: {})."""
    from crl_bench.rl_settings import read_rl_settings

    return read_rl_settings(config.rl_settings).get(task, {}).get(method, {}) if config.rl_settings else {}


def multi_layer_skipped(config: BenchConfig) -> str | None:
    """Why the multi-layer CRL setting cannot run with this --sae (None: it can). It needs an
    SAE per controlled layer: `auto` trains (or finds) one per layer and a `{layer}` pattern names
    one per layer; a single SAE reads one layer only."""
    if "multi-layer" not in config.crl or config.sae == "none" or config.sae == "auto" or "{layer}" in config.sae:
        return None
    return (
        f"CRL multi-layer skipped: --sae {config.sae} is one SAE for one layer, and the multi-layer setting "
        "controls several; pass a `{layer}` pattern (e.g. --sae "
        "gemma-scope-2b-pt-res-canonical/layer_{layer}/width_16k/canonical) or --sae auto"
    )


def crl_configs(config: BenchConfig, task: str, output_type: str) -> list[Any]:
    """One CRL run per (setting that fits the task's kind, seed of the budget)."""
    from rl.budget import Budget
    from rl.crl.config import CRLConfig

    if config.sae == "none":
        return []
    fits = [s for s in config.crl if (s == "generation") == (output_type == "generate_until")]
    if multi_layer_skipped(config):
        fits = [s for s in fits if s != "multi-layer"]
    settings = rl_settings(config, task, "crl")
    seeds = Budget.resolve(settings.get("budget", config.budget)).seeds
    layers = [config.sae_layer] if config.sae_layer is not None else None
    return [
        CRLConfig(
            **{
                "sae": config.sae,
                "sae_corpus": config.sae_corpus,
                "budget": config.budget,
                "layers": layers if setting != "multi-layer" else None,
                **settings,
            },
            model=config.model,
            task=task,
            setting=setting,
            seed=seed,
            device=config.device,
            results_dir=config.results_dir,
            runs_dir=config.runs_dir,
        )
        for setting in fits
        for seed in seeds
    ]


def reserved_documents(tasks: list[str], manager: Any = None) -> dict[str, frozenset[int]]:
    """Per task, the evaluated documents reserved for training (`harness.splits`)."""
    from harness.splits import method_splits
    from harness.tasks import load_task, task_manager

    manager = manager or task_manager(names=tasks)
    return {task: method_splits(load_task(task, manager)).reserved_ids for task in tasks}
