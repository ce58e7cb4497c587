"""`crl-bench perf`'s training comparison runs both methods with the same budget and reports ratios."""

import json


def test_training_throughput_comparison(tiny_dir, tiny_sae_dir, tmp_path):
    from rich.console import Console

    from harness.perf import PerfConfig, run_training

    config = PerfConfig(model=tiny_dir, train_task="arith_mc", train_steps=2, train_prompts_per_step=2, train_samples=2,
                        sae=tiny_sae_dir, results_dir=str(tmp_path))
    record = json.loads(run_training(config, Console(stderr=True)).read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert set(rows) == {"rlvr", "crl"}
    for row in rows.values():
        assert row["rollouts"] == 2 * 2 * 2 and 0 < row["train_s"] and row["peak_rss_mb"] > 0
    assert record["ratios"]["rollouts_per_s_crl_over_rlvr"] == rows["crl"]["rollouts_per_s"] / rows["rlvr"]["rollouts_per_s"]
    assert "CRL / RLVR" in (tmp_path / "perf_training.md").read_text()
