"""Fault injection (issue 24): each long stage, killed with SIGKILL at a random point after its
first saved progress and rerun, ends with the same final artifacts as an uninterrupted run.

Each case runs the real CLI three times in subprocesses on the tiny model: uninterrupted, then
killed (a seeded random delay after the first checkpoint or scored point appears), then rerun."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow  # three runs of the CLI per stage


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]


def _killed(cmd: list[str], cwd: Path, progress: Path, pattern: str, seed: int) -> None:
    """Start `cmd`, wait for its first saved progress (`pattern` under `progress`), then SIGKILL
    it after a random delay; the run must still have been going."""
    process = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.time()
    while not list(progress.glob(pattern)):
        if process.poll() is not None:
            pytest.fail(f"finished before any progress was saved: {process.stderr.read().decode()[-2000:]}")
        if time.time() - started > 600:
            process.kill()
            pytest.fail("no progress saved in 600 s")
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before the kill: make it longer"


def _three_runs(cmd, tmp_path, progress_of, pattern, artifacts_of, seed):
    """(uninterrupted artifacts, resumed artifacts) of `cmd(root)` run in two roots."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for root in (whole, broken):
        root.mkdir()
    _run(cmd(whole), whole)
    _killed(cmd(broken), broken, progress_of(broken), pattern, seed)
    _run(cmd(broken), broken)
    return artifacts_of(whole), artifacts_of(broken)


def test_crl_training_killed_and_rerun_ends_as_an_uninterrupted_run(tiny_dir, tiny_sae_dir, tmp_path):
    def cmd(root):
        return [
            str(BIN / "crl-bench"),
            "train",
            "crl",
            "--model",
            tiny_dir,
            "--task",
            "arith_mc",
            "--sae",
            tiny_sae_dir,
            "--budget",
            "smoke",
            "--steps",
            "24",
            "--prompts-per-step",
            "4",
            "--samples-per-prompt",
            "4",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "6",
            "--val-limit",
            "8",
            "--hidden",
            "32",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--results-dir",
            str(root / "results"),
            "--runs-dir",
            str(root / "runs"),
        ]

    def run_dir(root):
        return next((root / "runs").glob("*/crl-one-token/arith_mc/seed0"))

    def artifacts(root):
        run = run_dir(root)
        return {
            name: (run / name).read_bytes()
            for name in ("controller.safetensors", "curve.csv", "choices.json", "interventions.jsonl")
        }

    whole, resumed = _three_runs(
        cmd,
        tmp_path,
        lambda root: root / "runs",
        "*/crl-one-token/arith_mc/seed0/checkpoints/step-*",
        artifacts,
        seed=1,
    )
    assert resumed == whole


def test_vector_sweep_killed_and_rerun_ends_as_an_uninterrupted_run(tiny_dir, tmp_path):
    def cmd(root):
        return [
            str(BIN / "crl-bench"),
            "train",
            "vectors",
            "--model",
            tiny_dir,
            "--task",
            "toy_sentiment",
            "--methods",
            "mean_diff,probe,pca,kmeans",
            "--layers",
            "1,2,3",
            "--coefs=-1,1,2,4",
            "--train-limit",
            "40",
            "--val-limit",
            "16",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--results-dir",
            str(root / "results"),
            "--runs-dir",
            str(root / "runs"),
        ]

    def artifacts(root):
        sweep = json.loads(next((root / "results").glob("*/vectors/toy_sentiment/sweep.json")).read_text())
        vectors = {
            p.relative_to(root / "runs").as_posix(): p.read_bytes()
            for p in sorted((root / "runs").glob("**/vectors.safetensors"))
        }
        return sweep["points"], sweep["chosen"], vectors

    whole, resumed = _three_runs(cmd, tmp_path, lambda root: root / "runs", "**/sweep.partial.json", artifacts, seed=2)
    assert resumed == whole


def test_bench_evaluation_killed_and_rerun_ends_as_an_uninterrupted_run(tiny_dir, tmp_path):
    def cmd(root):
        return [
            str(BIN / "crl-bench"),
            "bench",
            "--model",
            tiny_dir,
            "--tasks",
            "arith_mc,toy_sentiment,arith_gen",
            "--limit",
            "24",
            "--vectors",
            "none",
            "--no-rlvr",
            "--ladder",
            "none",
            "--crl",
            "none",
            "--sae",
            "none",
            "--no-analyses",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--results-dir",
            str(root / "results"),
            "--runs-dir",
            str(root / "runs"),
        ]

    def artifacts(root):
        rows = json.loads((root / "results" / "leaderboard.json").read_text())["rows"]
        keep = ("task", "method", "metric", "filter", "value", "ci95", "n", "budget")
        return sorted(json.dumps({k: r[k] for k in keep}) for r in rows)

    whole, resumed = _three_runs(cmd, tmp_path, lambda root: root / "runs", "*/base/*/*/stage.json", artifacts, seed=3)
    assert resumed == whole and len(whole) >= 3


def test_rlvr_training_killed_and_rerun_ends_as_an_uninterrupted_run(tiny_dir, tmp_path):
    def cmd(root):
        return [
            str(BIN / "crl-bench"),
            "train",
            "rlvr",
            "--model",
            tiny_dir,
            "--task",
            "arith_mc",
            "--budget",
            "smoke",
            "--steps",
            "6",
            "--prompts-per-step",
            "2",
            "--samples-per-prompt",
            "4",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "5",
            "--val-limit",
            "4",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--results-dir",
            str(root / "results"),
            "--runs-dir",
            str(root / "runs"),
        ]

    def artifacts(root):
        run = next((root / "runs").glob("*/rlvr/arith_mc/seed0"))
        return {name: (run / name).read_bytes() for name in ("adapter_model.safetensors", "curve.csv")}

    whole, resumed = _three_runs(
        cmd, tmp_path, lambda root: root / "runs", "*/rlvr/arith_mc/seed0/checkpoints/checkpoint-*", artifacts, seed=4
    )
    assert resumed == whole
