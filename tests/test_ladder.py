"""The ladder per task (issue 26): each rung's best row in order from a fixed vector to LoRA, with
its gain over base, its distance to RLVR, budget, trainable parameters and training time; the
random-reward controls after; a figure per task; the report opens with it."""

from __future__ import annotations

import json


def test_ladder_tables_figures_and_report(tmp_path):
    from crl_bench.ladder import write_ladder
    from crl_bench.leaderboard import Scores, write
    from crl_bench.report import build

    docs = list(range(80))
    run = tmp_path / "runs" / "m" / "crl-lm" / "t" / "seed0"
    (run / "eval" / "abc").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"spent": {"trainable_parameters": 4242, "wall_s": 61.5}}))

    def scores(method, setting, hits, run_dir="r", budget="4x2x8"):
        values = [float(d < hits) for d in docs]
        return Scores("m", "t", method, setting, 0, "acc", "none", docs, values, run_dir, budget=budget)

    write(
        tmp_path,
        [
            scores("base", "-", 20, budget="-"),
            scores("vector", "mean_diff", 22, budget="-"),
            scores("vector", "probe", 25, budget="-"),  # the best vector
            scores("corrsteer", "-", 21, budget="-"),
            scores("crl", "one-token", 23),
            scores("crl-lm", "-", 30, run_dir=str(run / "eval" / "abc")),
            scores("rl-vector", "-", 28),
            scores("rlvr", "-", 50),
            scores("rlvr", "random-reward", 45),  # a control that gained: flagged
        ],
    )
    (md,) = write_ladder(tmp_path)
    record = json.loads((tmp_path / "m" / "ladder.json").read_text())["tasks"]["t"]
    assert [(e["method"], e["setting"]) for e in record] == [
        ("base", "-"),
        ("corrsteer", "-"),
        ("vector", "probe"),
        ("crl", "one-token"),
        ("crl-lm", "-"),
        ("rl-vector", "-"),
        ("rlvr", "-"),
        ("rlvr", "random-reward"),
    ]
    crl_lm = record[4]
    assert crl_lm["trainable_parameters"] == 4242 and crl_lm["wall_s"] == 61.5 and crl_lm["delta_vs_rlvr"] < 0
    assert record[-1]["control_gained"] and not any(e["control_gained"] for e in record[:-1])
    text = md.read_text()
    assert "| CRL through the LM | 0.375 | 0.125 [" in text and "| 4,242 | 62 |" in text
    assert "| rlvr on a random reward (control) ¶ |" in text and record[-1]["marks"] == "¶"
    assert (tmp_path / "m" / "figures" / "ladder-t.png").exists() and (
        tmp_path / "m" / "figures" / "ladder-t.pdf"
    ).exists()
    page = build(tmp_path).read_text()
    assert page.index("The ladder: from a fixed vector to LoRA") < page.index(">Leaderboard<")
    assert "RL steering vector" in page
