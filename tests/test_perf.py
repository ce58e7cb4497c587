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
    assert set(rows) == {("arith_mc", "rlvr"), ("arith_mc", "crl"), ("arith_gen", "rlvr"), ("arith_gen", "crl")}
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
    text = (tmp_path / "perf_training.md").read_text()
    assert "arith_gen, crl / RLVR" in text and "arith_mc, crl / RLVR" in text
