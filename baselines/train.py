"""`crl-bench train vectors`: fit the five steering directions on a task and choose, on its
validation split, the layer and coefficient each is evaluated with.

1. The task's contrast (`baselines.contrast.task_contrast`) on up to `train_limit` training
   documents (`harness.splits`); residual-stream activations at every candidate layer.
2. Mean difference, k-means, probe and PCA at every candidate layer. Each direction is a
   unit vector scaled by its class-mean gap (the distance between the classes' mean
   projections), so coefficient 1 moves an activation by about one class gap.
3. The sweep, scored by the task's own metric on up to `val_limit` validation documents with
   the task's own prompts and few-shot examples (lm-eval builds the requests; the loaded
   `LeanHFLM` scores them under the intervention, added at every position):
   a. every layer at coefficient 1 chooses each method's layer;
   b. DAS (tasks whose contrast has a two-answer readout) is trained at the layer mean
      difference chose, on an fp32 copy of the model (bf16 backward is ~12x slower on CPU);
   c. every coefficient at the chosen layer chooses the coefficient.
   The base model's validation score is measured once as the reference. Test documents are
   never touched.
4. One artifact per method, `<runs>/<model>/vectors/<task>/<method>/` (config.json,
   vectors.safetensors, manifest.json) with the chosen layer and coefficient: what
   `vector_steered` evaluates. The sweep is kept in `results/<model>/vectors/<task>/sweep.{json,md,png}`.

Finished sweep points are saved as they come (`sweep.partial.json` in the run directory), so
a crashed run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.config import Dtype, RunConfig
from harness.scoring import TaskScorer

DEFAULT_COEFS = [-1.0, 0.25, 0.5, 1.0, 2.0]
SWEEP_FILE = "sweep.json"
PARTIAL_FILE = "sweep.partial.json"
DIRECTIONS_FILE = "directions.safetensors"  # every fitted unit direction, "<method>.<layer>"


@dataclass
class VectorTrainConfig(RunConfig):
    task: str = field(default="arith_mc", metadata={"help": "lm-eval task to fit and sweep on"})
    methods: list[str] = field(
        default_factory=lambda: ["mean_diff", "kmeans", "probe", "pca", "das"], metadata={"help": "direction finders"}
    )
    layers: list[int] | None = field(
        default=None, metadata={"help": "candidate layers (default: 1/6, 1/3, 1/2 and 2/3 of the depth)"}
    )
    coefs: list[float] = field(
        default_factory=lambda: list(DEFAULT_COEFS),
        metadata={"help": "coefficients swept at the chosen layer (units of the class-mean gap)"},
    )
    train_limit: int | None = field(default=256, metadata={"help": "training documents used to fit (None: all)"})
    val_limit: int | None = field(
        default=64, metadata={"help": "validation documents scored per sweep point (None: all)"}
    )
    das_steps: int = field(default=30, metadata={"help": "DAS optimisation steps"})
    das_lr: float = field(default=0.05, metadata={"help": "DAS learning rate"})
    das_batch: int = field(default=8, metadata={"help": "prompts per DAS step"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    seed: int = field(
        default=0, metadata={"help": "seed for the contrast, k-means, the probe, DAS and few-shot sampling"}
    )
    dtype: Dtype = field(
        default="auto",
        metadata={"help": "model dtype; auto = bf16 on a CPU with native bf16 (AVX512-BF16, AMX), else fp32"},
    )
    force: bool = field(default=False, metadata={"help": "redo the sweep instead of reusing finished points"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from baselines.fitters import METHODS

        if isinstance(self.methods, str):
            self.methods = [m for m in self.methods.split(",") if m]
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown --methods {unknown or self.methods}; choose from {', '.join(METHODS)}")
        if not self.coefs:
            raise ValueError("--coefs needs at least one coefficient, e.g. --coefs 0.5,1,2")
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 2 documents, got {value}")

    def fingerprint(self) -> str:
        """What decides the sweep's numbers (not where files go, batch sizes or --force)."""
        from harness.identity import inputs
        from harness.manifest import fingerprint

        settings = {**asdict(self), "inputs": inputs(self.model, self.task)}
        return fingerprint(settings, {"results_dir", "runs_dir", "force", "batch_size", "device"})


def default_layers(n_layers: int, fractions: tuple[float, ...] = (1 / 6, 1 / 3, 1 / 2, 2 / 3)) -> list[int]:
    return sorted({min(n_layers - 1, max(0, round(n_layers * f))) for f in fractions})


def vectors_dir(config: VectorTrainConfig) -> Path:
    from harness.models import model_slug
    from harness.paths import runs_root

    root = Path(config.runs_dir) if config.runs_dir else runs_root()
    return root / model_slug(config.model) / "vectors" / config.task


def fitted_directions(config: VectorTrainConfig, layer: int) -> dict[str, torch.Tensor]:
    """Unit directions of each method fitted at `layer` in a finished sweep (methods the sweep
    did not fit there are missing)."""
    from safetensors.torch import load_file

    path = vectors_dir(config) / DIRECTIONS_FILE
    if not path.exists():
        return {}
    found = load_file(str(path))
    return {key.split(".")[0]: value for key, value in found.items() if int(key.split(".")[1]) == layer}


def fit_at_layer(config: VectorTrainConfig, layer: int, model: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    """Unit directions of the closed-form methods (not DAS) fitted at `layer` on the same
    training contrast as the sweep: for a layer the sweep did not keep."""
    from baselines.contrast import collect, task_contrast
    from baselines.fitters import FITTERS
    from harness.splits import method_splits
    from harness.tasks import load_task

    task = load_task(config.task)
    splits = method_splits(task)
    train_docs = splits.train[: config.train_limit] if config.train_limit else splits.train
    contrast = task_contrast(tokenizer, task, train_docs, "train", config.seed)
    x = collect(model, tokenizer, contrast, [layer], config.batch_size)[:, 0]
    return {m: FITTERS[m](x, contrast.labels, seed=config.seed) for m in config.methods if m != "das"}


def sweep_done(config: VectorTrainConfig) -> bool:
    """Whether a finished sweep with these settings is on disk (with all its artifacts)."""
    path = vectors_dir(config) / SWEEP_FILE
    if not path.exists():
        return False
    record = json.loads(path.read_text())
    return record.get("fingerprint") == config.fingerprint() and all(
        (Path(p) / "vectors.safetensors").exists() for p in record.get("artifacts", {}).values()
    )


def _vector(direction: torch.Tensor, gap: float) -> torch.Tensor:
    return direction * gap


def run(config: VectorTrainConfig, lm: Any = None) -> dict[str, Any]:
    """Fit, sweep and save; `lm` is an already loaded `LeanHFLM` of `config.model` to reuse."""
    from rich.console import Console
    from tqdm.auto import tqdm

    from baselines.contrast import collect, task_contrast
    from baselines.das import contrast_das
    from baselines.fitters import FITTERS, class_gap, orient
    from harness.lm_models import LeanHFLM
    from harness.manifest import build_manifest, write_json
    from harness.models import default_device, load_causal_lm, model_info
    from harness.splits import method_splits
    from harness.steering import AddVectors
    from harness.tasks import load_task
    from harness.vectors import SteeringVectors

    console = Console(stderr=True, soft_wrap=True)
    started = time.time()
    task = load_task(config.task)
    if task.OUTPUT_TYPE not in ("multiple_choice", "generate_until"):
        raise ValueError(
            f"task {config.task!r} has output_type {task.OUTPUT_TYPE!r}; vectors are trained for "
            "multiple_choice and generate_until tasks"
        )
    info = model_info(config.model)
    layers = config.layers or default_layers(info.n_layers)
    for layer in layers:
        info.check_layer(layer)
    splits = method_splits(task)
    train_docs = splits.train[: config.train_limit] if config.train_limit else splits.train
    val_docs = splits.validation[: config.val_limit] if config.val_limit else splits.validation
    if len(val_docs) < 2 or len(train_docs) < 2:
        raise ValueError(
            f"{config.task} has {len(train_docs)} training and {len(val_docs)} validation documents "
            "for the vectors; it needs at least 2 of each"
        )

    out_dir = vectors_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial_path = out_dir / PARTIAL_FILE
    fingerprint = config.fingerprint()
    partial = json.loads(partial_path.read_text()) if partial_path.exists() and not config.force else {}
    if partial.get("fingerprint") != fingerprint:
        partial = {"fingerprint": fingerprint, "points": {}}
    points: dict[str, float] = partial["points"]
    if points:
        console.print(f"resuming the {config.task} sweep: {len(points)} points already scored")

    def save_point(key: str, value: float) -> None:
        points[key] = value
        write_json(partial_path, partial)

    device = config.device or default_device()
    if lm is None:
        lm = LeanHFLM(pretrained=config.model, batch_size=config.batch_size, device=device, dtype=config.dtype)
    model, tokenizer = lm.model, lm.tokenizer
    contrast = task_contrast(tokenizer, task, train_docs, "train", config.seed)
    console.print(
        f"[bold]{config.task}[/]: {contrast.kind} contrast, {len(contrast)} sequences from "
        f"{len(train_docs)} training documents; sweep on {len(val_docs)} validation documents; layers {layers}"
        + (f" ({splits.note})" if splits.note else "")
    )
    acts = collect(model, tokenizer, contrast, layers, config.batch_size)  # [N, L, D] fp32
    directions: dict[str, dict[int, torch.Tensor]] = {m: {} for m in config.methods}
    gaps: dict[str, dict[int, float]] = {m: {} for m in config.methods}
    for li, layer in enumerate(layers):
        x = acts[:, li]
        for method in config.methods:
            if method == "das":
                continue
            u = FITTERS[method](x, contrast.labels, seed=config.seed)
            directions[method][layer] = u
            gaps[method][layer] = class_gap(x, contrast.labels, u)

    scorer = TaskScorer(lm, task, val_docs, config.seed)

    def score(key: str, method: str, layer: int, coef: float) -> float:
        if key not in points:
            vector = _vector(directions[method][layer], gaps[method][layer]).to(device)
            save_point(key, scorer([AddVectors({layer: vector}, coefficient=coef, positions="all")]))
        return points[key]

    if "base" not in points:
        save_point("base", scorer([]))
    base_score = points["base"]

    fitted = [m for m in config.methods if m != "das"]
    grid = [(m, layer) for m in fitted for layer in layers]
    for method, layer in tqdm(grid, desc=f"{config.task}: layer sweep (coef 1)", unit="point"):
        score(f"{method}|{layer}|1.0", method, layer, 1.0)
    chosen_layer = {m: max(layers, key=lambda l, m=m: points[f"{m}|{l}|1.0"]) for m in fitted}

    skipped: dict[str, str] = {}
    if "das" in config.methods:
        if not contrast.has_readout:
            skipped["das"] = (
                f"the {contrast.kind} contrast has no two-answer readout to interchange on (DAS needs "
                "every item to share the same two one-token answers)"
            )
        else:
            das_layer = chosen_layer.get("mean_diff", next(iter(chosen_layer.values()), layers[len(layers) // 2]))
            das_file = out_dir / "das.partial.safetensors"
            from safetensors.torch import load_file, save_file

            if das_file.exists() and partial.get("das_layer") == das_layer:
                u = load_file(str(das_file))["u"]
            else:
                model32, _ = load_causal_lm(config.model, dtype="float32", device=device)
                bar = tqdm(total=config.das_steps, desc=f"{config.task}: DAS at layer {das_layer}", unit="step")
                u = contrast_das(
                    model32,
                    tokenizer,
                    contrast,
                    das_layer,
                    acts[:, layers.index(das_layer)],
                    config.das_steps,
                    config.das_lr,
                    config.das_batch,
                    config.seed,
                    on_step=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
                )
                bar.close()
                del model32
                save_file({"u": u.contiguous()}, str(das_file))
                partial["das_layer"] = das_layer
                write_json(partial_path, partial)
            x = acts[:, layers.index(das_layer)]
            directions["das"][das_layer] = orient(u, x, contrast.labels)
            gaps["das"][das_layer] = class_gap(x, contrast.labels, directions["das"][das_layer])
            chosen_layer["das"] = das_layer
            score(f"das|{das_layer}|1.0", "das", das_layer, 1.0)
    config_methods = [m for m in config.methods if m not in skipped]

    coef_grid = [(m, c) for m in config_methods for c in config.coefs]
    for method, coef in tqdm(coef_grid, desc=f"{config.task}: coefficient sweep", unit="point"):
        score(f"{method}|{chosen_layer[method]}|{float(coef)}", method, chosen_layer[method], float(coef))
    chosen = {}
    for method in config_methods:
        layer = chosen_layer[method]
        tried = sorted({1.0, *map(float, config.coefs)})
        coef = max(tried, key=lambda c, m=method, l=layer: points[f"{m}|{l}|{c}"])
        chosen[method] = {
            "layer": layer,
            "coef": coef,
            "validation": points[f"{method}|{layer}|{coef}"],
            "gap": gaps[method][layer],
        }

    from safetensors.torch import save_file

    # every fitted direction (unit, per method and layer): the analyses read them at the SAE layer
    save_file(
        {f"{m}.{l}": u.float().contiguous() for m, per_layer in directions.items() for l, u in per_layer.items()},
        str(out_dir / DIRECTIONS_FILE),
    )
    artifacts = {}
    for method, pick in chosen.items():
        vectors = SteeringVectors(
            vectors={pick["layer"]: _vector(directions[method][pick["layer"]], pick["gap"])},
            coefficient=pick["coef"],
            positions="all",
            method=method,
            model=config.model,
            extra={
                "task": config.task,
                "contrast": contrast.kind,
                "unit": "class-mean gap",
                "gap": pick["gap"],
                "validation_score": pick["validation"],
                "base_validation_score": base_score,
                "metric": scorer.metric,
            },
        )
        artifacts[method] = str(
            vectors.save(
                out_dir / method,
                kind="steering_vector",
                task=config.task,
                train_config=asdict(config),
                splits=splits.sizes(),
            )
        )
    record = build_manifest(
        kind="vector_sweep",
        config=asdict(config),
        fingerprint=fingerprint,
        layers=layers,
        metric=scorer.metric,
        contrast=contrast.kind,
        n={"train_documents": len(train_docs), "train_sequences": len(contrast), "validation_documents": len(val_docs)},
        splits_note=splits.note,
        base=base_score,
        points=points,
        chosen=chosen,
        skipped=skipped,
        artifacts=artifacts,
        wall_s=round(time.time() - started, 1),
    )
    write_json(out_dir / SWEEP_FILE, record)
    publish(config, record)
    partial_path.unlink(missing_ok=True)
    (out_dir / "das.partial.safetensors").unlink(missing_ok=True)
    summary = ", ".join(f"{m} L{c['layer']} x{c['coef']:g} {c['validation']:.3f}" for m, c in chosen.items())
    console.print(f"{config.task}: base {base_score:.3f}; {summary} [{time.time() - started:.0f} s]")
    return record


def publish(config: VectorTrainConfig, record: dict[str, Any] | None = None) -> Path:
    """Write the sweep's table, plot and JSON to `results/<model>/vectors/<task>/` (from the finished
    sweep on disk when `record` is not given: a reused sweep is published too)."""
    from harness.manifest import write_json

    if record is None:
        record = json.loads((vectors_dir(config) / SWEEP_FILE).read_text())
    results = config.model_results / "vectors" / config.task
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / SWEEP_FILE, {k: v for k, v in record.items() if k not in {"platform", "artifacts"}})
    _plot(record, results / "sweep.png")
    (results / "sweep.md").write_text(render(record))
    return results


def _parse(points: dict[str, float]) -> list[tuple[str, int, float, float]]:
    rows = []
    for key, value in points.items():
        if key == "base":
            continue
        method, layer, coef = key.split("|")
        rows.append((method, int(layer), float(coef), value))
    return rows


def _plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _parse(record["points"])
    methods = list(record["chosen"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for method in methods:
        by_layer = sorted((l, v) for m, l, c, v in rows if m == method and c == 1.0)
        left.plot([l for l, _ in by_layer], [v for _, v in by_layer], marker="o", markersize=3, label=method)
        layer = record["chosen"][method]["layer"]
        by_coef = sorted((c, v) for m, l, c, v in rows if m == method and l == layer)
        right.plot(
            [c for c, _ in by_coef],
            [v for _, v in by_coef],
            marker="o",
            markersize=3,
            label=f"{method} (layer {layer})",
        )
    for axis in (left, right):
        axis.axhline(record["base"], color="grey", linestyle="--", linewidth=1, label="base")
    left.set_xlabel("layer (coefficient 1)")
    left.set_ylabel(f"validation {record['metric']}")
    right.set_xlabel("coefficient (class-mean gaps) at the chosen layer")
    right.legend(fontsize=7)
    config = record["config"]
    fig.suptitle(
        f"Steering-vector sweep: {config['task']} ({config['model']}, {record['n']['validation_documents']} "
        "validation documents)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def render(record: dict[str, Any]) -> str:
    config, metric = record["config"], record["metric"]
    n = record["n"]
    lines = [
        f"# Steering-vector sweep: {config['task']} on {config['model']}",
        "",
        f"Generated by `crl-bench train vectors --model {config['model']} --task {config['task']}` "
        f"(commit {record['git_commit']}, {record['wall_s']:.0f} s). Directions fit on the {record['contrast']} "
        f"contrast of {n['train_documents']} training documents ({n['train_sequences']} sequences); every point "
        f"is validation {metric} on {n['validation_documents']} documents, with the vector added at every "
        f"position. Base model: **{record['base']:.3f}**. The test split is not used here.",
        "",
    ]
    if record.get("splits_note"):
        lines += [f"Splits: {record['splits_note']}.", ""]
    lines += [
        "![sweep](sweep.png)",
        "",
        "## Chosen",
        "",
        f"| method | layer | coefficient | validation {metric} | Δ vs base | class-mean gap |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, c in record["chosen"].items():
        lines.append(
            f"| {method} | {c['layer']} | {c['coef']:g} | {c['validation']:.3f} | "
            f"{c['validation'] - record['base']:+.3f} | {c['gap']:.1f} |"
        )
    for method, why in record.get("skipped", {}).items():
        lines.append(f"| {method} | — | — | not trained: {why} | | |")
    rows = _parse(record["points"])
    layers = sorted({l for _, l, c, _ in rows if c == 1.0})
    lines += [
        "",
        "## Layer sweep (coefficient 1)",
        "",
        "| method | " + " | ".join(str(l) for l in layers) + " |",
        "|---|" + "---:|" * len(layers),
    ]
    for method in record["chosen"]:
        values = {l: v for m, l, c, v in rows if m == method and c == 1.0}
        lines.append(f"| {method} | " + " | ".join(f"{values[l]:.3f}" if l in values else "—" for l in layers) + " |")
    coefs = sorted({c for _, _, c, _ in rows})
    lines += [
        "",
        "## Coefficient sweep (at each method's chosen layer)",
        "",
        "| method | layer | " + " | ".join(f"{c:g}" for c in coefs) + " |",
        "|---|---:|" + "---:|" * len(coefs),
    ]
    for method, chosen in record["chosen"].items():
        values = {c: v for m, l, c, v in rows if m == method and l == chosen["layer"]}
        lines.append(
            f"| {method} | {chosen['layer']} | "
            + " | ".join(f"{values[c]:.3f}" if c in values else "—" for c in coefs)
            + " |"
        )
    return "\n".join(lines) + "\n"
