"""Statistics against hand-written reference computations."""

import math

import pytest

from harness.stats import holm, mcnemar_exact, mean_ci95


def test_mcnemar_exact_matches_binomial_formula():
    a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3  # 10 only-a, 2 only-b, 8 concordant
    b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    n, k = 12, 2
    expected = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert mcnemar_exact(a, b) == pytest.approx(expected)
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1])


def test_wilson_interval_matches_formula():
    k, n, z = 30, 50, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = mean_ci95([1] * k + [0] * (n - k))
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_bootstrap_interval_for_non_binary_scores_contains_mean_and_is_seeded():
    scores = [0.1, 0.5, 0.7, 0.2, 0.9, 0.4, 0.3, 0.8]
    low, high = mean_ci95(scores)
    assert low < sum(scores) / len(scores) < high
    assert mean_ci95(scores) == (low, high)


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, None, 0.03]
    # sorted: 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> max(0.06, 0.04)=0.06
    assert holm(p) == pytest.approx([0.03, 0.06, None, 0.06])


def test_paired_difference_bootstrap_contains_delta_and_is_seeded():
    from harness.stats import paired_difference

    a = [1] * 30 + [0] * 10 + [1] * 40 + [0] * 20
    b = [0] * 30 + [1] * 10 + [1] * 40 + [0] * 20
    delta, (low, high), how = paired_difference(a, b)
    assert delta == pytest.approx(0.2) and low < 0.2 < high and "bootstrap" in how
    assert paired_difference(a, b) == (delta, (low, high), how)
    # the paired interval is narrower than ignoring the pairing would give (concordant items add no noise)
    unpaired_half = 1.96 * math.sqrt(0.7 * 0.3 / 100 + 0.5 * 0.5 / 100)
    assert high - low < 2 * unpaired_half
    assert paired_difference([1, 0, 1], [1, 0, 1])[1] == (0.0, 0.0)


def test_clustered_interval_matches_sandwich_formula():
    from scipy import stats as st

    from harness.stats import paired_difference

    a = [1, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 1]
    b = [0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 1]
    clusters = ["p1", "p1", "p1", "p2", "p2", "p3", "p3", "p3", "p4", "p4", "p5", "p5"]
    delta, (low, high), how = paired_difference(a, b, clusters)
    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), sum(d) / len(d)
    sums = {}
    for c, v in zip(clusters, d):
        sums[c] = sums.get(c, 0.0) + v - mean
    g = len(sums)
    se = math.sqrt(g / (g - 1) * sum(s * s for s in sums.values()) / n**2)
    z = st.norm.ppf(0.975)
    assert delta == pytest.approx(mean) and "cluster" in how
    assert (low, high) == pytest.approx((mean - z * se, mean + z * se), rel=1e-6)


def test_side_effect_ratio_and_minimum_detectable_difference():
    from scipy import stats as st

    from harness.stats import min_detectable_difference, side_effect_ratio

    assert side_effect_ratio([1, 0, 1, 1], [0, 1, 1, 0]) == pytest.approx(1 / 3)
    assert side_effect_ratio([1, 0], [1, 0]) is None
    n, p = 400, 0.5
    h = (st.norm.ppf(0.975) + st.norm.ppf(0.8)) * math.sqrt(2 / n)  # Cohen's h at 80% power
    expected = math.sin(2 * math.asin(math.sqrt(p)) / 2 + h / 2) ** 2 - p
    assert min_detectable_difference(n, p) == pytest.approx(expected, rel=1e-3)
    assert min_detectable_difference(4 * n, p) < min_detectable_difference(n, p)


def test_seeds_items_interval_widens_with_seed_variance():
    from harness.stats import seeds_items_interval

    items = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0] * 5
    same = [items, items, items]
    spread = [[1] * 50, items, [0] * 50]
    low, high = seeds_items_interval(same)
    assert low < sum(items) / 50 < high
    low2, high2 = seeds_items_interval(spread)
    assert high2 - low2 > 1.5 * (high - low)
    assert seeds_items_interval(same) == (low, high)


def test_build_rows_compares_with_base_and_rlvr_and_corrects_jointly():
    from crl_bench.leaderboard import Scores, build_rows
    from harness.stats import holm, mcnemar_exact

    def scores(method, values, seed=0, setting="-"):
        return Scores(
            model="m",
            task="t",
            method=method,
            setting=setting,
            seed=seed,
            metric="acc",
            filter="none",
            doc_ids=list(range(len(values))),
            values=values,
            run_dir=f"runs/{method}{seed}",
        )

    base = [0] * 30 + [1] * 30
    rlvr = [1] * 25 + [0] * 5 + [1] * 30
    crl0 = [1] * 15 + [0] * 15 + [1] * 28 + [0] * 2
    crl1 = [1] * 20 + [0] * 10 + [1] * 30
    rows = build_rows(
        [
            scores("base", base),
            scores("rlvr", rlvr),
            scores("crl", crl0, 0, "one-token"),
            scores("crl", crl1, 1, "one-token"),
        ]
    )
    by = {(r.method, r.seed): r for r in rows}
    raw = [
        None,
        None,
        mcnemar_exact(rlvr, base),
        None,
        mcnemar_exact(crl0, base),
        mcnemar_exact(crl0, rlvr),
        mcnemar_exact(crl1, base),
        mcnemar_exact(crl1, rlvr),
    ]
    adjusted = holm(raw)
    assert by[("rlvr", 0)].p_vs_base == pytest.approx(adjusted[2])
    assert by[("crl", 0)].p_vs_base == pytest.approx(adjusted[4])
    assert by[("crl", 0)].p_vs_rlvr == pytest.approx(adjusted[5])
    assert by[("crl", 1)].p_vs_rlvr == pytest.approx(adjusted[7])  # no rlvr seed 1: paired with seed 0
    assert by[("crl", 0)].delta_vs_base == pytest.approx((43 - 30) / 60)
    assert by[("crl", 0)].side_effects == pytest.approx(2 / 17)
    assert by[("crl", 0)].delta_vs_rlvr == pytest.approx((43 - 55) / 60)
    assert by[("base", 0)].mdd80 == by[("crl", 0)].mdd80 > 0
    pooled = by[("crl", "all")]
    assert pooled.seeds == 2 and pooled.value == pytest.approx((43 + 50) / 120)
    assert pooled.ci95[0] < pooled.value < pooled.ci95[1]


def test_board_writes_rebuild_every_row_from_the_kept_scores(tmp_path):
    """A bench run that covers part of the board: the kept rows are compared with the base now
    on the board, the Holm family spans every write, legacy rows are kept and marked."""
    import json

    from crl_bench.leaderboard import SCORES_FILE, Scores, build_rows, write

    def scores(task, method, values, setting="-", cpu=None):
        return Scores(
            model="m",
            task=task,
            method=method,
            setting=setting,
            seed=0,
            metric="acc",
            filter="none",
            doc_ids=list(range(len(values))),
            values=values,
            run_dir=f"runs/{task}/{method}",
            processor={"cpu": cpu} if cpu else None,
        )

    legacy = {
        "model": "m",
        "task": "old",
        "method": "crl",
        "setting": "one-token",
        "seed": 0,
        "metric": "acc",
        "filter": "none",
        "value": 0.5,
        "ci95": [0.4, 0.6],
        "n": 10,
        "delta_vs_base": 0.1,
        "p_vs_base": 0.2,
        "run_dir": "gone",
    }
    (tmp_path / "leaderboard.json").write_text(json.dumps({"rows": [legacy]}))
    base_a, crl_a = [0] * 20 + [1] * 20, [1] * 18 + [0] * 2 + [1] * 20
    write(tmp_path, [scores("a", "base", base_a, cpu="A"), scores("a", "crl", crl_a, "one-token", cpu="A")])
    new_base_a = [1] * 10 + [0] * 10 + [1] * 20  # a later base run of task a alone, on another machine
    write(tmp_path, [scores("a", "base", new_base_a, cpu="B")])
    base_b, crl_b = [0] * 30 + [1] * 10, [1] * 12 + [0] * 18 + [1] * 10
    write(tmp_path, [scores("b", "base", base_b), scores("b", "crl", crl_b, "one-token")])

    rows = {(r["task"], r["method"]): r for r in json.loads((tmp_path / "leaderboard.json").read_text())["rows"]}
    assert rows[("a", "crl")]["delta_vs_base"] == pytest.approx((38 - 30) / 40)  # against the new base, not the first
    expected = {
        (r.task, r.method): r
        for r in build_rows(
            [
                scores("a", "base", new_base_a),
                scores("a", "crl", crl_a, "one-token"),
                scores("b", "base", base_b),
                scores("b", "crl", crl_b, "one-token"),
            ]
        )
    }
    for key in (("a", "crl"), ("b", "crl")):
        assert rows[key]["p_vs_base"] == pytest.approx(expected[key].p_vs_base)  # one family over both writes
        assert rows[key]["holm_family"] == 2
    assert rows[("old", "crl")]["legacy"] is True and rows[("old", "crl")]["p_vs_base"] == 0.2
    assert not rows[("a", "crl")].get("legacy")
    assert rows[("a", "crl")]["other_processor"] == ["base"] and rows[("b", "crl")]["other_processor"] is None
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| old | crl † |" in table and "| a | crl ‡ |" in table and "| b | crl |" in table
    assert "Holm family: the 2 comparisons" in table
    import csv

    with open(tmp_path / "leaderboard.csv") as handle:
        marked = {(r["task"], r["method"]): r["legacy"] for r in csv.DictReader(handle)}
    assert marked[("old", "crl")] == "True" and marked[("a", "crl")] == "False"
    assert len((tmp_path / SCORES_FILE).read_text().splitlines()) == 4

    (tmp_path / SCORES_FILE).write_text("not json\n")
    with pytest.raises(ValueError, match="git checkout"):
        write(tmp_path, [scores("a", "base", base_a)])


def test_an_undetectable_gain_is_said_so(tmp_path):
    """With 3 items and a base at 2/3, not even a perfect score is detectable: the row stores
    null (valid JSON, not NaN) and the tables say "not detectable"."""
    import json

    from crl_bench.leaderboard import Scores, write

    base = Scores(
        model="m",
        task="t",
        method="base",
        setting="-",
        seed=0,
        metric="acc",
        filter="none",
        doc_ids=[0, 1, 2],
        values=[1.0, 1.0, 0.0],
        run_dir="runs/base",
    )
    write(tmp_path, [base])
    row = json.loads((tmp_path / "leaderboard.json").read_text(), parse_constant=lambda c: pytest.fail(c))["rows"][0]
    assert row["mdd80"] is None
    assert "t acc: not detectable (n = 3)" in (tmp_path / "leaderboard.md").read_text()


def test_a_smaller_budget_never_replaces_a_larger_budgets_row(tmp_path):
    """Issue 24, item 7: a row's identity includes the budget that made it. A cold `make bench`
    (laptop budget) on a board holding larger-budget rows adds its rows beside them; rows from
    before budgets were recorded (and legacy rows) stay; CRL is compared with RLVR at its own budget."""
    import json

    from crl_bench.leaderboard import Scores, write

    docs = list(range(60))

    def scores(method, setting, budget, hits, **extra):
        values = [float(d < hits) for d in docs]
        return Scores("m", "t", method, setting, 0, "acc", "none", docs, values, "r", budget=budget, **extra)

    big = [scores("base", "-", "-", 20), scores("rlvr", "-", "45x4x8", 40), scores("crl", "one-token", "45x4x8", 30)]
    write(tmp_path, big)
    small = [scores("base", "-", "-", 20), scores("rlvr", "-", "20x4x8", 22), scores("crl", "one-token", "20x4x8", 21)]
    write(tmp_path, small)
    rows = {(r["method"], r["budget"]): r for r in json.loads((tmp_path / "leaderboard.json").read_text())["rows"]}
    assert set(rows) == {("base", "-"), ("rlvr", "45x4x8"), ("crl", "45x4x8"), ("rlvr", "20x4x8"), ("crl", "20x4x8")}
    assert rows["rlvr", "45x4x8"]["value"] == 40 / 60 and rows["rlvr", "20x4x8"]["value"] == 22 / 60
    # CRL against RLVR of its own budget; base against the largest budget's RLVR
    assert rows["crl", "45x4x8"]["delta_vs_rlvr"] == pytest.approx(-10 / 60)
    assert rows["crl", "20x4x8"]["delta_vs_rlvr"] == pytest.approx(-1 / 60)
    assert rows["base", "-"]["delta_vs_rlvr"] == pytest.approx(-20 / 60)
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| t | rlvr | - | 0 | 45x4x8 | acc |" in table and "| t | rlvr | - | 0 | 20x4x8 | acc |" in table
    # scores stored before budgets were recorded: RL ones are "unrecorded" and survive any new run
    stored = (tmp_path / "leaderboard_scores.jsonl").read_text().splitlines()
    old = [json.loads(line) for line in stored]
    for record in old:
        if record["budget"] == "45x4x8":
            del record["budget"]
    (tmp_path / "leaderboard_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    write(tmp_path, small)
    rows = {(r["method"], r["budget"]) for r in json.loads((tmp_path / "leaderboard.json").read_text())["rows"]}
    assert ("rlvr", "unrecorded") in rows and ("rlvr", "20x4x8") in rows and ("crl", "unrecorded") in rows


def test_rows_evaluated_off_the_pinned_stack_are_marked(tmp_path):
    """Issue 24, item 8: a row whose evaluation used library versions other than constraints.txt's
    pins is marked § in every table, naming the libraries."""
    import json

    from crl_bench.leaderboard import Scores, write
    from harness.manifest import pinned_versions

    pins = pinned_versions()
    assert pins["transformers"] and pins["torch"] == "2.13.0"
    docs = list(range(20))
    pinned = {**pins, "torch": "2.13.0+cpu"}  # the local CPU wheel's version satisfies the pin
    older = {**pins, "transformers": "5.23.0"}
    write(
        tmp_path,
        [
            Scores("m", "t", "base", "-", 0, "acc", "none", docs, [1.0] * 10 + [0.0] * 10, "r", libraries=pinned),
            Scores("m", "t", "rlvr", "-", 0, "acc", "none", docs, [1.0] * 12 + [0.0] * 8, "r", libraries=older),
        ],
    )
    rows = {r["method"]: r for r in json.loads((tmp_path / "leaderboard.json").read_text())["rows"]}
    assert rows["base"]["other_stack"] is None
    assert rows["rlvr"]["other_stack"] == [f"transformers 5.23.0 (pinned {pins['transformers']})"]
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| t | rlvr § |" in table and "| t | base |" in table and "§ evaluated with library versions" in table
    assert "other_stack" in (tmp_path / "leaderboard.csv").read_text().splitlines()[0]


def test_a_random_reward_control_is_no_reference_and_is_marked_when_it_gains(tmp_path):
    """Issue 26's control: RLVR trained on a random reward is not the RLVR that other rows are
    compared with, and a control still above base (Holm p < 0.05) is marked ¶ with a note."""
    import json

    from crl_bench.leaderboard import Scores, write

    docs = list(range(60))

    def scores(method, setting, hits):
        values = [float(d < hits) for d in docs]
        return Scores("m", "t", method, setting, 0, "acc", "none", docs, values, "r", budget="4x2x8")

    write(
        tmp_path,
        [
            scores("base", "-", 10),
            scores("rlvr", "-", 30),
            scores("rlvr", "random-reward", 40),  # gained: flagged
            scores("rl-vector", "random-reward", 11),  # vanished: not flagged
            scores("crl-lm", "-", 20),
        ],
    )
    rows = {(r["method"], r["setting"]): r for r in json.loads((tmp_path / "leaderboard.json").read_text())["rows"]}
    assert rows["crl-lm", "-"]["delta_vs_rlvr"] == pytest.approx(-10 / 60)  # against the real RLVR (30), not 40
    assert rows["rlvr", "random-reward"]["delta_vs_rlvr"] == pytest.approx(10 / 60)
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| t | rlvr ¶ | random-reward |" in table and "| t | rl-vector | random-reward |" in table
    assert "¶ a control that should not have gained" in table


def test_recovered_share_is_the_students_gain_over_the_teachers_with_a_paired_interval():
    from harness.stats import recovered_share

    base = [0] * 60 + [1] * 40
    teacher = [1] * 40 + [0] * 20 + [1] * 40  # gains 40 items
    student = [1] * 20 + [0] * 40 + [1] * 40  # gains 20 of them
    share, (low, high) = recovered_share(base, teacher, student)
    assert share == pytest.approx(0.5) and low < 0.5 < high and 0.2 < low and high < 0.8
    assert recovered_share(base, base, student) == (None, None)  # the teacher gained nothing: no share
    small = [1] * 2 + [0] * 58 + [1] * 40  # the teacher gains 2 items: resamples where it gains none
    share, interval = recovered_share(base, small, student)
    assert share == pytest.approx(10.0) and interval is None  # a point, no interval (was [nan, nan])


def test_report_rebuilds_rows_from_the_stored_scores(tmp_path):
    """`crl-bench report` rebuilds every row from the per-item scores with the current code (a
    fixed mark or statistic reaches committed rows without rerunning them), keeping the bench
    run's provenance; legacy rows (no stored scores) stay as they were."""
    import json

    from crl_bench.leaderboard import Scores, rebuild, write

    docs = list(range(20))
    write(
        tmp_path,
        [
            Scores("m", "t", "base", "-", 0, "acc", "none", docs, [1.0] * 10 + [0.0] * 10, "r"),
            Scores("m", "t", "rlvr", "-", 0, "acc", "none", docs, [1.0] * 16 + [0.0] * 4, "r"),
        ],
        bench_config={"profile": "laptop"},
    )
    board = tmp_path / "leaderboard.json"
    written = json.loads(board.read_text())
    stale = {**written, "rows": [{**r, "value": 0.5, "other_stack": ["torch 2.13.0+cpu (pinned 2.13.0)"]}
                                 for r in written["rows"]]}  # fmt: skip
    legacy = {**written["rows"][0], "task": "old", "value": 0.25}
    stale["rows"].append(legacy)
    board.write_text(json.dumps(stale))
    rebuild(tmp_path)
    after = json.loads(board.read_text())
    rows = {(r["task"], r["method"]): r for r in after["rows"]}
    assert rows[("t", "rlvr")]["value"] == 0.8 and rows[("t", "base")]["value"] == 0.5
    assert rows[("t", "rlvr")]["other_stack"] is None
    assert rows[("old", "base")]["value"] == 0.25 and rows[("old", "base")]["legacy"]
    assert after["manifest"]["bench_config"] == {"profile": "laptop"}
    assert after["manifest"]["rebuilt_by"] == "crl-bench report"
    assert "| t | rlvr |" in (tmp_path / "leaderboard.md").read_text()
