"""`crl-bench perf`'s training comparison runs every method with the same budget and reports ratios."""

import json


def test_training_throughput_comparison(tiny_dir, tiny_sae_dir, tmp_path, monkeypatch):
    """On the generation task (the one-token task, `--train-task`, runs the same code with CRL
    setting 1): RLVR, RLVR row by row (TRL's passes), RLVR row by row in one micro-batch, CRL setting 3,
    and generation under its controller."""
    from rich.console import Console

    from crl_bench.perf import PerfConfig
    from crl_bench.perf_training import run_training

    monkeypatch.setenv("CRL_BENCH_CACHE", str(tmp_path / "cache"))  # this test's measurements folder is its own
    config = PerfConfig(
        model=tiny_dir,
        train_task="none",
        train_generation_task="arith_gen",
        train_steps=2,
        train_prompts_per_step=2,
        train_samples=2,
        train_max_new_tokens=4,
        generation_items=2,
        sae=tiny_sae_dir,
        results_dir=str(tmp_path),
    )
    record = json.loads(run_training(config, Console(stderr=True)).read_text())
    rows = {(r["task"], r["variant"]): r for r in record["rows"]}
    assert set(rows) == {
        ("arith_gen", "rlvr"),
        ("arith_gen", "rlvr-row-by-row"),
        ("arith_gen", "rlvr-one-micro-batch"),
        ("arith_gen", "rlvr-fp32-rollouts"),
        ("arith_gen", "crl"),
    }
    for (task, variant), row in rows.items():
        # setting 3's ppo also decodes each training prompt once unsteered (its advantage baseline)
        unsteered = 2 * 2 if (task, variant) == ("arith_gen", "crl") else 0
        assert row["rollouts"] == 2 * 2 * 2 + unsteered and 0 < row["train_s"] and row["peak_rss_mb"] > 0
        assert row["rollouts"] <= row["generated_tokens"] <= row["rollouts"] * 4  # up to the budget's new tokens
    ratios = {(r["task"], r["variant"]): r for r in record["ratios"]}
    assert set(ratios) == {("arith_gen", "crl")}
    for (task, variant), ratio in ratios.items():
        assert (
            ratio["rollouts_per_s_over_rlvr"]
            == rows[task, variant]["rollouts_per_s"] / rows[task, "rlvr"]["rollouts_per_s"]
        )
        assert ratio["peak_rss_over_rlvr"] == rows[task, variant]["peak_rss_mb"] / rows[task, "rlvr"]["peak_rss_mb"]
    # the baselines of shared prompts and micro-batches sample from the fp32 model, as their reference does
    reference = rows["arith_gen", "rlvr-fp32-rollouts"]
    assert {r["rollout_dtype"] for v, r in rows.items() if v[1].startswith("rlvr-")} == {"float32"}
    (micro,) = record["rlvr_micro_batches"]  # RLVR's memory against its one-micro-batch baseline, same run
    whole = rows["arith_gen", "rlvr-one-micro-batch"]
    assert micro["peak_rss_over_one_micro_batch"] == reference["peak_rss_mb"] / whole["peak_rss_mb"]
    assert micro["first_step_loss_difference"] < 1e-4 and micro["rewards_one_micro_batch"] == whole["rewards"]
    (shared,) = record["rlvr_shared_prefix"]  # shared prompts against TRL's row-by-row passes, same run
    apart = rows["arith_gen", "rlvr-row-by-row"]
    assert shared["rollouts_per_s_over_row_by_row"] == reference["rollouts_per_s"] / apart["rollouts_per_s"]
    assert shared["first_step_loss_difference"] < 1e-4 and shared["rewards_row_by_row"] == apart["rewards"]
    (copy,) = record["rlvr_rollout_copy"]  # the default's rollouts (bf16 on a CPU that has it) against fp32's
    assert copy["rollout_dtype"] == rows["arith_gen", "rlvr"]["rollout_dtype"] in ("float32", "bfloat16")
    assert (
        copy["rollouts_per_s_over_fp32_rollouts"]
        == rows["arith_gen", "rlvr"]["rollouts_per_s"] / reference["rollouts_per_s"]
    )
    generation = record["generation_under_controller"]  # setting 3's controller at every generated token
    assert generation["task"] == "arith_gen" and generation["items"] == 2
    assert all(generation[v]["generated_tokens"] > 0 for v in ("hf_lean", "crl_steered"))
    per_token = {v: generation[v]["eval_s"] / generation[v]["generated_tokens"] for v in ("hf_lean", "crl_steered")}
    assert generation["time_per_token_ratio"] == per_token["crl_steered"] / per_token["hf_lean"]
    # unsteered at bench's rows per generate call against the batch size, same process each, same completions
    assert (generation["hf_lean"]["rows"], generation["hf_lean_batch"]["rows"]) == (64, 16)
    assert generation["time_ratio_rows"] == generation["hf_lean"]["eval_s"] / generation["hf_lean_batch"]["eval_s"]
    assert generation["same_completions_across_rows"] is True
    text = (tmp_path / "perf_training.md").read_text()
    assert "arith_gen, crl / RLVR" in text and "TRL's row-by-row passes" in text and "from the fp32 model it" in text
    assert "generation under the trained setting-3 controller" in text and "64 rows per generate call / 16 rows" in text


def test_evaluation_comparison_per_task_against_hf(tiny_dir, tmp_path, monkeypatch):
    """Every variant scores the same requests as lm-eval's `hf`, each in its own process; the
    shared-prefix default and the one-pass path give hf's log-likelihoods (bf16 on this CPU). A
    variant killed for lack of memory is measured at half the batch size, and a rerun resumes
    from the measurements already made."""
    import sys

    import pytest

    from crl_bench import perf
    from crl_bench.perf import VARIANTS, PerfConfig, run

    with pytest.raises(ValueError, match="task:few-shot:items"):
        PerfConfig(tasks="arc_easy:all")
    measure = perf.measure

    def out_of_memory_at_batch_4(out, cmd, console, after=()):
        if out.name == "arith_mc-hf-batch4.json":  # as the kernel's out-of-memory killer would
            return measure(
                out, [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], console
            )
        return measure(out, cmd, console, after)

    monkeypatch.setattr(perf, "measure", out_of_memory_at_batch_4)
    monkeypatch.setenv("CRL_BENCH_CACHE", str(tmp_path / "cache"))  # this test's measurements folder is its own
    config = PerfConfig(model=tiny_dir, tasks="arith_mc:2:3", batch_size=4, train_steps=0, results_dir=str(tmp_path))
    record = json.loads(run(config).read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert set(rows) == set(VARIANTS) and {r["task"] for r in record["rows"]} == {"arith_mc"}
    assert len({r["n_requests"] for r in rows.values()}) == 1 and rows["hf"]["n_requests"] == 3 * 10
    assert rows["hf"]["time_ratio_vs_hf"] == 1.0
    assert rows["hf"]["batch_size"] == 2 and rows["hf_lean"]["batch_size"] == 4
    for variant in ("hf_lean", "hf_lean_one_pass"):
        assert rows[variant]["max_abs_loglik_diff_vs_hf"] < 0.05
    assert rows["vector_steered"]["max_abs_loglik_diff_vs_hf"] > 0.05  # steering moves them
    text = (tmp_path / "perf.md").read_text()
    assert "| arith_mc | 2 | 3 | 30 | hf_lean | 4 |" in text and "| hf | 2 (4: out of memory) |" in text

    # the rerun measures nothing again: every measurement (and the kill) is in this run's folder
    def kept_only(out, cmd, console, after=()):
        assert out.exists() or out.with_suffix(".killed").exists(), f"{out.name} measured again"
        return measure(out, cmd, console, after)

    monkeypatch.setattr(perf, "measure", kept_only)
    again = json.loads(run(config).read_text())
    assert [(r["variant"], r["batch_size"], r["eval_s"]) for r in again["rows"]] == [
        (r["variant"], r["batch_size"], r["eval_s"]) for r in record["rows"]
    ]
