"""`crl-bench exploration`: what CRL's exploration mechanisms do (issue 6: "show its effect").

One controller per variant (`VARIANTS`: the entropy bonus and adaptive masking, each on or
off), everything else equal, compared on collapse (the share of a step's interventions its
most chosen feature takes, `top_share` in every CRL curve), features tried and validation
score: `<out>/<task>/exploration.{md,json,png,pdf}`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rl.crl.config import CRLConfig

VARIANTS = {  # name -> (entropy_coef, mask_share); None: the config's own value
    "both": (None, None),
    "no-mask": (None, 0.0),
    "no-entropy": (0.0, None),
    "neither": (0.0, 0.0),
}
COLLAPSE = 0.9  # a step whose interventions are >= 90% one feature has collapsed onto it


@dataclass
class ExplorationConfig(CRLConfig):
    """`crl-bench exploration`'s settings: `crl-bench train crl`'s, plus the variants and where
    the comparison goes."""

    variants: list[str] | None = field(
        default=None, metadata={"help": f"which of {', '.join(VARIANTS)} (default: all)"}
    )
    out: str | None = field(
        default=None,
        metadata={"help": "where <task>/exploration.{md,json,png,pdf} go (default: results/<model>/exploration)"},
    )

    def crl(self) -> CRLConfig:
        return CRLConfig(**{f.name: getattr(self, f.name) for f in fields(CRLConfig)})


def _summary(curve: list[dict], run_dir: Any) -> dict[str, Any]:
    """What a run's curve says about its exploration."""
    steps = [r for r in curve if r.get("step")]
    shares = [(r["step"], r["top_share"]) for r in steps if r.get("top_share") is not None]
    tail = [s for _, s in shares[-5:]]
    collapsed = next((step for step, share in shares if share >= COLLAPSE), None)
    scores = [r["validation"] for r in curve if r.get("validation") is not None]
    return {
        "run_dir": str(run_dir),
        "validation_start": scores[0],
        "validation_end": scores[-1],
        "distinct_features": steps[-1]["distinct_features"] if steps else 0,
        "features_masked": sum(r.get("newly_masked") or 0 for r in steps),
        "first_collapsed_step": collapsed,
        "top_share_last5": sum(tail) / len(tail) if tail else None,
        "entropy_last5": sum(r["entropy"] for r in steps[-5:]) / max(1, len(steps[-5:])),
        "curve": [
            {k: r.get(k) for k in ("step", "top_share", "distinct_features", "entropy", "validation")} for r in curve
        ],
    }


def compare(config: CRLConfig, variants: list[str] | None = None, out: str | None = None) -> Path:
    """Train one CRL controller per exploration variant (`VARIANTS`: entropy bonus and adaptive
    masking on or off; the rest of `config` as given) and write `<out>/<task>/exploration.{md,json,png}`
    comparing collapse (the share of a step's interventions its most chosen feature takes),
    features tried and validation score. Finished variants are reused."""
    from harness.manifest import build_manifest, write_json
    from harness.paths import runs_root
    from rl.crl.trainer import train
    from rl.runs import run_dir_for, run_done

    names = list(variants or VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown exploration variants {unknown}; choose from {', '.join(VARIANTS)}")
    root = Path(config.runs_dir) if config.runs_dir else runs_root()
    found = {}
    for name in names:
        entropy, share = VARIANTS[name]
        runs = root / "exploration" / name
        variant = replace(
            config,
            runs_dir=str(runs),
            results_dir=str(runs / "results"),
            entropy_coef=config.entropy_coef if entropy is None else entropy,
            mask_share=config.mask_share if share is None else share,
        )
        run_dir = run_dir_for(variant, variant.method) if run_done(variant, variant.method) else train(variant)
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
        found[name] = {
            "entropy_coef": variant.entropy_coef,
            "mask_share": variant.mask_share,
            "spent": manifest["spent"],
            **_summary(manifest["curve"], run_dir),
        }
    directory = Path(out or config.model_results / "exploration") / config.task
    directory.mkdir(parents=True, exist_ok=True)
    write_json(
        directory / "exploration.json",
        {
            "manifest": build_manifest(kind="exploration", config=_plain(config)),
            "collapse_threshold": COLLAPSE,
            "variants": found,
        },
    )
    (directory / "exploration.md").write_text(render(config, found))
    _plot(found, directory / "exploration.png", f"CRL ({config.setting}) exploration on {config.task}, {config.model}")
    return directory


def _plain(config: CRLConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k not in ("results_dir", "runs_dir")}


def render(config: CRLConfig, found: dict[str, dict[str, Any]]) -> str:
    def fmt(value: Any, digits: int = 3) -> str:
        return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [
        f"# CRL exploration on {config.task} ({config.setting}, {config.model})",
        "",
        "Generated by `crl-bench exploration`; do not edit by hand. One controller per variant, "
        "everything else equal (same budget, seed, candidates). Top share: the share of a step's "
        f"interventions its most chosen feature took (1.0 = every intervention the same feature); "
        f"collapsed at: the first step where it reached {COLLAPSE}. With one seed, variants draw the same "
        "actions until a setting they differ in first acts, so their curves coincide until then.",
        "",
        "| variant | entropy bonus | mask share | features tried | features masked | collapsed at step | "
        "top share, last 5 steps | entropy, last 5 steps | validation start → end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in found.items():
        lines.append(
            f"| {name} | {v['entropy_coef']} | {v['mask_share']} | {v['distinct_features']} | "
            f"{v['features_masked']} | {fmt(v['first_collapsed_step']) or 'never'} | "
            f"{fmt(v['top_share_last5'], 2)} | {fmt(v['entropy_last5'], 2)} | "
            f"{fmt(v['validation_start'])} → {fmt(v['validation_end'])} |"
        )
    lines += ["", "Runs: " + "; ".join(f"{name}: `{v['run_dir']}`" for name, v in found.items()), ""]
    return "\n".join(lines)


def _plot(found: dict[str, dict[str, Any]], path: Path, title: str) -> list[Path]:
    from crl_bench.plots import _pyplot, _save

    plt = _pyplot()
    fig, (share_ax, tried_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    # same seed: variants draw the same actions until a setting they differ in first acts, so
    # their lines coincide up to there; distinct dashes and widths keep each one visible
    styles = [("-", 2.4), ("--", 1.8), ("-.", 1.4), (":", 1.6)]
    for (name, v), (dash, width) in zip(found.items(), styles * len(found)):
        curve = [r for r in v["curve"] if r.get("step")]
        share_ax.plot(
            [r["step"] for r in curve if r["top_share"] is not None],
            [r["top_share"] for r in curve if r["top_share"] is not None],
            label=name,
            linestyle=dash,
            linewidth=width,
        )
        tried_ax.plot(
            [r["step"] for r in curve],
            [r["distinct_features"] for r in curve],
            label=name,
            linestyle=dash,
            linewidth=width,
        )
    share_ax.axhline(COLLAPSE, color="grey", linestyle=":", linewidth=0.8)
    share_ax.set(xlabel="optimisation step", ylabel="top feature's share of interventions", ylim=(0, 1.02))
    tried_ax.set(xlabel="optimisation step", ylabel="distinct features tried (cumulative)")
    share_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
