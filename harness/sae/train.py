"""`crl-bench sae train`: train a residual-stream SAE with sae-lens's own trainer.

sae-lens's `LanguageModelSAETrainingRunner` does the work (activation store, mixing buffer,
TopK SAE, Adam, checkpoints); we hand it the model loaded from its local directory
(wrapped in sae-lens's `HookedProxyLM`, hooking `model.layers.<L>`, the output of decoder
layer L) and the corpus as an in-memory dataset. Two additions:

- **Decoder-bias initialisation.** Gemma's residual stream has a large constant component
  (at the embedded model's layer 9, the mean is ~98% of the norm), and sae-lens starts
  `b_dec` at zero: with Adam's step size the bias then takes thousands of steps to reach
  the mean and the SAE learns nothing meanwhile. We set `b_dec` to the mean of a few
  activation batches (in sae-lens's normalised units), the classic geometric-median trick.
- **Resume.** Training writes to `<dir>.partial/` with sae-lens checkpoints; a rerun with
  the same settings resumes from the newest checkpoint. The finished SAE directory gets
  our `config.json` and `manifest.json` beside sae-lens's `cfg.json` and weights, and is
  renamed into place last, so a half-trained SAE is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from harness.config import Dtype, ModelConfig
from harness.manifest import build_manifest, write_json
from harness.models import model_slug
from harness.paths import cache_root

CONFIG = "config.json"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"


@dataclass
class SAETrainConfig(ModelConfig):
    layer: int | None = field(
        default=None, metadata={"help": "decoder layer whose output the SAE reads (default: the middle layer)"}
    )
    corpus: str = field(
        default="builtin", metadata={"help": "builtin, a .txt/.jsonl/.jsonl.gz file or folder, or a HF dataset id"}
    )
    width: int = field(default=2048, metadata={"help": "number of SAE features (d_sae)"})
    k: int = field(default=32, metadata={"help": "active features per token (TopK SAE), i.e. the L0"})
    tokens: int = field(default=600_000, metadata={"help": "training tokens"})
    context_size: int = field(default=128, metadata={"help": "tokens per training sequence"})
    batch_tokens: int = field(default=2048, metadata={"help": "tokens per SAE optimisation step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    seed: int = field(default=0, metadata={"help": "seed for sae-lens, initialisation and corpus shuffling"})
    dtype: Dtype = field(
        default="auto", metadata={"help": "LLM dtype for activations; auto = bf16 on a CPU with native bf16, else fp32"}
    )
    autocast: bool = field(
        default=True,
        metadata={
            "help": "bf16 autocast for the SAE's matmuls (fp32 weights), where the device runs bf16 natively (a GPU, "
            "or a CPU with AVX512-BF16/AMX)"
        },
    )
    checkpoints: int = field(default=4, metadata={"help": "checkpoints during training, for resume"})
    force: bool = field(default=False, metadata={"help": "retrain even if a finished SAE with these settings exists"})
    out_dir: str | None = field(
        default=None, metadata={"help": "where the SAE goes (default: <cache>/saes/<model>/...)"}
    )
    results_dir: str = field(default="results", metadata={"help": "where the quality record goes after training"})
    architecture: Literal["topk"] = field(default="topk", metadata={"help": "SAE architecture (sae-lens TopK)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if Path(self.corpus).expanduser().exists():  # one cache entry however the path is written
            self.corpus = str(Path(self.corpus).expanduser().resolve())
        for name in ("width", "k", "tokens", "context_size", "batch_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.k > self.width:
            raise ValueError(f"--k {self.k} exceeds --width {self.width}; pick k well below the width (e.g. 32)")
        if self.tokens < self.batch_tokens:
            raise ValueError(f"--tokens {self.tokens} is less than one batch (--batch-tokens {self.batch_tokens})")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")

    def identity(self) -> dict:
        """The settings that define the SAE (not where it goes or whether to redo it)."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("force", "out_dir", "device", "checkpoints", "results_dir")
        }

    def directory(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir).expanduser().resolve()
        key = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return cache_root() / "saes" / model_slug(self.model) / f"layer{self.layer}-w{self.width}-k{self.k}-{key}"


def finished(directory: Path) -> bool:
    return (directory / MANIFEST).exists() and (directory / "sae_weights.safetensors").exists()


def _latest_checkpoint(checkpoints: Path, names: list[str] | None = None) -> Path | None:
    """The newest complete checkpoint: sae-lens nests them under a per-run id,
    <checkpoints>/<run id>/<tokens done>/, and the multi-SAE runner one folder per SAE below
    that (`names`: every one must be there)."""
    from sae_lens.constants import TRAINER_STATE_FILENAME

    done = [
        folder
        for folder in checkpoints.rglob("*")
        if folder.name.isdigit() and all((folder / name / TRAINER_STATE_FILENAME).exists() for name in names or [""])
    ]
    return max(done, key=lambda p: int(p.name)) if done else None


@contextmanager
def _quiet_sae_lens():
    """sae-lens warns that an in-memory dataset/model make a run irreproducible from its own
    config alone; our config.json and manifest record both, so silence that."""
    import warnings

    logger = logging.getLogger("sae_lens")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # an in-memory corpus is untokenized by design, and short corpora repeat
            warnings.filterwarnings("ignore", message="Dataset is not tokenized")
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            yield
    finally:
        logger.setLevel(level)


def _sae_config(config: SAETrainConfig, d_in: int, device: str):
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    return TopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=config.width,
        k=config.k,
        dtype="float32",
        device=device,
        normalize_activations="expected_average_only_in",
    )


def _runner_settings(config: SAETrainConfig, model_path: str, corpus_spec: str, device: str, autocast: bool) -> dict:
    """What the single- and the multi-SAE runner configs of sae-lens share."""
    from sae_lens import LoggingConfig

    return dict(
        model_name=model_path,
        model_class_name="AutoModelForCausalLM",
        dataset_path=f"crl-bench:{corpus_spec}",
        streaming=False,
        context_size=config.context_size,
        prepend_bos=True,
        exclude_special_tokens=True,
        training_tokens=config.tokens,
        train_batch_size_tokens=config.batch_tokens,
        store_batch_size_prompts=max(1, config.batch_tokens // config.context_size),
        # the mixing buffer holds n_batches_in_buffer * context_size activations
        n_batches_in_buffer=max(32, 4 * config.batch_tokens // config.context_size),
        lr=config.lr,
        lr_warm_up_steps=min(50, config.tokens // config.batch_tokens // 10),
        seed=config.seed,
        device=device,
        dtype="float32",
        autocast=autocast,
        n_batches_for_norm_estimate=20,
        # A feature silent for ~50k tokens counts as dead and gets the TopK auxiliary loss;
        # sae-lens's default (1000 steps) exceeds a whole CPU-budget run, so AuxK never acted.
        dead_feature_window=max(10, 50_000 // config.batch_tokens),
        feature_sampling_window=200,
        n_checkpoints=config.checkpoints,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
    )


def _load_for_training(config: SAETrainConfig):
    """The corpus's training texts, the model and tokenizer, the device and whether to autocast."""
    from harness.models import cpu_has_native_bf16, default_device, load_causal_lm
    from harness.sae.corpus import load_corpus

    device = config.device or default_device()
    corpus = load_corpus(config.corpus)
    # ~4 characters per token in English; 1.5x so the run rarely needs a second epoch.
    texts = corpus.chunks("train", max_chars=int(config.tokens * 6), seed=config.seed)
    model, tokenizer = load_causal_lm(config.model, dtype=config.dtype, device=device)
    # emulated bf16 (a CPU without AVX512-BF16/AMX) is 20-100x slower than fp32: no autocast there
    autocast = config.autocast and (not device.startswith("cpu") or cpu_has_native_bf16())
    return corpus, texts, model, tokenizer, device, autocast


def _finish(config: SAETrainConfig, partial: Path, corpus, model, wall_s: float, device: str, autocast: bool, **extra):
    """Write the manifest into `partial` and rename it into place: the SAE is finished."""
    from harness.models import describe, model_info

    target = config.directory()
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    write_json(
        partial / MANIFEST,
        build_manifest(
            kind="sae",
            model=config.model,
            model_path=str(model_info(config.model).path),
            layer=config.layer,
            hook_name=f"{describe(model).layers_path}.{config.layer}",
            corpus=corpus.describe(),
            training_tokens=config.tokens,
            training_steps=config.tokens // config.batch_tokens,
            train_wall_s=round(wall_s, 1),
            device=device,
            llm_dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
            autocast=autocast,
            seed=config.seed,
            **extra,
        ),
    )
    (partial / PROGRESS).unlink(missing_ok=True)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def _start(config: SAETrainConfig) -> Path:
    """The `.partial` directory `config` trains into (emptied first under --force)."""
    from harness.models import model_info

    info = model_info(config.model)
    if config.layer is None:
        config.layer = info.n_layers // 2
    info.check_layer(config.layer)
    partial = config.directory().with_name(config.directory().name + ".partial")
    if config.force and partial.exists():
        shutil.rmtree(partial)
    return partial


def train_sae(config: SAETrainConfig) -> Path:
    """Train (or resume, or reuse) the SAE described by `config`; return its directory."""
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner

    from harness.models import describe, model_info

    partial = _start(config)
    if finished(config.directory()) and not config.force:
        return config.directory()
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / CONFIG, asdict(config))
    corpus, texts, model, tokenizer, device, autocast = _load_for_training(config)
    info = model_info(config.model)
    hook = f"{describe(model).layers_path}.{config.layer}"

    runner_cfg = LanguageModelSAERunnerConfig(
        sae=_sae_config(config, info.d_model, device),
        hook_name=hook,
        is_dataset_tokenized=False,
        checkpoint_path=str(partial / "checkpoints"),
        output_path=str(partial),
        verbose=False,
        **_runner_settings(config, str(info.path), corpus.spec, device, autocast),
    )
    wall_s = _run(
        LanguageModelSAETrainingRunner,
        runner_cfg,
        partial,
        config.seed,
        texts,
        model,
        tokenizer,
        [hook],
        _init_decoder_bias,
    )
    return _finish(config, partial, corpus, model, wall_s, device, autocast)


def _run(runner_class, runner_cfg, folder: Path, seed: int, texts, model, tokenizer, hooks, init, names=None) -> float:
    """Run a sae-lens training runner whose checkpoints go to `folder`/checkpoints: resumed from
    the newest complete one, else started after `init(runner)`. Returns the wall seconds of
    every attempt so far (kept in `folder`/progress.json across resumes)."""
    import torch
    from datasets import Dataset
    from sae_lens.load_model import HookedProxyLM

    torch.manual_seed(seed)
    progress = json.loads((folder / PROGRESS).read_text()) if (folder / PROGRESS).exists() else {"wall_s": 0.0}
    started = time.perf_counter()
    with _quiet_sae_lens():
        runner = runner_class(
            runner_cfg,
            override_dataset=Dataset.from_dict({"text": texts}),
            override_model=HookedProxyLM(model, tokenizer, hook_names=hooks),
        )
        checkpoint = _latest_checkpoint(folder / "checkpoints", names)
        if checkpoint is not None:
            print(f"resuming SAE training from {checkpoint} ({checkpoint.name} tokens done)")
            runner.cfg.resume_from_checkpoint = str(checkpoint)
        else:
            init(runner)
        try:
            runner.run()
        finally:
            progress["wall_s"] += time.perf_counter() - started
            write_json(folder / PROGRESS, progress)
    return progress["wall_s"]


def _shared(config: SAETrainConfig) -> dict:
    return {k: v for k, v in config.identity().items() if k != "layer"}


def train_saes(configs: list[SAETrainConfig]) -> list[Path]:
    """Train (or resume, or reuse) SAEs that differ only in their layer, from one forward pass of
    the model: sae-lens's `MultiSAETrainingRunner` captures every layer in the same forward and
    trains one SAE per layer on it, each with its own optimiser, scaler and dead-feature
    tracking, so two layers cost about one. Each finished SAE is the same directory, config and
    manifest as `train_sae`'s (its manifest names the SAEs it was trained with); a finished one
    is reused, and a lone unfinished one trains alone. Returns their directories, in order."""
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig

    from harness.models import describe, model_info

    partials = {id(c): _start(c) for c in configs}
    todo = [c for c in configs if c.force or not finished(c.directory())]
    if len(todo) < 2:
        return [train_sae(c) for c in configs]
    if any(_shared(c) != _shared(todo[0]) for c in todo) or len({c.layer for c in todo}) < len(todo):
        raise ValueError("train_saes trains SAEs that differ in their layer only; train the others one at a time")
    names = {c.directory().name: c for c in todo}
    key = hashlib.sha256(json.dumps(sorted(names), sort_keys=True).encode()).hexdigest()[:10]
    group = todo[0].directory().parent / f"joint-{key}.partial"
    if any(c.force for c in todo) and group.exists():
        shutil.rmtree(group)
    group.mkdir(parents=True, exist_ok=True)
    write_json(group / CONFIG, {name: asdict(c) for name, c in names.items()})
    first = todo[0]
    corpus, texts, model, tokenizer, device, autocast = _load_for_training(first)
    info = model_info(first.model)
    hooks = {name: f"{describe(model).layers_path}.{c.layer}" for name, c in names.items()}
    runner_cfg = MultiSAETrainingRunnerConfig(
        saes={name: _sae_config(c, info.d_model, device) for name, c in names.items()},
        hook_names=hooks,
        checkpoint_path=str(group / "checkpoints"),
        output_path=str(group / "out"),
        **_runner_settings(first, str(info.path), corpus.spec, device, autocast),
    )
    wall_s = _run(
        MultiSAETrainingRunner,
        runner_cfg,
        group,
        first.seed,
        texts,
        model,
        tokenizer,
        list(hooks.values()),
        lambda runner: _init_decoder_biases(runner, hooks),
        names=list(names),
    )
    for name, config in names.items():
        partial = partials[id(config)]
        if partial.exists():
            shutil.rmtree(partial)
        shutil.copytree(group / "out" / name, partial)
        write_json(partial / CONFIG, asdict(config))
        others = sorted(set(names) - {name})
        _finish(config, partial, corpus, model, wall_s, device, autocast, trained_jointly_with=others)
    shutil.rmtree(group)
    return [c.directory() for c in configs]


def _init_decoder_bias(runner, batches: int = 8) -> None:
    """Start b_dec at the activation mean, in the units the trainer will normalise to.

    sae-lens scales inputs by sqrt(d_in) / mean norm (`expected_average_only_in`); the
    trainer estimates that factor again on its own batches, so ours is only an initial
    value that training then refines.
    """
    import torch

    store = runner.activations_store
    _set_decoder_bias(runner.sae, torch.cat([next(store) for _ in range(batches)]))


def _init_decoder_biases(runner, hooks: dict[str, str], batches: int = 8) -> None:
    """`_init_decoder_bias` for the multi-SAE runner: each SAE's b_dec at the mean of its own
    layer's activations, special tokens (BOS) left out as the trainer leaves them out."""
    import torch

    store = runner.activations_store
    acts: dict[str, list] = {hook: [] for hook in set(hooks.values())}
    for _ in range(batches):
        tokens = store.get_batch_tokens()
        by_hook = store.get_multi_hook_activations(tokens)
        keep = torch.ones(tokens.numel(), dtype=torch.bool)
        if store.exclude_special_tokens is not None:
            keep = ~torch.isin(tokens.reshape(-1).cpu(), store.exclude_special_tokens.cpu())
        for hook in acts:
            acts[hook].append(by_hook[hook].reshape(-1, by_hook[hook].shape[-1])[keep.to(by_hook[hook].device)])
    for name, hook in hooks.items():
        _set_decoder_bias(runner.saes[name], torch.cat(acts[hook]))


def _set_decoder_bias(sae, acts) -> None:
    import torch

    acts = acts.float()
    scale = acts.shape[-1] ** 0.5 / acts.norm(dim=-1).mean()
    with torch.no_grad():
        sae.b_dec.copy_((acts.mean(0) * scale).to(sae.b_dec.dtype))
