"""The README's headline table is generated from the leaderboard into a marked block."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _row(task, method, setting, value, delta=None, p=None, metric="acc", filter_name="none", seed=0):
    return {
        "model": "m",
        "task": task,
        "method": method,
        "setting": setting,
        "seed": seed,
        "metric": metric,
        "filter": filter_name,
        "value": value,
        "delta_vs_base": delta,
        "p_vs_base": p,
        "holm_family": 3,
    }


def test_headline_picks_the_primary_metric_best_vector_and_marks_significance(tmp_path):
    from crl_bench.headline import END, START, headline, update_readme

    rows = [
        _row("t", "base", "-", 0.5),
        _row("t", "base", "-", 0.4, metric="acc_norm"),
        _row("t", "vector", "probe", 0.55, 0.05, 0.2),
        _row("t", "vector", "pca", 0.6, 0.1, 0.01),
        _row("t", "rlvr", "-", 0.7, 0.2, 0.001),
        _row("t", "crl", "one-token", 0.52, 0.02, 0.5),
        _row("g", "base", "-", 0.2, metric="exact_match", filter_name="flexible-extract"),
        _row("g", "base", "-", 0.1, metric="exact_match", filter_name="strict-match"),
        _row("g", "rlvr", "-", 0.3, 0.2, 0.04, metric="exact_match", filter_name="strict-match", seed="all"),
        _row("g", "rlvr", "-", 0.9, 0.8, 0.0, metric="exact_match", filter_name="strict-match", seed=0),
    ]
    text = headline(rows)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["t"] == "| t | acc | 0.500 | 0.600 (+0.100*) pca | 0.520 (+0.020) |  |  | 0.700 (+0.200*) |"
    # the strict-match filter, and the seed=all row of a method that ran several seeds
    assert lines["g"].startswith("| g | exact_match (strict-match) | 0.100 |") and "0.300 (+0.200*)" in lines["g"]
    assert "0.900" not in lines["g"]

    (tmp_path / "results").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nstale\n{END}\noutro\n")
    assert update_readme(tmp_path / "results", rows) == readme
    assert readme.read_text() == f"intro\n{START}\n{text}{END}\noutro\n"
    (tmp_path / "README.md").write_text("no block\n")
    assert update_readme(tmp_path / "results", rows) is None and readme.read_text() == "no block\n"


def test_the_committed_readme_shows_the_committed_leaderboard():
    from crl_bench.headline import END, START, headline

    rows = json.loads((ROOT / "results" / "leaderboard.json").read_text())["rows"]
    readme = (ROOT / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0]
    assert block == "\n" + headline(rows), "README's headline is stale: run `crl-bench report`"


def test_the_ladders_rungs_get_columns_only_where_they_ran_and_controls_never_fill_them():
    from crl_bench.headline import headline

    rows = [
        _row("t", "base", "-", 0.5),
        _row("t", "rlvr", "-", 0.7, 0.2, 0.001),
        _row("t", "crl-lm", "-", 0.6, 0.1, 0.01),
        _row("t", "crl-lm", "random-reward", 0.9, 0.4, 0.001),
    ]
    text = headline(rows)
    header = next(line for line in text.splitlines() if line.startswith("| task"))
    assert "CRL through the LM" in header and "RL vector" not in header and "CorrSteer" not in header
    line = next(line for line in text.splitlines() if line.startswith("| t |"))
    # base, CRL's three columns empty, CRL through the LM (its real run, not the control), RLVR
    assert line == "| t | acc | 0.500 |  |  |  |  | 0.600 (+0.100*) | 0.700 (+0.200*) |"
    assert "0.900" not in text
