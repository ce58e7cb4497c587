"""`crl-bench csft-sweep`: which layer carries the teacher's change best, and how many SAE
features per token it takes. One C-SFT run per (layer, k), each on its layer's SAE (`--sae auto`
trains one per layer; a `{layer}` pattern names one), the same teacher and budget; the share of
KL(teacher || base) each closes on held-out prompts and its validation score, in
`results/<model>/csft/<task>/sweep.{md,json,png}`. Finished runs are reused, killed ones resume;
the table keeps the rows of earlier sweeps with the same teacher and settings (`--layers 9 --ks 1`
then `--layers 4,13 --ks 4` fill one table), and `--sae auto` trains the missing SAEs of all
the sweep's layers together, from one forward pass (`harness.sae.provision.train_auto_saes`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rl.csft.config import CSFTConfig


@dataclass
class CSFTSweepConfig(CSFTConfig):
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "layers to distil into, comma-separated (default: a quarter, half and three quarters deep)"},
    )
    ks: list[int] = field(
        default_factory=lambda: [1, 4, 16], metadata={"help": "features per token to try, comma-separated"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            self.layers = [int(x) for x in self.layers.split(",") if x.strip()]
        if isinstance(self.ks, str):
            self.ks = [int(x) for x in self.ks.split(",") if x.strip()]
        super().__post_init__()
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"--ks must be positive numbers of features, got {self.ks}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"--layers must name layers 0 and up, got {self.layers}")

    def runs(self) -> list[tuple[str, CSFTConfig]]:
        """(run name, C-SFT settings) per (layer, k)."""
        from harness.models import model_info

        depth = model_info(self.model).n_layers
        layers = self.layers or sorted({round(f * (depth - 1)) for f in (0.25, 0.5, 0.75)})
        for layer in layers:
            if layer >= depth:
                raise ValueError(f"--layers: the model has {depth} decoder layers (0..{depth - 1}), not {layer}")
        own = {f.name: getattr(self, f.name) for f in fields(CSFTConfig)}
        return [
            (f"csft-sweep/layer{layer}-k{k}", CSFTConfig(**{**own, "layer": layer, "k": k}))
            for layer in layers
            for k in self.ks
        ]


def sweep(config: CSFTSweepConfig) -> Path:
    """Train (or reuse) every run of the sweep; write its table and figure; returns the table."""
    import json

    from harness.manifest import build_manifest, fingerprint, write_json, write_text
    from harness.models import model_info
    from harness.sae.provision import train_auto_saes
    from rl.csft.trainer import train

    config.check_teacher()
    runs = config.runs()
    if config.sae == "auto":
        train_auto_saes(model_info(config.model), [run.layer for _, run in runs], corpus=config.sae_corpus)
    entries = []
    for name, run in runs:
        run_dir = train(run, name)  # a finished run is reused
        record = json.loads((run_dir / "config.json").read_text())
        shared = fingerprint({k: v for k, v in run.identity().items() if k not in ("layer", "k")})
        entries.append({"layer": run.layer, "k": run.k, **record["fidelity"], "run_dir": str(run_dir), "sweep": shared})
    folder = config.model_results / "csft" / config.task
    entries = _merge(folder / "sweep.json", entries)
    write_json(folder / "sweep.json", build_manifest(kind="csft-sweep", config=config.__dict__, rows=entries))
    write_text(folder / "sweep.md", _render(config, entries))
    _plot(config, entries, folder / "sweep")
    return folder / "sweep.md"


def _merge(path: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This sweep's rows, and an earlier sweep's rows of other (layer, k) with the same teacher
    and settings (the same `sweep` fingerprint), by layer then k. Rows of another teacher or
    settings are left out of the table, and said so (their runs stay in their directories)."""
    import json

    from rich.console import Console

    if not path.exists():
        return sorted(entries, key=lambda e: (e["layer"], e["k"]))
    ours = {(e["layer"], e["k"]) for e in entries}
    earlier = [e for e in json.loads(path.read_text()).get("rows", []) if (e["layer"], e["k"]) not in ours]
    kept = [e for e in earlier if e.get("sweep") == entries[0]["sweep"]]
    if len(kept) < len(earlier):
        Console(stderr=True).print(
            f"csft-sweep: {len(earlier) - len(kept)} row(s) of {path} came from another teacher or other settings; "
            "the table now holds this sweep's settings only"
        )
    return sorted(entries + kept, key=lambda e: (e["layer"], e["k"]))


def _render(config: CSFTSweepConfig, entries: list[dict[str, Any]]) -> str:
    lines = [
        f"# C-SFT sweep on {config.task}: which layer carries the teacher's change, with how many features",
        "",
        f"Generated by `crl-bench csft-sweep` (`rl.csft.sweep`): teacher {config.teacher}, the same budget per run. "
        "KL per completion token on held-out (validation) prompts; closed = 1 − KL(teacher‖steered) / "
        "KL(teacher‖base); validation: the task's score with the controller.",
        "",
        "| layer | k | KL(teacher‖base) | KL(teacher‖steered) | KL closed | validation | base | teacher |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        closed = "" if e["kl_closed"] is None else f"{e['kl_closed']:.1%}"
        lines.append(
            f"| {e['layer']} | {e['k']} | {e['kl_base']:.4f} | {e['kl_steered']:.4f} | {closed} | "
            f"{e['validation']:.3f} | {e['base_validation']:.3f} | {e['teacher_validation']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(config: CSFTSweepConfig, entries: list[dict[str, Any]], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    for layer in sorted({e["layer"] for e in entries}):
        mine = sorted((e for e in entries if e["layer"] == layer), key=lambda e: e["k"])
        ks = [e["k"] for e in mine]
        left.plot(ks, [e["kl_closed"] or 0 for e in mine], marker="o", label=f"layer {layer}")
        right.plot(ks, [e["validation"] for e in mine], marker="o", label=f"layer {layer}")
    right.axhline(entries[0]["teacher_validation"], color="black", linestyle="--", linewidth=1, label="teacher")
    right.axhline(entries[0]["base_validation"], color="gray", linestyle=":", linewidth=1, label="base")
    for ax, label in ((left, "share of KL(teacher‖base) closed"), (right, "validation score")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("features per token (k)")
        ax.set_ylabel(label)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(f"C-SFT on {config.task}, {config.model}", fontsize=10)
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix), dpi=150)
    plt.close(fig)
