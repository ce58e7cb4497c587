"""The `crl-bench` command line."""

from __future__ import annotations

import argparse
import sys

from harness.config import add_arguments, from_args


def _bench(args: argparse.Namespace) -> None:
    from harness import bench

    bench.run(from_args(bench.BenchConfig, args))


def _perf(args: argparse.Namespace) -> None:
    from harness import perf

    perf.run(from_args(perf.PerfConfig, args))


def _model_info(args: argparse.Namespace) -> None:
    import json

    from harness.models import model_info

    info = model_info(args.model)
    print(json.dumps({**info.__dict__, "hook_points": info.hook_points}, indent=2))


def _report(args: argparse.Namespace) -> None:
    from harness.leaderboard import render

    render(args.results_dir)
    print(f"regenerated tables in {args.results_dir}")


def _tasks(args: argparse.Namespace) -> None:
    from harness.tasks import GENERATED_TASKS, LOCAL_TASKS, data_dir, task_paths

    print("task folders:", *task_paths(), sep="\n  ")
    print("generated:", ", ".join(GENERATED_TASKS))
    source = f"local copies in {data_dir()}" if data_dir() else "lm-eval built-ins (CRL_BENCH_DATA unset)"
    print(f"{', '.join(LOCAL_TASKS)}, arc: {source}")


def build_parser() -> argparse.ArgumentParser:
    from harness.bench import BenchConfig
    from harness.perf import PerfConfig

    parser = argparse.ArgumentParser(prog="crl-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="evaluate every method on every task; write results/")
    add_arguments(bench, BenchConfig)
    bench.set_defaults(func=_bench)
    perf = commands.add_parser("perf", help="time and memory of lm-eval's hf vs our wrappers")
    add_arguments(perf, PerfConfig)
    perf.set_defaults(func=_perf)
    info = commands.add_parser("model-info", help="layers, d_model, hook points of a model")
    info.add_argument("--model", default="gemma-3-270m")
    info.set_defaults(func=_model_info)
    report = commands.add_parser("report", help="regenerate tables from results/leaderboard.json")
    report.add_argument("--results-dir", default="results")
    report.set_defaults(func=_report)
    tasks = commands.add_parser("tasks", help="where tasks come from")
    tasks.set_defaults(func=_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.paths import use_cache_for_hf

    use_cache_for_hf()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError) as err:
        print(f"crl-bench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
