"""Figures are generated from the results files alone, as PNG and PDF."""

import json


def test_figures_from_results_files(tmp_path):
    from crl_bench.plots import all_figures

    def row(method, setting, value):
        return {
            "model": "m",
            "task": "t",
            "method": method,
            "setting": setting,
            "seed": 0,
            "metric": "acc",
            "filter": "none",
            "value": value,
            "ci95": [value - 0.05, value + 0.05],
        }

    (tmp_path / "leaderboard.json").write_text(
        json.dumps(
            {
                "rows": [
                    row("base", "-", 0.5),
                    row("rlvr", "-", 0.8),
                    row("crl", "one-token", 0.7),
                    row("vector", "probe", 0.6),
                    {**row("crl", "one-token", 0.7), "seed": "all"},
                ]
            }
        )
    )
    (tmp_path / "m").mkdir()  # the model's own folder: its analyses and figures
    (tmp_path / "m" / "similarity.json").write_text(
        json.dumps(
            {
                "rows": [
                    {"task": "t", "method": "base", "gap_closed": 0.0, "answer_agreement": 0.6},
                    {"task": "t", "method": "crl:one-token", "gap_closed": 0.5, "answer_agreement": 0.8},
                ]
            }
        )
    )
    (tmp_path / "m" / "overlap.json").write_text(
        json.dumps(
            {
                "tasks": {
                    "t": {
                        "k": 20,
                        "top": {"rlvr": [1, 2], "crl:one-token": [2, 3]},
                        "pairs": [{"a": "crl:one-token", "b": "rlvr", "jaccard": 1 / 3}],
                    }
                }
            }
        )
    )
    written = all_figures(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["accuracy.pdf", "accuracy.png", "overlap.pdf", "overlap.png", "similarity.pdf", "similarity.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    first = {p.name: p.read_bytes() for p in written}
    assert {p.name: p.read_bytes() for p in all_figures(tmp_path)} == first  # regenerating changes no byte
    assert all(p.parent == tmp_path / "m" / "figures" for p in written)
    (tmp_path / "m" / "similarity.json").unlink()
    assert "similarity.png" not in {p.name for p in all_figures(tmp_path)}
