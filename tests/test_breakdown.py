"""`crl-bench breakdown`: accuracy per group of items and per solution step, against hand counts."""

import json

import pytest


def _samples(directory, rows):
    """rows: (doc, correct, completion) per item; writes directory/samples.jsonl as lm-eval logs it."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "samples.jsonl", "w") as handle:
        for i, (doc, correct, completion) in enumerate(rows):
            handle.write(
                json.dumps(
                    {
                        "doc_id": i,
                        "doc": doc,
                        "filter": "strict-match",
                        "metrics": ["exact_match"],
                        "exact_match": float(correct),
                        "resps": [[completion]],
                        "filtered_resps": [completion],
                    }
                )
                + "\n"
            )
    return directory


def _gen_doc(a, op1, b, op2, c, kind):
    step = a + b if op1 == "+" else a - b
    answer = step + c if op2 == "+" else step - c
    return {
        "question": "...",
        "solution": f"{a} {op1} {b} = {step}, {step} {op2} {c} = {answer}. The answer is {answer}",
        "answer": str(answer),
        "kind": kind,
    }


def test_arith_gen_steps_judge_each_step_on_its_own():
    from harness.tasks import _generated_module

    steps = _generated_module().arith_gen_steps
    doc = _gen_doc(12, "+", 9, "-", 1, kind=0)  # 12 + 9 = 21, 21 - 1 = 20
    assert all(steps(doc, " 12 + 9 = 21, 21 - 1 = 20. The answer is 20").values())
    # the wrong operator; the sum of what it wrote is right, and so is the rest given that sum
    wrong_op = steps(doc, " 12 - 9 = 3, 3 - 1 = 2. The answer is 2")
    assert not wrong_op["first operator"]
    assert wrong_op["first sum"] and wrong_op["second sum"] and wrong_op["first operands"]
    # copies b where c belongs, then adds up wrong, then answers something else
    copied = steps(doc, " 12 + 9 = 21, 21 - 9 = 18. The answer is 17")
    assert not copied["second operand"] and not copied["second sum"] and not copied["answers its own result"]
    assert copied["carries the sum"] and copied["second operator"]
    assert not any(steps(doc, " twenty-one").values())  # not a worked solution: no step is right
    with pytest.raises(ValueError, match="worked-solution format"):
        steps({"solution": "20"}, " 20")


def test_breakdown_counts_fixed_and_broken_per_group(tmp_path):
    from crl_bench.analyses.breakdown import Grouping, breakdown, read_evaluated
    from harness.stats import holm, mcnemar_exact

    docs = [{"kind": k} for k in (0,) * 10 + (1,) * 10]
    base = [0] * 10 + [1] * 10
    method = [1] * 9 + [0] + [0] * 6 + [1] * 4  # kind 0: 9 fixed; kind 1: 6 broken
    runs = [
        read_evaluated(name, _samples(tmp_path / name, [(d, c, "") for d, c in zip(docs, scores)]))
        for name, scores in (("base", base), ("method", method))
    ]
    result = breakdown("toy", runs, Grouping("kind", lambda k: f"kind {k}"))
    rows = {(r["group"], r["method"]): r for r in result["groups"]}
    k0, k1, everything = rows[("kind 0", "method")], rows[("kind 1", "method")], rows[("all items", "method")]
    assert (k0["fixed"], k0["broken"], k0["accuracy"]) == (9, 0, 0.9)
    assert (k1["fixed"], k1["broken"], k1["accuracy"]) == (0, 6, 0.4)
    assert (everything["fixed"], everything["broken"], everything["n"]) == (9, 6, 20)
    raw = [mcnemar_exact(method[:10], base[:10]), mcnemar_exact(method[10:], base[10:])]
    assert k0["p_vs_base"] == pytest.approx(raw[0]) and k0["p_vs_base"] < 0.01  # 9 of 9 discordant pairs
    assert [k0["p_vs_base_holm"], k1["p_vs_base_holm"]] == pytest.approx(holm(raw))
    assert everything["p_vs_base_holm"] == pytest.approx(mcnemar_exact(method, base))
    assert rows[("kind 0", "base")]["p_vs_base"] is None
    assert result["steps"] is None  # no step check for this grouping


def test_breakdown_splits_the_gain_into_repaired_format_and_changed_answers(tmp_path):
    """Issue 26's format repair: of a method's gain, the items where base gave no valid answer (its
    filter found none: "[invalid]") and the rest (valid answers it changed)."""
    from crl_bench.analyses.breakdown import Grouping, breakdown, read_evaluated, render

    docs = [{"kind": 0}] * 8
    base = [("[invalid]", 0)] * 4 + [("7", 0)] * 2 + [("5", 1)] * 2
    method = [("5", 1)] * 2 + [("[invalid]", 0)] * 2 + [("5", 1), ("7", 0)] + [("4", 0), ("5", 1)]
    runs = [
        read_evaluated(name, _samples(tmp_path / name, [(d, c, r) for d, (r, c) in zip(docs, rows)]))
        for name, rows in (("base", base), ("method", method))
    ]
    result = breakdown("toy", runs, Grouping("kind"))
    row = next(r for r in result["groups"] if r["group"] == "all items" and r["method"] == "method")
    assert (row["fixed"], row["broken"], row["base_invalid"]) == (3, 1, 4)
    assert row["gain_from_format"] == 2 / 8 and row["gain_from_answers"] == 0.0  # 1 answer fixed, 1 broken
    assert "| all items | method | 8 | 0.500 | 3 | 1 |" in render(result) and "| 4 | +0.250 | +0.000 |" in render(
        result
    )


def test_breakdown_refuses_runs_that_do_not_match(tmp_path):
    from crl_bench.analyses.breakdown import Grouping, breakdown, read_evaluated

    base = read_evaluated("base", _samples(tmp_path / "base", [({"kind": 0}, 1, "")] * 4))
    short = read_evaluated("short", _samples(tmp_path / "short", [({"kind": 0}, 1, "")] * 3))
    with pytest.raises(ValueError, match="same items"):
        breakdown("toy", [base, short], Grouping("kind"))
    with pytest.raises(ValueError, match="group by one of: kind"):
        breakdown("toy", [base], Grouping("subject"))
    with pytest.raises(ValueError, match="needs the base run"):
        breakdown("toy", [short], Grouping("kind"))
    with pytest.raises(FileNotFoundError, match="--run nowhere=DIR"):
        read_evaluated("nowhere", tmp_path / "missing")


def test_breakdown_command_writes_tables_and_figure(tmp_path, capsys):
    from crl_bench.cli import main

    docs = [_gen_doc(5, "+", 3, "-", 2, kind=0), _gen_doc(9, "-", 4, "+", 1, kind=1)] * 3
    right = [" 5 + 3 = 8, 8 - 2 = 6. The answer is 6", " 9 - 4 = 5, 5 + 1 = 6. The answer is 6"] * 3
    plus = [" 5 + 3 = 8, 8 - 2 = 6. The answer is 6", " 9 + 4 = 13, 13 + 1 = 14. The answer is 14"] * 3
    base = _samples(tmp_path / "runs" / "base", [(d, 0, " no idea") for d in docs])
    tuned = _samples(tmp_path / "runs" / "tuned", [(d, "+ 3" in c or "- 4" in c, c) for d, c in zip(docs, plus)])
    oracle = _samples(tmp_path / "runs" / "oracle", [(d, 1, c) for d, c in zip(docs, right)])
    results = tmp_path / "results"
    assert (
        main(
            [
                "breakdown",
                "--task",
                "arith_gen",
                "--results-dir",
                str(results),
                "--run",
                f"base={base}",
                "--run",
                f"tuned={tuned}",
                "--run",
                f"oracle={oracle}",
            ]
        )
        == 0
    )
    result = json.loads((results / "gemma-3-270m" / "breakdown" / "arith_gen.json").read_text())
    rows = {(r["group"], r["method"]): r for r in result["groups"]}
    assert rows[("0: buys b, gives away c (a + b - c)", "tuned")]["fixed"] == 3
    assert rows[("1: takes out b, puts in c (a - b + c)", "tuned")]["fixed"] == 0
    steps = {s["method"]: s["right"] for s in result["steps"] if s["group"] == "all items"}
    by_kind = {(s["group"][0], s["method"]): s["right"] for s in result["steps"]}
    assert by_kind[("1", "tuned")]["first operator"] == 0 and by_kind[("0", "tuned")]["first operator"] == 3
    assert steps["base"]["follows the format"] == 0
    assert steps["tuned"]["first operator"] == 3 and steps["tuned"]["first sum"] == 6
    assert steps["oracle"]["second sum"] == 6
    assert result["manifest"]["kind"] == "breakdown"
    assert (results / "gemma-3-270m" / "figures" / "breakdown-arith_gen.png").exists()
    assert "| tuned |" in (results / "gemma-3-270m" / "breakdown" / "arith_gen.md").read_text()
    # no base among the runs and no leaderboard: says what to run
    assert (
        main(["breakdown", "--task", "arith_gen", "--results-dir", str(tmp_path / "empty"), "--run", f"tuned={tuned}"])
        == 2
    )
    assert "run `crl-bench bench` first" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["breakdown", "--task", "arith_gen", "--run", "no-equals-sign"])


def test_runs_come_from_the_leaderboard_rows(tmp_path):
    from crl_bench.analyses.breakdown import runs_from_leaderboard

    def row(method, setting, seed, run_dir, task="arith_gen", model="m"):
        return {"model": model, "task": task, "method": method, "setting": setting, "seed": seed, "run_dir": run_dir}

    board = tmp_path / "leaderboard.json"
    rows = [
        row("crl", "generation", 0, "c0"),
        row("crl", "generation", 1, "c1"),
        row("base", "-", 0, "b"),
        row("rlvr", "-", 0, "r"),
        row("rlvr", "-", "all", None),
        row("base", "-", 0, "other", task="boolq"),
    ]
    board.write_text(json.dumps({"rows": rows + [{**rows[2], "metric": "second metric, same run"}]}))
    runs = runs_from_leaderboard(board, "arith_gen")
    assert [label for label, _ in runs] == ["base", "crl:generation seed 0", "crl:generation seed 1", "rlvr"]
    assert runs[0][1].name == "b"
    board.write_text(json.dumps({"rows": [row("rlvr", "-", 0, "r")]}))
    with pytest.raises(ValueError, match="no base row"):
        runs_from_leaderboard(board, "arith_gen")
    board.write_text(json.dumps({"rows": [row("base", "-", 0, "b"), row("base", "-", 0, "b2", model="n")]}))
    with pytest.raises(ValueError, match="--model"):
        runs_from_leaderboard(board, "arith_gen")


def test_board_rows_whose_runs_are_elsewhere_are_left_out_and_named(tmp_path):
    """A committed row made on another machine (its run directory absent here) does not stop the
    breakdown of the runs that are here: it is left out, and the table says which and where."""
    from crl_bench.analyses.breakdown import run

    docs = [_gen_doc(5, "+", 3, "-", 2, kind=0), _gen_doc(9, "-", 4, "+", 1, kind=1)] * 2
    base = _samples(tmp_path / "base", [(d, 0, " no idea") for d in docs])
    here = _samples(tmp_path / "here", [(d, 1, " 5 + 3 = 8, 8 - 2 = 6. The answer is 6") for d in docs])
    rows = [
        {"model": "m", "task": "arith_gen", "method": "base", "setting": "-", "seed": 0, "run_dir": str(base)},
        {"model": "m", "task": "arith_gen", "method": "rlvr", "setting": "-", "seed": 0, "run_dir": str(here)},
        {"model": "m", "task": "arith_gen", "method": "crl", "setting": "generation", "seed": 0,
         "run_dir": str(tmp_path / "elsewhere")},
    ]  # fmt: skip
    board = tmp_path / "leaderboard.json"
    board.write_text(json.dumps({"rows": rows}))
    path = run("arith_gen", tmp_path / "results", leaderboard=board, model="m", exclude=frozenset())
    result = json.loads(path.with_suffix(".json").read_text())
    assert {r["method"] for r in result["groups"]} == {"base", "rlvr"}
    assert result["absent"] == {"crl:generation": str(tmp_path / "elsewhere")}
    assert f"- crl:generation: `{tmp_path / 'elsewhere'}`" in path.read_text()
    rows[0]["run_dir"] = str(tmp_path / "no-base")  # base must be here: the error says how to get it
    board.write_text(json.dumps({"rows": rows}))
    with pytest.raises(FileNotFoundError, match="base: no samples.jsonl"):
        run("arith_gen", tmp_path / "results", leaderboard=board, model="m", exclude=frozenset())
