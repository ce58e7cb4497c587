"""The `crl-bench` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.config import add_arguments, from_args


def _bench(args: argparse.Namespace) -> None:
    from crl_bench import bench
    from crl_bench.bench_config import BenchConfig

    bench.run(from_args(BenchConfig, args))


def _perf(args: argparse.Namespace) -> None:
    from rich.console import Console

    from crl_bench import perf, perf_training

    config = from_args(perf.PerfConfig, args)
    perf.run(config)  # the evaluation comparison, then the training comparison
    if config.train_steps > 0:
        perf_training.run_training(config, Console(stderr=True, soft_wrap=True))


def _model_info(args: argparse.Namespace) -> None:
    import json

    from harness.models import model_info

    info = model_info(args.model)
    print(json.dumps({**info.__dict__, "hook_points": info.hook_points}, indent=2))


def _sae_train(args: argparse.Namespace) -> None:
    from harness.sae.quality import SAEEvalConfig
    from harness.sae.train import SAETrainConfig, train_sae

    config = from_args(SAETrainConfig, args)
    directory = train_sae(config)
    print(f"SAE: {directory}")
    _sae_assess(
        SAEEvalConfig(
            model=config.model,
            sae=str(directory),
            layer=config.layer,
            device=config.device,
            dtype=config.dtype,
            results_dir=config.results_dir,
        )
    )


def _sae_eval(args: argparse.Namespace) -> None:
    from harness.sae.quality import SAEEvalConfig

    _sae_assess(from_args(SAEEvalConfig, args))


def _sae_assess(config) -> None:
    import json

    from harness.models import default_device, model_info
    from harness.sae import load_sae
    from harness.sae.assess import assess

    info = model_info(config.model)
    device = config.device or default_device()
    # an auto SAE that has to be trained trains on the corpus it will be measured on
    train_options = {"corpus": config.eval_corpus} if config.eval_corpus else {}
    loaded = load_sae(config.sae, info, config.layer, dtype=config.sae_dtype, device=device, **train_options)
    record = assess(loaded, config)
    print(json.dumps({"sae": loaded.name, "layer": loaded.layer, **record["metrics"]}, indent=2))
    print(f"quality and feature cards: {loaded.directory}; table: {config.results_dir}/saes/README.md")


def _sae_card(args: argparse.Namespace) -> None:
    from harness.models import model_info
    from harness.sae import load_sae
    from harness.sae.cards import read_cards, render_card

    loaded = load_sae(args.sae, model_info(args.model), args.layer)
    cards = read_cards(loaded.directory)["cards"]
    for feature in args.feature:
        if not 0 <= feature < len(cards):
            raise ValueError(
                f"feature {feature} does not exist: the SAE has {len(cards)} features (0..{len(cards) - 1})"
            )
        print(render_card(cards[feature], contexts=8), end="\n\n")


def _vector_checks(args: argparse.Namespace) -> None:
    from baselines import sentiment

    sentiment.run(from_args(sentiment.ChecksConfig, args))


def _train_vectors(args: argparse.Namespace) -> None:
    from baselines import train

    record = train.run(from_args(train.VectorTrainConfig, args))
    for method, path in record["artifacts"].items():
        print(f"{method}: {path}")


def _train_rlvr(args: argparse.Namespace) -> None:
    from rl.rlvr import trainer as rlvr
    from rl.rlvr.config import RLVRConfig

    run_dir = rlvr.train(from_args(RLVRConfig, args))
    if os.environ.get("RANK", "0") == "0":  # once, under `accelerate launch` / `torchrun`
        print(f"RLVR adapter: {run_dir}")


def _train_corrsteer(args: argparse.Namespace) -> None:
    from baselines.corrsteer import CorrSteerConfig, train

    print(f"CorrSteer vector: {train(from_args(CorrSteerConfig, args))}")


def _train_rl_vector(args: argparse.Namespace) -> None:
    from rl.vector import trainer as vector
    from rl.vector.config import RLVectorConfig

    run_dir = vector.train(from_args(RLVectorConfig, args))
    if os.environ.get("RANK", "0") == "0":
        print(f"RL steering vector: {run_dir}")


def _train_crl_lm(args: argparse.Namespace) -> None:
    from rl.crl.through_lm import trainer as crl_lm
    from rl.crl.through_lm.config import CRLThroughLMConfig

    run_dir = crl_lm.train(from_args(CRLThroughLMConfig, args))
    if os.environ.get("RANK", "0") == "0":
        print(f"CRL controller (through the LM): {run_dir}")


def _train_csft(args: argparse.Namespace) -> None:
    from rl.csft import trainer as csft
    from rl.csft.config import CSFTConfig

    print(f"C-SFT controller: {csft.train(from_args(CSFTConfig, args))}")


def _csft_sweep(args: argparse.Namespace) -> None:
    from rl.csft.sweep import CSFTSweepConfig, sweep

    print(f"C-SFT sweep: {sweep(from_args(CSFTSweepConfig, args))}")


def _train_crl(args: argparse.Namespace) -> None:
    from rl.crl import trainer as crl
    from rl.crl.config import CRLConfig

    print(f"CRL controller: {crl.train(from_args(CRLConfig, args))}")


def _exploration(args: argparse.Namespace) -> None:
    from crl_bench.analyses.exploration import ExplorationConfig, compare

    config = from_args(ExplorationConfig, args)
    print(f"exploration: {compare(config.crl(), config.variants, config.out)}")


def _ceiling(args: argparse.Namespace) -> None:
    from crl_bench.analyses.ceiling import CeilingConfig, run

    print(f"ceiling: {run(from_args(CeilingConfig, args))}")


def _interactions(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from crl_bench.analyses.interactions import analyse, render
    from harness.models import load_causal_lm
    from harness.tasks import load_task

    run_dir = Path(args.controller)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir} is not a CRL run directory (no config.json); pass the directory `crl-bench train crl` printed"
        )
    config = json.loads((run_dir / "config.json").read_text())
    model, tokenizer = load_causal_lm(args.model or config["model"], dtype=args.dtype, device=args.device)
    task = args.task or config["task"]
    found = analyse(
        run_dir, config["setting"], load_task(task), model, tokenizer, args.seed, items=args.items, mode=args.mode
    )
    label = f"crl:{config['setting']}" + (" (sampled)" if args.mode == "sample" else "")
    print(render({task: {label: found}}))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"controller": str(run_dir), "task": task, "label": label, **found}, indent=1)
        )


def _report(args: argparse.Namespace) -> None:
    from crl_bench.analyses.runner import rerender
    from crl_bench.leaderboard import rebuild
    from crl_bench.plots import all_figures, board_models
    from crl_bench.report import build
    from harness.models import model_results

    rebuild(args.results_dir)  # rows from the stored per-item scores, with this code's statistics and marks
    for model in board_models(Path(args.results_dir)):
        rerender(model_results(args.results_dir, model))
    all_figures(args.results_dir)
    print(f"regenerated tables and figures in {args.results_dir}; report: {build(args.results_dir)}")


def _labelled_dir(value: str) -> tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected LABEL=DIR, e.g. rlvr-long=.cache/runs/.../eval/<settings>"
        )
    return label, Path(path)


def _breakdown(args: argparse.Namespace) -> None:
    from crl_bench.analyses import breakdown

    print(
        breakdown.run(
            args.task, args.results_dir, by=args.by, runs=args.run, leaderboard=args.leaderboard, model=args.model
        )
    )


def _tasks(args: argparse.Namespace) -> None:
    from harness.task_paths import data_dir, task_paths
    from harness.tasks import GENERATED_TASKS, LOCAL_TASKS

    print("task folders:", *task_paths(), sep="\n  ")
    print("generated:", ", ".join(GENERATED_TASKS))
    source = f"local copies in {data_dir()}" if data_dir() else "lm-eval built-ins (CRL_BENCH_DATA unset)"
    print(f"{', '.join(LOCAL_TASKS)}, arc: {source}")


def _command(group, name: str, help_text: str, config_cls: type, func) -> None:
    """A subcommand whose flags come from a config dataclass (see harness.config)."""
    parser = group.add_parser(name, help=help_text)
    add_arguments(parser, config_cls)
    parser.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from crl_bench.bench_config import BenchConfig
    from crl_bench.perf import PerfConfig

    parser = argparse.ArgumentParser(prog="crl-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _command(commands, "bench", "evaluate every method on every task; write results/", BenchConfig, _bench)
    _command(commands, "perf", "time and memory of lm-eval's hf vs our wrappers", PerfConfig, _perf)
    info = commands.add_parser("model-info", help="layers, d_model, hook points of a model")
    info.add_argument("--model", default="gemma-3-270m")
    info.set_defaults(func=_model_info)
    report = commands.add_parser("report", help="regenerate tables, figures and report.html from the results files")
    report.add_argument("--results-dir", default="results")
    report.set_defaults(func=_report)
    sae = commands.add_parser("sae", help="train, evaluate and describe SAEs").add_subparsers(
        dest="sae_command", required=True
    )
    from harness.sae.quality import SAEEvalConfig
    from harness.sae.train import SAETrainConfig

    _command(sae, "train", "train an SAE with sae-lens on a model layer, then measure it", SAETrainConfig, _sae_train)
    _command(
        sae,
        "eval",
        "quality record and feature cards for any SAE (--sae release/id, dir, auto)",
        SAEEvalConfig,
        _sae_eval,
    )
    card = sae.add_parser("card", help="print feature cards (after `sae eval`)")
    card.add_argument("--model", default="gemma-3-270m")
    card.add_argument("--sae", default="auto")
    card.add_argument("--layer", type=int, default=None)
    card.add_argument(
        "--feature",
        type=lambda s: [int(x) for x in s.split(",")],
        required=True,
        help="feature indices, comma-separated",
    )
    card.set_defaults(func=_sae_card)
    from baselines.sentiment import ChecksConfig

    vectors = commands.add_parser("vectors", help="steering-vector baselines").add_subparsers(
        dest="vectors_command", required=True
    )
    _command(
        vectors,
        "checks",
        "Tigges et al.'s checks on toy_sentiment: patching, cosines, ablation, addition",
        ChecksConfig,
        _vector_checks,
    )
    from baselines.train import VectorTrainConfig

    train = commands.add_parser("train", help="train a method on a task").add_subparsers(
        dest="train_command", required=True
    )
    _command(
        train,
        "vectors",
        "fit the five steering directions; choose layer and coefficient on validation",
        VectorTrainConfig,
        _train_vectors,
    )
    from baselines.corrsteer import CorrSteerConfig

    _command(
        train,
        "corrsteer",
        "CorrSteer: rank SAE features by their correlation with correctness, validate each by intervention, "
        "and save their sum as a steering vector (evaluate it with vector_steered)",
        CorrSteerConfig,
        _train_corrsteer,
    )
    from rl.rlvr.config import RLVRConfig

    _command(
        train,
        "rlvr",
        "train a LoRA adapter with TRL's GRPO on the task's reward (the RLVR reference)",
        RLVRConfig,
        _train_rlvr,
    )
    from rl.vector.config import RLVectorConfig

    _command(
        train,
        "rl-vector",
        "train one steering vector per layer with the same GRPO trainer as RLVR, through the frozen LM "
        "(evaluate it with vector_steered)",
        RLVectorConfig,
        _train_rl_vector,
    )
    from rl.crl.config import CRLConfig

    _command(
        train,
        "crl",
        "train a CRL controller (SAE features per token, LLM frozen) with PPO or GRPO",
        CRLConfig,
        _train_crl,
    )
    from rl.crl.through_lm.config import CRLThroughLMConfig

    _command(
        train,
        "crl-lm",
        "train a feature controller (a few SAE features per token, LLM frozen) with the same GRPO trainer as "
        "RLVR, its gradients through the frozen LM",
        CRLThroughLMConfig,
        _train_crl_lm,
    )
    from rl.csft.config import CSFTConfig

    _command(
        train,
        "csft",
        "C-SFT: distil a trained model (an RLVR run) into a feature controller, the LLM frozen: KL from the "
        "teacher's next-token distribution at every token of its own completions (evaluate it with crl_steered)",
        CSFTConfig,
        _train_csft,
    )
    from rl.csft.sweep import CSFTSweepConfig

    _command(
        commands,
        "csft-sweep",
        "C-SFT per (layer, k features per token) from one teacher: which layer carries its change best, "
        "with how many features (results/<model>/csft/<task>/sweep.md)",
        CSFTSweepConfig,
        _csft_sweep,
    )
    from crl_bench.analyses.exploration import ExplorationConfig

    _command(
        commands,
        "exploration",
        "train one CRL controller per exploration variant (entropy bonus and "
        "adaptive masking on/off) and compare how fast each collapses onto one feature",
        ExplorationConfig,
        _exploration,
    )
    from crl_bench.analyses.ceiling import CeilingConfig

    _command(
        commands,
        "ceiling",
        "how far one SAE feature per token could take a generation task with an oracle "
        "that reads the gold solution (an upper bound for CRL setting 3; crl_bench.analyses.ceiling)",
        CeilingConfig,
        _ceiling,
    )
    inter = commands.add_parser(
        "interactions",
        help="how a CRL controller's choices depend on each other across "
        "layers and tokens (ablation; crl_bench.analyses.interactions)",
    )
    inter.add_argument("--controller", required=True, help="a CRL run directory")
    inter.add_argument("--task", default=None, help="default: the task it was trained on")
    inter.add_argument("--model", default=None, help="default: the model it was trained on")
    inter.add_argument(
        "--mode",
        choices=("greedy", "sample"),
        default="greedy",
        help="greedy: as evaluated; sample: as trained, with common random numbers",
    )
    inter.add_argument("--items", type=int, default=32, help="validation items")
    inter.add_argument("--seed", type=int, default=0)
    inter.add_argument("--dtype", default="auto")
    inter.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    inter.add_argument("--out", default=None, help="also write the analysis as JSON here")
    inter.set_defaults(func=_interactions)
    parts = commands.add_parser(
        "breakdown",
        help="accuracy per group of items (and per solution step) for each "
        "method on a task, against base (crl_bench.analyses.breakdown)",
    )
    parts.add_argument("--task", required=True)
    parts.add_argument(
        "--by", default=None, help="document field to group by (default: the task's own, e.g. arith_gen's problem kind)"
    )
    parts.add_argument(
        "--run",
        action="append",
        default=[],
        type=_labelled_dir,
        metavar="LABEL=DIR",
        help="also break down this run (a directory holding samples.jsonl); repeatable. With "
        "base=DIR among them, only the named runs",
    )
    parts.add_argument("--leaderboard", default=None, help="default: <results-dir>/leaderboard.json")
    parts.add_argument("--model", default=None, help="the leaderboard's model, when it has several")
    parts.add_argument("--results-dir", default="results")
    parts.set_defaults(func=_breakdown)
    tasks = commands.add_parser("tasks", help="where tasks come from")
    tasks.set_defaults(func=_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.paths import use_cache_for_hf

    use_cache_for_hf()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, RuntimeError) as err:  # expected failures: one line, exit 2 (a traceback is a bug)
        print(f"crl-bench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
