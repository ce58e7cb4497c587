"""Data-parallel evaluation with the plain lm-eval CLI (issue 23): two CPU processes launched by
`torchrun` (what `accelerate launch` runs on GPUs; on CPUs accelerate's launcher starts one
process unless MPI is configured) split the requests between them and give the same per-item
log-likelihoods, scores and CRL intervention log as one process. lm-eval's `hf` splits work
only across GPUs; our wrappers split it across CPU processes too."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _lm_eval(launcher: list[str], tiny_dir: str, run: Path, out: Path) -> tuple[dict[int, list[float]], str]:
    args = f"pretrained={tiny_dir},controller={run},log_interventions={out / 'decisions.jsonl'},dtype=float32"
    cmd = [*launcher, "-m", "lm_eval", "--model", "crl_steered", "--model_args", args]
    cmd += [
        "--tasks",
        "toy_sentiment",
        "--limit",
        "12",
        "--batch_size",
        "4",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = [json.loads(line) for f in out.rglob("samples_toy_sentiment_*.jsonl") for line in f.open()]
    return {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in samples}, done.stderr


def _one_process(tiny_dir: str, run: Path, out: Path) -> dict[int, list[float]]:
    """The same evaluation in this process (lm-eval's API, the CLI's defaults)."""
    from lm_eval import simple_evaluate

    from harness.tasks import task_manager
    from rl.crl.lm import CRLSteeredLM

    out.mkdir(parents=True)
    log = str(out / "decisions.jsonl")
    lm = CRLSteeredLM(pretrained=tiny_dir, controller=str(run), log_interventions=log, dtype="float32", batch_size=4)
    output = simple_evaluate(
        model=lm,
        tasks=["toy_sentiment"],
        task_manager=task_manager(names=["toy_sentiment"]),
        limit=12,
        log_samples=True,
    )
    return {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in output["samples"]["toy_sentiment"]}


def totals(log: str) -> set[int]:
    """The request counts of lm-eval's finished progress bars in a run's stderr."""
    return {int(n) for n in re.findall(r"Running loglikelihood requests: 100%\|[^|]*\| \d+/(\d+)", log)}


def test_two_cpu_processes_split_the_requests_and_match_one(tiny_dir, random_controller, tmp_path):
    one = _one_process(tiny_dir, random_controller, tmp_path / "one")
    two, log = _lm_eval(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517"],
        tiny_dir,
        random_controller,
        tmp_path / "two",
    )
    assert sorted(one) == sorted(two) == list(range(12))
    for doc in one:
        torch.testing.assert_close(two[doc], one[doc], rtol=1e-5, atol=1e-5)
    # each process scored its own half of the 24 requests, not all of them
    assert totals(log) == {12}

    def decisions(folder: Path) -> list[tuple]:
        rows = [json.loads(line) for line in (folder / "decisions.jsonl").read_text().splitlines()]
        return sorted((r["item"], r["position"], r["feature"], r["coef"]) for r in rows)

    made = decisions(tmp_path / "one")
    assert made == decisions(tmp_path / "two")  # the same decisions, from both processes into one log
    assert len({feature for _, _, feature, _ in made}) > 1  # the controller acts, and not always alike


def test_rlvr_trains_in_two_cpu_processes_on_the_same_budget(tiny_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m crl_bench.cli train rlvr ...`: TRL's trainer runs
    data-parallel (DDP over gloo); each process generates half of a step's completions, so the
    run spends exactly the budget one process would, counted over both, and one process writes
    the run's files."""
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29518", "-m", "crl_bench.cli"]
    cmd += ["train", "rlvr", "--model", tiny_dir, "--task", "toy_sentiment", "--budget", "smoke", "--steps", "2"]
    cmd += ["--dtype", "float32", "--device", "cpu", "--val-limit", "4", "--eval-every", "0"]
    cmd += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("RLVR adapter:") == 1 and "in each of 2 processes" in done.stderr
    run = next((tmp_path / "runs").glob("*/rlvr/toy_sentiment/seed0"))
    manifest = json.loads((run / "manifest.json").read_text())
    budget = manifest["budget"]
    per_step = budget["prompts_per_step"] * budget["samples_per_prompt"]
    assert manifest["processes"] == 2 and manifest["spent"]["steps"] == 2
    assert [row["rollouts"] for row in manifest["curve"]] == [0, per_step, 2 * per_step]
    assert (run / "adapter_model.safetensors").exists()
