"""Two runs writing one results folder at once keep both runs' results (issue 24, item 1).

Two real processes race: each writes the leaderboard (per-item scores, rows, tables) and an
analysis file a dozen times, every write adding entries of its own. Without the results
folder's lock about half the entries are lost every time (measured: 12-14 of 24 kept)."""

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import random, sys
from pathlib import Path
from types import SimpleNamespace
from crl_bench.analyses.runner import _publish
from crl_bench.leaderboard import Scores, write
results, who, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(who)
docs = list(range(40))
for i in range(n):
    def scores(method, setting, p):
        return Scores("m", "t", method, setting, 0, "acc", "none", docs, [float(rng.random() < p) for _ in docs], "r")
    base, mine = scores("base", "-", 0.5), scores("vector", f"{who}-{i}", 0.6)
    write(results, [base, mine])
    row = {"task": f"{who}-{i}", "method": "vector"}
    _publish(results, "similarity", "rows", SimpleNamespace(model="m"),
             lambda old: [r for r in old if r["task"] != row["task"]] + [row], lambda rows: f"{len(rows)} rows\\n")
"""


def test_two_processes_writing_one_results_folder_keep_both_runs_results(tmp_path):
    results = tmp_path / "results"
    writes = 12
    racers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(results), who, str(writes)], stderr=subprocess.PIPE)
        for who in ("a", "b")
    ]
    for racer in racers:
        _, err = racer.communicate(timeout=600)
        assert racer.returncode == 0, err.decode()[-2000:]
    expected = {f"{who}-{i}" for who in "ab" for i in range(writes)}
    stored = [json.loads(line) for line in (results / "leaderboard_scores.jsonl").read_text().splitlines()]
    assert {s["setting"] for s in stored if s["method"] == "vector"} == expected
    rows = json.loads((results / "leaderboard.json").read_text())["rows"]
    assert {r["setting"] for r in rows if r["method"] == "vector"} == expected
    assert all(r["holm_family"] == 2 * writes for r in rows if r["method"] == "vector")  # one family over both
    similarity = json.loads((results / "similarity.json").read_text())["rows"]
    assert {r["task"] for r in similarity} == expected
    assert (results / "similarity.md").read_text() == f"{2 * writes} rows\n"
    # every temporary file was renamed into place or removed
    assert sorted(p.name for p in results.iterdir() if p.name.endswith(".tmp")) == []
    assert not list(Path(results).glob(".*.tmp"))
