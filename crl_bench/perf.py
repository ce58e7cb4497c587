"""`crl-bench perf`: evaluation and training speed and memory, each against a baseline
measured in the same run.

- Evaluation: lm-eval's own `hf` model against our wrappers, on the same requests. Each
  variant runs in a fresh subprocess (so peak memory is its own) on the same task items
  through `lm_eval.simple_evaluate`; we report evaluation wall time, peak resident memory,
  the ratios against `hf`, and the largest log-likelihood difference from `hf` (the
  unsteered wrapper must agree with it). Written to results/perf.{json,md}.
- Training (`--train-steps`, 0 to skip): `crl_bench.perf_training`, written to
  results/perf_training.{json,md}.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.config import GENERATION_BATCH_SIZE
from harness.manifest import build_manifest, write_json
from harness.models import DEFAULT_MODEL, cpu_dtype, default_device

# lm-eval's `hf` (the baseline of every ratio); ours with each distinct context run once (the default);
# ours with context and continuation in one pass per request (`shared_prefix=False`); a steered one
VARIANTS = ("hf", "hf_lean", "hf_lean_one_pass", "vector_steered")


@dataclass
class PerfConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model to measure"})
    tasks: str = field(
        default="arc_easy:0:0,arc_challenge:25:300,boolq:0:1000",
        metadata={
            "help": "multiple-choice tasks whose requests are timed, each task:few-shot examples:items "
            "(0 items: the whole test split)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "batch size for every variant"})
    layer: int | None = field(default=None, metadata={"help": "steered layer (default: middle)"})
    results_dir: str = field(default="results", metadata={"help": "where perf.json / perf.md go"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)"})
    train_task: str = field(default="arith_mc", metadata={"help": "task of the training comparison"})
    train_steps: int = field(default=4, metadata={"help": "optimisation steps per trained method (0: skip training)"})
    train_prompts_per_step: int = field(default=4, metadata={"help": "prompts per step of the training comparison"})
    train_samples: int = field(default=8, metadata={"help": "samples per prompt of the training comparison"})
    train_generation_task: str = field(
        default="arith_gen",
        metadata={"help": "generation task of a second training comparison: RLVR and CRL setting 3 (none: skip it)"},
    )
    generation_items: int = field(
        default=128,
        metadata={
            "help": "items of the generation task timed unsteered at --batch-size and at --generation-batch-size "
            "rows per generate call, and under the trained setting-3 controller (0: skip)"
        },
    )
    generation_batch_size: int = field(
        default=GENERATION_BATCH_SIZE,
        metadata={"help": "rows per generate call of the generation timings (bench's default), against --batch-size"},
    )
    train_max_new_tokens: int = field(
        default=32,
        metadata={"help": "new tokens per rollout of the generation comparison (the laptop and cpu budgets')"},
    )
    sae: str = field(default="auto", metadata={"help": "SAE for CRL's training measurement"})
    sae_corpus: str = field(
        default="builtin",
        metadata={"help": "corpus of an auto SAE (as bench's --sae-corpus, so bench's SAE is reused)"},
    )

    def __post_init__(self) -> None:
        self.eval_tasks()  # a malformed --tasks fails before any measurement

    def eval_tasks(self) -> list[tuple[str, int, int | None]]:
        """(task, few-shot examples, items or None for all) per entry of `tasks`."""
        parsed = []
        for entry in filter(None, self.tasks.split(",")):
            name, shots, items = (entry.split(":") + ["0", "0"])[:3]
            if not (shots.isdigit() and items.isdigit()):
                raise ValueError(f"--tasks entries are task:few-shot:items, e.g. arc_challenge:25:300; got {entry!r}")
            parsed.append((name, int(shots), int(items) or None))
        return parsed

    def training_tasks(self) -> dict[str, str]:
        """The training comparison's task per CRL setting of `TRAINED` (no generation task: 'none')."""
        tasks = {"one-token": self.train_task, "generation": self.train_generation_task}
        return {setting: task for setting, task in tasks.items() if task != "none"}


def _processor(config: PerfConfig) -> str:
    """The processor the evaluations ran on, named in the tables (ratios differ between them)."""
    from harness.manifest import processor

    found = processor()
    on_gpu = str(config.device or default_device()).startswith("cuda")
    return str(found.get("gpu") if on_gpu else found.get("cpu") or "unknown processor")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measurements_dir(config: PerfConfig) -> Path:
    """Where this perf run keeps each measurement as it finishes: under the cache, by its settings,
    the code's commit and the processor, so that a run stopped midway (killed, out of memory, out
    of time) resumes where it stopped instead of measuring again, and no other code's or
    machine's measurement is ever reused."""
    from harness.manifest import fingerprint, git_commit, processor
    from harness.paths import cache_root

    settings = {k: v for k, v in asdict(config).items() if k != "results_dir"}
    key = fingerprint({"config": settings, "commit": git_commit(), "processor": processor()})
    folder = cache_root() / "perf" / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def measure(out: Path, cmd: list[str], console: Any, after: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Run one measurement in its own process (`cmd`, then the file it writes, then `after`),
    unless this run's folder already holds it (`out`). Returns its record, or None when the
    process was killed by a signal (the kernel's out-of-memory killer sends SIGKILL). Any other
    failure stops the run with the process's status; the measurements finished so far stay on
    disk for the rerun."""
    killed = out.with_suffix(".killed")
    if out.exists() or killed.exists():
        console.print(f"perf: {out.stem} measured earlier in this run's folder; reused")
        return json.loads(out.read_text()) if out.exists() else None
    done = subprocess.run([*cmd, str(out) + ".part", *after])
    if done.returncode < 0:
        killed.write_text(f"killed by signal {-done.returncode}\n")
        return None
    if done.returncode != 0:
        raise RuntimeError(
            f"perf measurement {out.stem} failed (exit status {done.returncode}; its output is above). The "
            f"measurements finished so far are kept in {out.parent}: rerun the same command to go on from there"
        )
    Path(str(out) + ".part").replace(out)
    return json.loads(out.read_text())


def worker(
    variant: str,
    config: PerfConfig,
    steer_dir: str,
    task: str,
    shots: int | None,
    items: int | None,
    rows: int | None = None,
) -> dict[str, Any]:
    """Runs inside the subprocess: load, evaluate one task, measure. `steer_dir` is the steering
    vector (`vector_steered`) or the CRL run directory (`crl_steered`); `shots` None: the task's own;
    `rows`: rows per generate call of our wrappers (None: the batch size)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from harness.lm_models import LeanHFLM, VectorSteeredLM
    from harness.models import resolve_model
    from harness.tasks import task_manager

    device = config.device or default_device()
    common = {
        "batch_size": config.batch_size,
        "device": device,
        "dtype": cpu_dtype() if str(device).startswith("cpu") else "auto",
    }
    started = time.time()
    if variant == "hf":
        lm = HFLM(pretrained=resolve_model(config.model), **common)
    elif variant == "hf_lean":
        lm = LeanHFLM(pretrained=config.model, generation_batch_size=rows, **common)
    elif variant == "hf_lean_one_pass":
        lm = LeanHFLM(pretrained=config.model, shared_prefix=False, **common)
    elif variant == "crl_steered":
        from rl.crl.lm import CRLSteeredLM

        lm = CRLSteeredLM(pretrained=config.model, controller=steer_dir, generation_batch_size=rows, **common)
    else:
        lm = VectorSteeredLM(pretrained=config.model, steer=steer_dir, **common)
    load_s, rss_loaded = time.time() - started, _rss_mb()
    started = time.time()
    output = simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=task_manager(names=[task]),
        num_fewshot=shots,
        limit=items,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        fewshot_random_seed=0,
    )
    eval_s = time.time() - started
    samples = next(iter(output["samples"].values()))
    loglikelihoods = {f"{s['doc_id']}:{i}": r[0][0] for s in samples for i, r in enumerate(s["resps"])}
    texts = [value for value in loglikelihoods.values() if isinstance(value, str)]  # generation: completions
    return {
        "generated_tokens": sum(len(lm.tok_encode(text, add_special_tokens=False)) for text in texts),
        "variant": variant,
        "load_s": load_s,
        "eval_s": eval_s,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": _rss_mb(),
        "n_requests": len(loglikelihoods),
        "loglikelihoods": loglikelihoods,
    }


def run(config: PerfConfig) -> Path:
    import torch
    from rich.console import Console
    from rich.progress import track

    from harness.models import model_info
    from harness.vectors import SteeringVectors

    console = Console(stderr=True, soft_wrap=True)  # status lines stay whole (greppable)
    info = model_info(config.model)
    layer = info.check_layer(config.layer if config.layer is not None else info.n_layers // 2)
    measurements: dict[tuple[str, str], dict] = {}
    folder = measurements_dir(config)
    console.print(f"perf: measurements kept in {folder} as they finish (a rerun resumes there)")
    direction = torch.nn.functional.normalize(
        torch.randn(info.d_model, generator=torch.Generator().manual_seed(0)), dim=0
    )
    # a few percent of the residual norm (~3,000 per token on Gemma 3 270M): a real perturbation
    SteeringVectors({layer: direction}, coefficient=100.0, method="random").save(folder / "steer")
    jobs = [(t, v) for t in config.eval_tasks() for v in VARIANTS]
    for (task, shots, items), variant in track(jobs, description="perf variants", console=console):
        spec = json.dumps([task, shots, items])
        batch = config.batch_size
        while True:  # a variant the machine cannot hold at this batch size is measured at half of it
            at_batch = {**asdict(config), "batch_size": batch}
            cmd = [sys.executable, "-m", "crl_bench.perf", variant, json.dumps(at_batch), str(folder / "steer")]
            found = measure(folder / f"{task}-{variant}-batch{batch}.json", cmd, console, after=(spec,))
            if found is not None or batch == 1:
                break
            console.print(
                f"perf: {variant} on {task} was killed at batch size {batch} (out of memory); trying {batch // 2}"
            )
            batch //= 2
        if found is None:
            raise RuntimeError(f"perf: {variant} on {task} was killed even at batch size 1; pass fewer --tasks items")
        measurements[task, variant] = {**found, "shots": shots, "items": items, "batch_size": batch}
    rows = []
    for (task, variant), m in measurements.items():
        reference = measurements[task, "hf"]
        diffs = [abs(m["loglikelihoods"][k] - reference["loglikelihoods"][k]) for k in reference["loglikelihoods"]]
        rows.append(
            {
                "task": task,
                "num_fewshot": m["shots"],
                "items": m["items"] or "all",
                "variant": variant,
                "batch_size": m["batch_size"],
                "eval_s": m["eval_s"],
                "time_ratio_vs_hf": m["eval_s"] / reference["eval_s"],
                "peak_rss_mb": m["peak_rss_mb"],
                "peak_rss_ratio_vs_hf": m["peak_rss_mb"] / reference["peak_rss_mb"],
                "eval_rss_growth_mb": m["peak_rss_mb"] - m["rss_after_load_mb"],
                "load_s": m["load_s"],
                "n_requests": m["n_requests"],
                "max_abs_loglik_diff_vs_hf": max(diffs),
            }
        )
    results_dir = Path(config.results_dir)
    path = results_dir / "perf.json"
    write_json(path, {"manifest": build_manifest(perf_config=asdict(config), steered_layer=layer), "rows": rows})
    lines = [
        f"# Evaluation speed and memory: {config.model}",
        "",
        f"Generated by `crl-bench perf` from perf.json; per task, the same requests for every variant, batch size "
        f"{config.batch_size} (a variant killed for lack of memory is measured at half of it, and its row says so), "
        f"{_processor(config)}, {cpu_dtype()}. `hf_lean` runs each distinct context once and "
        "serves its continuations from the KV cache (the default of every wrapper); `hf_lean_one_pass` runs "
        "context and continuation per request (`shared_prefix=False`). `vector_steered` steers layer "
        f"{layer} with a random direction (its log-likelihoods differ from hf by design).",
        "",
        "| task | shots | items | requests | variant | batch | eval s | time vs hf | speed-up | peak RSS MB "
        "| RSS vs hf | RSS growth during eval MB | max abs Δ loglik vs hf |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['num_fewshot']} | {r['items']} | {r['n_requests']} | {r['variant']} | "
            f"{_batch_cell(r['batch_size'], config.batch_size)} | {r['eval_s']:.1f} | "
            f"{r['time_ratio_vs_hf']:.2f} | {1 / r['time_ratio_vs_hf']:.2f}x | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_ratio_vs_hf']:.2f} | {r['eval_rss_growth_mb']:.0f} | {r['max_abs_loglik_diff_vs_hf']:.2e} |"
        )
    (results_dir / "perf.md").write_text("\n".join(lines) + "\n")
    console.print(f"perf: {path} (+ perf.md)")
    return path


def _batch_cell(used: int, asked: int) -> str:
    return str(used) if used == asked else f"{used} ({asked}: out of memory)"


if __name__ == "__main__":  # subprocess entry: variant, config json, steer dir (or runs dir), output file
    _variant, _config, _steer, _out = sys.argv[1:5]
    write_json(Path(_out), worker(_variant, PerfConfig(**json.loads(_config)), _steer, *json.loads(sys.argv[5])))
