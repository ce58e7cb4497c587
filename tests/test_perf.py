"""`crl-bench perf`'s training comparison runs every method with the same budget and reports ratios."""

import json


def test_training_throughput_comparison(tiny_dir, tiny_sae_dir, tmp_path):
    from rich.console import Console

    from crl_bench.perf import PerfConfig, run_training

    config = PerfConfig(
        model=tiny_dir,
        train_task="arith_mc",
        train_generation_task="arith_gen",
        train_steps=2,
        train_prompts_per_step=2,
        train_samples=2,
        train_max_new_tokens=4,
        sae=tiny_sae_dir,
        results_dir=str(tmp_path),
    )
    record = json.loads(run_training(config, Console(stderr=True)).read_text())
    rows = {(r["task"], r["variant"]): r for r in record["rows"]}
    assert set(rows) == {
        ("arith_mc", "rlvr"),
        ("arith_mc", "crl"),
        ("arith_gen", "rlvr"),
        ("arith_gen", "rlvr-one-micro-batch"),
        ("arith_gen", "crl"),
    }
    for (task, variant), row in rows.items():
        # setting 3's ppo also decodes each training prompt once unsteered (its advantage baseline)
        unsteered = 2 * 2 if (task, variant) == ("arith_gen", "crl") else 0
        assert row["rollouts"] == 2 * 2 * 2 + unsteered and 0 < row["train_s"] and row["peak_rss_mb"] > 0
        # one-token answers are one token; generation rollouts run up to the budget's new tokens
        tokens = row["generated_tokens"]
        assert tokens == row["rollouts"] if task == "arith_mc" else row["rollouts"] <= tokens <= row["rollouts"] * 4
    ratios = {(r["task"], r["variant"]): r for r in record["ratios"]}
    assert set(ratios) == {("arith_mc", "crl"), ("arith_gen", "crl")}
    for (task, variant), ratio in ratios.items():
        assert (
            ratio["rollouts_per_s_over_rlvr"]
            == rows[task, variant]["rollouts_per_s"] / rows[task, "rlvr"]["rollouts_per_s"]
        )
        assert ratio["peak_rss_over_rlvr"] == rows[task, variant]["peak_rss_mb"] / rows[task, "rlvr"]["peak_rss_mb"]
    (micro,) = record["rlvr_micro_batches"]  # RLVR's memory against its one-micro-batch baseline, same run
    whole = rows["arith_gen", "rlvr-one-micro-batch"]
    assert micro["peak_rss_over_one_micro_batch"] == rows["arith_gen", "rlvr"]["peak_rss_mb"] / whole["peak_rss_mb"]
    assert micro["first_step_loss_difference"] < 1e-4 and micro["rewards_one_micro_batch"] == whole["rewards"]
    text = (tmp_path / "perf_training.md").read_text()
    assert "arith_gen, crl / RLVR" in text and "arith_mc, crl / RLVR" in text


def test_evaluation_comparison_per_task_against_hf(tiny_dir, tmp_path):
    """Every variant scores the same requests as lm-eval's `hf`, each in its own process; the
    shared-prefix default and the one-pass path give hf's log-likelihoods (bf16 on this CPU)."""
    import pytest

    from crl_bench.perf import VARIANTS, PerfConfig, run

    with pytest.raises(ValueError, match="task:few-shot:items"):
        PerfConfig(tasks="arc_easy:all")
    record = json.loads(
        run(PerfConfig(model=tiny_dir, tasks="arith_mc:2:3", train_steps=0, results_dir=str(tmp_path))).read_text()
    )
    rows = {r["variant"]: r for r in record["rows"]}
    assert set(rows) == set(VARIANTS) and {r["task"] for r in record["rows"]} == {"arith_mc"}
    assert len({r["n_requests"] for r in rows.values()}) == 1 and rows["hf"]["n_requests"] == 3 * 10
    assert rows["hf"]["time_ratio_vs_hf"] == 1.0
    for variant in ("hf_lean", "hf_lean_one_pass"):
        assert rows[variant]["max_abs_loglik_diff_vs_hf"] < 0.05
    assert rows["vector_steered"]["max_abs_loglik_diff_vs_hf"] > 0.05  # steering moves them
    assert "| arith_mc | 2 | 3 | 30 | hf_lean |" in (tmp_path / "perf.md").read_text()
