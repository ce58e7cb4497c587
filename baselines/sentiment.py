"""`crl-bench vectors checks`: the linear-representation checks of Tigges et al. on toy_sentiment.

1. Contrast sets from the task's train / validation / test splits (`baselines.contrast`).
2. At every layer, the four cheap directions (mean difference, k-means, probe, PCA) from
   training activations at the adjective; DAS (trained with an fp32 copy of the model:
   bf16 backward passes are ~12x slower than fp32 on CPU) at `das_layers`.
3. Directional patching per layer on the validation pairs chooses the layer (mean flip rate
   over methods; never the test split), then on the test pairs for the plot, with a random
   direction as control.
4. At the chosen layer: the pairwise cosine matrix, directional (mean) ablation vs a random
   direction, and activation addition with negative and positive coefficients.

Writes `results/<model>/vectors/<task>/checks.{json,md}`, `patching.png`, `cosine.png`, and one
steering artifact per method (run dir: config.json, vectors.safetensors, manifest.json)
under `<runs>/<model>/vector-checks/<task>/<method>/` (the leaderboard vectors, chosen by a
validation sweep, are `crl-bench train vectors`, in `baselines.train`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.config import Dtype, RunConfig

ADDITION_COEFS = [-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0]


@dataclass
class ChecksConfig(RunConfig):
    task: str = field(default="toy_sentiment", metadata={"help": "a paired sentiment task (pair_id, adjective_start)"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to scan (default: all)"})
    das_layers: list[int] | None = field(
        default=None, metadata={"help": "layers where DAS is trained (default: every third layer)"}
    )
    das_steps: int = field(default=40, metadata={"help": "DAS optimisation steps per layer"})
    das_lr: float = field(default=0.05, metadata={"help": "DAS learning rate"})
    das_batch: int = field(default=32, metadata={"help": "prompts per DAS step"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass"})
    limit: int | None = field(
        default=None, metadata={"help": "use only the first N prompts of each split (an even N keeps pairs whole)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for k-means, the probe, DAS and the random control"})
    dtype: Dtype = field(
        default="auto",
        metadata={
            "help": "model dtype for everything but DAS training; auto = bf16 on a CPU with native bf16 "
            "(AVX512-BF16, AMX), else fp32"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.das_steps < 0 or self.das_batch < 2 or self.batch_size < 1:
            raise ValueError("--das-steps must be >= 0, --das-batch >= 2 and --batch-size >= 1")


def run(config: ChecksConfig) -> Path:
    from rich.console import Console
    from tqdm.auto import tqdm

    from baselines import checks
    from baselines.contrast import collect, sentiment_contrast
    from baselines.das import contrast_das
    from baselines.fitters import FITTERS, METHODS, class_gap, orient
    from harness.manifest import build_manifest, write_json
    from harness.models import default_device, load_causal_lm, model_info, model_slug
    from harness.paths import runs_root
    from harness.vectors import SteeringVectors

    console = Console(stderr=True, soft_wrap=True)
    started = time.time()
    info = model_info(config.model)
    layers = config.layers or list(range(info.n_layers))
    for layer in layers:
        info.check_layer(layer)
    das_layers = config.das_layers if config.das_layers is not None else layers[::3]
    device = config.device or default_device()
    model, tokenizer = load_causal_lm(config.model, dtype=config.dtype, device=device)
    train, val, test = (
        sentiment_contrast(tokenizer, split, config.task).head(config.limit)
        for split in ("train", "validation", "test")
    )
    console.print(
        f"[bold]{config.task}[/]: {len(train)} train, {len(val)} validation, {len(test)} test prompts; "
        f"layers {layers}, DAS at {das_layers}"
    )
    acts = {
        name: collect(model, tokenizer, c, layers, config.batch_size)
        for name, c in (("train", train), ("validation", val), ("test", test))
    }

    directions: dict[int, dict[str, torch.Tensor]] = {}
    for li, layer in enumerate(tqdm(layers, desc="fit directions", unit="layer")):
        x = acts["train"][:, li]
        directions[layer] = {name: fit(x, train.labels, seed=config.seed) for name, fit in FITTERS.items()}
    if das_layers and config.das_steps:
        model32, _ = load_causal_lm(config.model, dtype="float32", device=device)
        for layer in tqdm(das_layers, desc="DAS", unit="layer"):
            u = contrast_das(
                model32,
                tokenizer,
                train,
                layer,
                acts["train"][:, layers.index(layer)],
                config.das_steps,
                config.das_lr,
                config.das_batch,
                config.seed,
            )
            directions[layer]["das"] = orient(u, acts["train"][:, layers.index(layer)], train.labels)
        del model32
    control = checks.random_direction(info.d_model, config.seed)

    patching: dict[str, dict[str, dict[int, float]]] = {"validation": {}, "test": {}}
    for split, contrast in (("validation", val), ("test", test)):
        clean_predictions = checks.predictions(model, tokenizer, contrast, config.batch_size)
        for li, layer in enumerate(tqdm(layers, desc=f"patching ({split})", unit="layer")):
            source = acts[split][:, li]
            for name, u in {**directions[layer], "random": control}.items():
                flip = checks.directional_patching(
                    model, tokenizer, contrast, layer, u, source, config.batch_size, clean_predictions
                )
                patching[split].setdefault(name, {})[layer] = flip
    methods = [m for m in METHODS if m != "das"]
    chosen = max(layers, key=lambda layer: sum(patching["validation"][m][layer] for m in methods))
    at = directions[chosen]
    names = [m for m in METHODS if m in at]
    cosine = [[float(at[a] @ at[b]) for b in names] for a in names]
    x_chosen = acts["train"][:, layers.index(chosen)]
    clean = checks.clean_scores(model, tokenizer, test, config.batch_size)
    ablation, addition, gaps = {}, {}, {}
    for name, u in tqdm(
        {**at, "random": control}.items(), desc=f"ablation and addition (layer {chosen})", unit="direction"
    ):
        mean_proj = checks.mean_projection(model, tokenizer, train, chosen, u)
        ablation[name] = checks.directional_ablation(model, tokenizer, test, chosen, u, mean_proj, config.batch_size)
        gaps[name] = (
            class_gap(x_chosen, train.labels, u)
            if name != "random"
            else class_gap(x_chosen, train.labels, directions[chosen]["mean_diff"])
        )
        addition[name] = checks.activation_addition(
            model, tokenizer, test, chosen, u, gaps[name], ADDITION_COEFS, config.batch_size
        )

    runs = (
        (Path(config.runs_dir) if config.runs_dir else runs_root())
        / model_slug(config.model)
        / "vector-checks"
        / config.task
    )
    artifacts = {}
    for name, u in at.items():
        artifact = SteeringVectors(
            vectors={chosen: u * gaps[name]},
            coefficient=1.0,
            positions="all",
            method=name,
            model=config.model,
            extra={"task": config.task, "unit": "class-mean gap", "gap": gaps[name]},
        )
        artifacts[name] = str(
            artifact.save(
                runs / name, kind="steering_vector", task=config.task, layer=chosen, checks_config=asdict(config)
            )
        )
    record = build_manifest(
        kind="vector_checks",
        config=asdict(config),
        layers=layers,
        das_layers=das_layers,
        chosen_layer=chosen,
        n={"train": len(train), "validation": len(val), "test": len(test), "test_pairs": len(test.pairs())},
        patching=patching,
        cosine={"methods": names, "matrix": cosine},
        clean=clean,
        ablation=ablation,
        addition={k: {str(c): v for c, v in d.items()} for k, d in addition.items()},
        class_gaps=gaps,
        artifacts=artifacts,
        wall_s=round(time.time() - started, 1),
    )
    out = config.model_results / "vectors" / config.task
    write_json(out / "checks.json", {k: v for k, v in record.items() if k != "platform"})
    _plots(record, out)
    (out / "checks.md").write_text(render(record))
    console.print(f"chosen layer {chosen}; wrote {out}/checks.md [{time.time() - started:.0f} s]")
    return out


def _plots(record: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, by_layer in record["patching"]["test"].items():
        xs = sorted(by_layer)
        style = {"linestyle": "--", "color": "grey"} if name == "random" else {"marker": "o", "markersize": 3}
        ax.plot(xs, [by_layer[x] for x in xs], label=name, **style)
    ax.axvline(record["chosen_layer"], color="black", linewidth=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("predictions flipped (test pairs)")
    ax.set_title(f"Directional patching, {record['config']['task']} ({record['config']['model']})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "patching.png", dpi=150)
    plt.close(fig)

    names, matrix = record["cosine"]["methods"], record["cosine"]["matrix"]
    fig, ax = plt.subplots(figsize=(4, 3.4))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(f"cosine similarity, layer {record['chosen_layer']}")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "cosine.png", dpi=150)
    plt.close(fig)


def render(record: dict[str, Any]) -> str:
    c, layer = record["config"], record["chosen_layer"]
    names = record["cosine"]["methods"]
    lines = [
        f"# Linear-representation checks: {c['task']} on {c['model']}",
        "",
        f"Generated by `crl-bench vectors checks` (commit {record['git_commit']}, {record['wall_s']:.0f} s). "
        f"{record['n']['train']} training prompts fit the directions; layer {layer} was chosen by "
        f"directional patching on the {record['n']['validation']} validation prompts; everything below is "
        f"on the {record['n']['test']} test prompts ({record['n']['test_pairs']} opposite-label pairs).",
        "",
        "## Directional patching",
        "",
        "Of the test prompts whose clean prediction is not already their pair partner's label, the share "
        "whose prediction flips to the partner's label when the direction's component at the adjective "
        "is patched in from the partner (a random direction should score about 0).",
        "",
        "![patching](patching.png)",
        "",
        "| layer | " + " | ".join(record["patching"]["test"]) + " |",
        "|---:|" + "---:|" * len(record["patching"]["test"]),
    ]
    for l in record["layers"]:
        cells = [
            f"{by.get(l, by.get(str(l))):.2f}" if (l in by or str(l) in by) else "—"
            for by in record["patching"]["test"].values()
        ]
        lines.append(f"| {l}{' ←' if l == layer else ''} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Cosine similarity at layer {layer}",
        "",
        "![cosine](cosine.png)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, row in zip(names, record["cosine"]["matrix"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    clean = record["clean"]
    lines += [
        "",
        f"## Directional ablation at layer {layer} (mean ablation at every non-BOS position)",
        "",
        f"Clean: accuracy {clean['accuracy']:.3f}, mean signed logit difference {clean['signed_logit_diff']:.2f} "
        "(positive = towards the correct label).",
        "",
        "| direction | accuracy | signed logit diff | mean abs logit diff |",
        "|---|---:|---:|---:|",
    ]
    for name, r in record["ablation"].items():
        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {r['signed_logit_diff']:.2f} | {r['mean_abs_logit_diff']:.2f} |"
        )
    coefs = list(next(iter(record["addition"].values())))
    lines += [
        "",
        f"## Activation addition at layer {layer}",
        "",
        'Mean logit difference (" positive" - " negative") over the test prompts when adding '
        "coef x (class-mean gap) x direction at every non-BOS position (the random row uses the "
        "mean-difference gap).",
        "",
        "| direction | " + " | ".join(coefs) + " |",
        "|---|" + "---:|" * len(coefs),
    ]
    for name, by in record["addition"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in by.values()) + " |")
    return "\n".join(lines) + "\n"
