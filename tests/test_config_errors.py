"""Every config path (flags, --config, --rl-settings, budget files) is checked before any stage
runs, and every expected error is one line and exit status 2 (issue 24, items 5 and 6)."""

import shutil

import pytest

from tests.conftest import SHARED_DATA, needs_data


def _bench(tmp_path, *args):
    from crl_bench.cli import main

    return main(["bench", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), *args])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("arith-gen: {steps: 10}", "unknown tasks arith-gen (did you mean arith_gen?)"),
        ("arith_gen: {steps: -3}", "arith_gen: rlvr: budget steps must be at least 1, got -3"),
        ("arith_gen: {steps: ten}", "arith_gen: rlvr: --steps must be an integer, got 'ten'"),
        ("arith_gen: {steps: 2.5}", "arith_gen: rlvr: --steps must be an integer, got 2.5"),
        ("arith_gen: [1, 2]", "arith_gen: expected a mapping of setting -> value"),
        ("arith_gen: {rlvr: [steps]}", "arith_gen: expected a mapping of setting -> value"),
        ("arith_gen:\n  steps: 10\n bad indent: 1\n", "line 3 column 2: not valid YAML"),
    ],
)
def test_rl_settings_are_checked_before_anything_runs(tmp_path, capsys, content, message):
    settings = tmp_path / "rl.yaml"
    settings.write_text(content)
    assert _bench(tmp_path, "--tasks", "arith_gen", "--rl-settings", str(settings), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and str(settings) in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("limit: four", "--limit must be an integer, got 'four'"),
        ("tasks: {a: 1}", "--tasks must be a list (or comma-separated)"),
        ("profile: fast", "--profile must be one of auto, laptop, full, got 'fast'"),
        ("rlvr: maybe", "--rlvr must be true or false, got 'maybe'"),
        ("limt: 3", "unknown settings limt (did you mean limit?)"),
        ("sae_sequences: 2", "--sae-sequences must be at least 8, got 2"),
        ("limit: [3\n", "line 2 column 1: not valid YAML"),
        ("- limit", "expected a mapping of setting -> value"),
    ],
)
def test_config_files_are_checked_with_one_line_errors(tmp_path, capsys, content, message):
    config = tmp_path / "bench.yaml"
    config.write_text(content)
    assert _bench(tmp_path, "--config", str(config), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_budget_files_and_task_paths_are_checked(tmp_path, capsys):
    budget = tmp_path / "budget.yaml"
    budget.write_text("steps: [8\n")
    assert _bench(tmp_path, "--budget", str(budget), "--device", "cpu") == 2
    assert f"budget file {budget}, line 2" in capsys.readouterr().err
    for task in ("/abs/path/evil.yaml", "../escape", "tasks/mine.yaml"):
        assert _bench(tmp_path, "--tasks", task, "--device", "cpu") == 2
        err = capsys.readouterr().err
        assert f"--tasks takes task names (e.g. arith_gen), not paths: {task}" in err and "--include_path" in err
    assert not (tmp_path / "runs").exists()


@needs_data
def test_a_truncated_data_line_names_its_file_and_line(tmp_path, monkeypatch):
    from harness.tasks import load_task, task_manager

    data = tmp_path / "data"
    shutil.copytree(SHARED_DATA / "boolq", data / "boolq")
    with open(data / "boolq" / "validation.jsonl", "a") as handle:
        handle.write('{"question": "cut off he')
    monkeypatch.setenv("CRL_BENCH_DATA", str(data))
    lines = (data / "boolq" / "validation.jsonl").read_text().count("\n") + 1
    with pytest.raises(ValueError, match=rf"boolq/validation.jsonl, line {lines}: not a JSON record"):
        load_task("boolq", task_manager(names=["boolq"]))


def test_a_malformed_task_yaml_on_lm_evals_include_path_is_named(tmp_path):
    from lm_eval.tasks import TaskManager

    folder = tmp_path / "mytasks"
    folder.mkdir()
    (folder / "mine.yaml").write_text("task: mine\ndataset_path: [unclosed\n")
    with pytest.raises(ValueError, match=r"task file .*mine.yaml is not valid YAML"):
        TaskManager(include_path=str(folder), include_defaults=False)


def test_bench_dry_run_prints_the_plan_and_runs_nothing(tiny_dir, tmp_path, capsys):
    args = [
        "--model",
        tiny_dir,
        "--tasks",
        "arith_mc,arith_gen",
        "--budget",
        "smoke",
        "--sae",
        "none",
        "--dry-run",
        "--device",
        "cpu",
    ]
    assert _bench(tmp_path, *args) == 0
    plan = capsys.readouterr().out
    assert "4 layers, d_model 64" in plan and "device cpu" in plan
    assert "RLVR on arith_mc seed 0: 3 steps x 2 prompts x 4 samples (24 rollouts, up to 1 new tokens); trains" in plan
    assert "vectors (mean_diff, kmeans, probe, pca, das) on arith_gen: sweep runs" in plan
    assert "CRL" not in plan.split("stages, in order:")[1].split("evaluation")[0]  # --sae none: no CRL stage
    assert "rl-vector on arith_gen seed 0 (RLVR's GRPO trainer and budget): trains" in plan
    assert "crl-lm on" not in plan  # --sae none: the feature controller has no features to add
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
