"""The plain `lm_eval` CLI finds our models and tasks; `crl-bench bench` resumes and fails cleanly."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from harness.vectors import SteeringVectors

BIN = Path(sys.executable).parent


def test_entry_points_declared_for_newer_lm_eval():
    names = {ep.name for ep in metadata.entry_points(group="lm_eval.models")}
    assert {"vector_steered", "crl_steered", "rlvr_lora"} <= names


def test_plain_lm_eval_cli_runs_vector_steered_on_our_task(tiny_dir, tmp_path):
    SteeringVectors({1: torch.randn(64)}, coefficient=2.0).save(tmp_path / "steer")
    cmd = [
        str(BIN / "lm_eval"),
        "--model",
        "vector_steered",
        "--model_args",
        f"pretrained={tiny_dir},steer={tmp_path / 'steer'},dtype=float32",
        "--tasks",
        "toy_sentiment",
        "--limit",
        "4",
        "--device",
        "cpu",
        "--batch_size",
        "4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vector_steered" in done.stdout and "|toy_sentiment|" in done.stdout.replace(" ", "")


def test_plain_lm_eval_cli_lists_local_gsm8k_when_data_is_set(tmp_path):
    code = (
        "from lm_eval.tasks import TaskManager; tm = TaskManager(); "
        "print(tm.task_index['gsm8k'].yaml_path); print('arc' in tm.all_groups)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CRL_BENCH_DATA": "/somewhere"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [
        str(Path(__file__).resolve().parent.parent / "tasks" / "local" / "gsm8k.yaml"),
        "True",
    ]
    env = {k: v for k, v in os.environ.items() if k != "CRL_BENCH_DATA"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert "site-packages/lm_eval/tasks/gsm8k" in done.stdout  # built-in when no local data


def _bench(tmp_path, *extra, sae="none"):
    cmd = [
        str(BIN / "crl-bench"),
        "bench",
        "--tasks",
        "toy_sentiment,arith_mc",
        "--limit",
        "3",
        "--sae",
        sae,
        "--sae-sequences",
        "32",
        "--results-dir",
        str(tmp_path / "results"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--dtype",
        "float32",
        "--vectors",
        "mean_diff,das",
        "--vector-val-limit",
        "4",
        "--no-rlvr",
        "--crl",
        "none",
        "--ladder",
        "none",
        "--no-corrsteer",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_bench_writes_leaderboard_and_resumes(tiny_dir, tiny_sae_dir, tmp_path):
    from harness.models import model_results

    mine = model_results(tmp_path / "results", tiny_dir)  # the model's own folder of results
    first = _bench(tmp_path, "--model", tiny_dir, sae=tiny_sae_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    # the SAE stage wrote the SAE's quality record and cards
    assert "SAE sae (layer 2, 64 features)" in first.stderr
    assert (Path(tiny_sae_dir) / "quality.json").exists() and (Path(tiny_sae_dir) / "feature_cards.json").exists()
    assert (
        json.loads((Path(tiny_sae_dir) / "quality.json").read_text())["settings"]["sequences"] == 32
    )  # --sae-sequences
    assert "| sae | 2 | 64 |" in (tmp_path / "results" / "saes" / "README.md").read_text()
    board = json.loads((tmp_path / "results" / "leaderboard.json").read_text())
    rows = {(r["task"], r["method"], r["setting"]): r for r in board["rows"]}
    # DAS needs a two-answer readout: toy_sentiment has one, arith_mc's correctness contrast has not
    assert set(rows) == {
        ("toy_sentiment", "base", "-"),
        ("arith_mc", "base", "-"),
        ("toy_sentiment", "vector", "mean_diff"),
        ("toy_sentiment", "vector", "das"),
        ("arith_mc", "vector", "mean_diff"),
    }
    for row in rows.values():
        assert row["n"] == 3 and row["metric"] == "acc"
        assert row["ci95"][0] <= row["value"] <= row["ci95"][1]
        assert Path(row["run_dir"], "samples.jsonl").exists() and Path(row["run_dir"], "manifest.json").exists()
        if row["method"] == "base":
            assert row["delta_vs_base"] == 0.0
        else:
            assert row["p_vs_base"] is not None
    sweep = json.loads((mine / "vectors" / "arith_mc" / "sweep.json").read_text())
    assert "das" in sweep["skipped"] and sweep["n"]["validation_documents"] == 4
    assert (mine / "vectors" / "toy_sentiment" / "sweep.png").exists()
    assert (tmp_path / "results" / "leaderboard.md").exists() and (tmp_path / "results" / "leaderboard.csv").exists()
    # analyses: no RLVR here, so no similarity rows; the vectors' features at the SAE layer
    assert json.loads((mine / "similarity.json").read_text())["rows"] == []
    overlap = json.loads((mine / "overlap.json").read_text())["tasks"]
    assert overlap["arith_mc"]["layer"] == 2 and len(overlap["arith_mc"]["top"]["vector:mean_diff"]) == 20
    circuits = json.loads((mine / "circuits.json").read_text())["tasks"]
    assert set(circuits["toy_sentiment"]["methods"]) == {"vector:mean_diff", "vector:das"}
    assert circuits["toy_sentiment"]["pairs"][0]["components_p"] <= 1
    parts = json.loads((mine / "breakdown" / "arith_mc.json").read_text())  # per group of items
    assert parts["by"] == "op" and {r["method"] for r in parts["groups"]} == {"base", "vector:mean_diff"}
    assert sum(r["n"] for r in parts["groups"] if r["method"] == "base" and r["group"] != "all items") == 3
    assert "breakdown: " in first.stderr and (mine / "figures" / "breakdown-toy_sentiment.png").exists()
    samples = Path(rows[("arith_mc", "vector", "mean_diff")]["run_dir"], "samples.jsonl")
    stamp = samples.stat().st_mtime_ns
    quality_stamp = (Path(tiny_sae_dir) / "quality.json").stat().st_mtime_ns
    import shutil

    shutil.rmtree(mine / "vectors")
    again = _bench(tmp_path, "--model", tiny_dir, sae=tiny_sae_dir)
    assert "5 evaluation stages, 5 reused" in again.stderr and "vectors:" not in again.stderr
    # a reused sweep still publishes its table and plot into the results
    assert json.loads((mine / "vectors" / "arith_mc" / "sweep.json").read_text())["points"] == sweep["points"]
    assert (mine / "vectors" / "toy_sentiment" / "sweep.md").exists()
    assert samples.stat().st_mtime_ns == stamp
    assert (Path(tiny_sae_dir) / "quality.json").stat().st_mtime_ns == quality_stamp
    forced = _bench(tmp_path, "--model", tiny_dir, "--force")
    assert forced.returncode == 0 and samples.stat().st_mtime_ns != stamp


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "nonsense_task"], "unknown task 'nonsense_task'"),
        (["--model", "./no/such/model"], "does not exist"),
        (["--limit", "0"], "--limit must be a positive"),
        (["--rl-settings", "no-such.yaml"], "--rl-settings no-such.yaml: no such file"),
        (["--model", "nobody/no-such-model", "--tasks", "arith_mc"], "unknown model 'nobody/no-such-model'"),
    ],
)
def test_bench_bad_input_gives_one_clear_error_and_no_results(tmp_path, args, message):
    cmd = [
        str(BIN / "crl-bench"),
        "bench",
        "--results-dir",
        str(tmp_path / "results"),
        "--runs-dir",
        str(tmp_path / "runs"),
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


SMOKE = "3x2x4, limit 3"  # rl.budget's smoke preset (3 steps x 2 prompts x 4 samples) and the --limit


def test_bench_trains_rlvr_and_crl_and_reuses_them(tiny_dir, tiny_sae_dir, tmp_path):
    from harness.models import model_results

    mine = model_results(tmp_path / "results", tiny_dir)
    cmd = [
        str(BIN / "crl-bench"),
        "bench",
        "--model",
        tiny_dir,
        "--tasks",
        "arith_mc",
        "--limit",
        "3",
        "--sae",
        tiny_sae_dir,
        "--sae-sequences",
        "32",
        "--vectors",
        "none",
        "--crl",
        "one-token",
        "--ladder",
        "rl-vector,crl-lm,csft",
        "--budget",
        "smoke",
        "--results-dir",
        str(tmp_path / "results"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--dtype",
        "float32",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((tmp_path / "results" / "leaderboard.json").read_text())["rows"]
    assert {(r["method"], r["setting"], r["n"]) for r in rows} == {
        ("base", "-", 3),
        ("rlvr", "-", 3),
        ("crl", "one-token", 3),
        ("rl-vector", "-", 3),
        ("crl-lm", "-", 3),
        ("csft", "-", 3),
        ("corrsteer", "-", 3),
    }
    rlvr_row = next(r for r in rows if r["method"] == "rlvr")
    # each row carries the budget that made it: the smoke budget's steps x prompts x samples and the --limit
    assert {r["method"]: r["budget"] for r in rows} == {
        "base": "limit 3",
        "corrsteer": "limit 3",
        **{method: SMOKE for method in ("rlvr", "crl", "rl-vector", "crl-lm", "csft")},  # the ladder on RLVR's budget
    }
    assert Path(rlvr_row["run_dir"]).parent.parent.joinpath("adapter_model.safetensors").exists()  # <run>/eval/<fp>
    assert (mine / "rlvr" / "arith_mc" / "3x2x4-seed0" / "curve.csv").exists()
    # where the run spent its time: a row per stage that ran, in order, named by profile, budget and tasks
    timings = json.loads((mine / "bench_timings" / "full-smoke-arith_mc.json").read_text())
    stages = [(r["stage"], r["task"]) for r in timings["rows"]]
    assert stages[:7] == [  # a row per training run
        ("SAE", "-"),
        ("CorrSteer", "arith_mc"),
        ("training: RLVR", "arith_mc"),
        ("training: CRL one-token", "arith_mc"),
        ("training: rl-vector", "arith_mc"),
        ("training: crl-lm", "arith_mc"),
        ("training: csft", "arith_mc"),
    ]
    assert ("evaluation: crl one-token", "arith_mc") in stages and stages[-1] == ("figures and report", "-")
    analyses = [stage for stage, _ in stages if stage.startswith("analyses: ")]
    assert analyses == [f"analyses: {a}" for a in ("similarity", "SAE-feature overlap", "circuits", "interactions")]
    assert all(r["wall_s"] > 0 and r["peak_rss_mb"] > 100 for r in timings["rows"])
    assert timings["total_wall_s"] >= sum(r["wall_s"] for r in timings["rows"]) and timings["finished"]
    assert "| training: RLVR | arith_mc |" in (mine / "bench_timings" / "full-smoke-arith_mc.md").read_text()
    crl_row = next(r for r in rows if r["method"] == "crl")
    logged = [json.loads(line) for line in Path(crl_row["run_dir"], "interventions.jsonl").read_text().splitlines()]
    assert {e["item"] for e in logged} == {0, 1, 2} and {e["layer"] for e in logged} == {2}
    assert (mine / "crl-one-token" / "arith_mc" / "3x2x4-seed0" / "curve.csv").exists()
    # the interaction analysis of any trained controller from the CLI (one layer: nothing to interact)
    inter = subprocess.run(
        [
            str(BIN / "crl-bench"),
            "interactions",
            "--controller",
            str(Path(crl_row["run_dir"]).parent.parent),  # <controller>/eval/<settings>
            "--model",
            tiny_dir,
            "--items",
            "2",
            "--dtype",
            "float32",
            "--out",
            str(tmp_path / "i.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert inter.returncode == 0, inter.stderr[-3000:]
    assert (
        "one controlled layer" in inter.stdout and json.loads((tmp_path / "i.json").read_text())["task"] == "arith_mc"
    )
    wrong = subprocess.run(
        [str(BIN / "crl-bench"), "interactions", "--controller", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert wrong.returncode == 2 and "not a CRL run directory" in wrong.stderr and "Traceback" not in wrong.stderr
    # analyses: CRL and base against RLVR; the features RLVR and CRL implicate, and their overlap
    similarity = json.loads((mine / "similarity.json").read_text())["rows"]
    assert {(r["method"], r["n"]) for r in similarity} == {
        ("base", 3),
        ("crl:one-token", 3),
        ("rl-vector", 3),
        ("crl-lm", 3),
        ("csft", 3),
        ("corrsteer", 3),
    }
    base_sim = next(r for r in similarity if r["method"] == "base")
    assert base_sim["gap_closed"] == pytest.approx(0.0) and 0 <= base_sim["answer_agreement"] <= 1
    overlap = json.loads((mine / "overlap.json").read_text())["tasks"]["arith_mc"]
    assert len(overlap["top"]["rlvr"]) == 20
    implicated = set(overlap["top"]) | set(overlap["missing"])
    assert {"crl:one-token", "crl-lm", "csft"} <= implicated and "rl-vector" in overlap["top"]  # a vector at layer 2
    if "crl:one-token" in overlap["top"]:
        assert any({p["a"], p["b"]} == {"crl:one-token", "rlvr"} for p in overlap["pairs"])
    assert "| arith_mc | crl:one-token | 3 |" in (mine / "similarity.md").read_text()
    circuits = json.loads((mine / "circuits.json").read_text())["tasks"]["arith_mc"]
    assert {"rlvr", "crl:one-token", "rl-vector", "crl-lm", "csft", "corrsteer"} == set(circuits["methods"])
    rlvr_circuit = circuits["methods"]["rlvr"]
    assert rlvr_circuit["metric_method"] != rlvr_circuit["metric_base"] and len(rlvr_circuit["components"]) == 10
    assert "rlvr_change_recovered" in circuits["methods"]["crl:one-token"]
    assert ("crl:one-token", "rlvr") in {(p["a"], p["b"]) for p in circuits["pairs"]} and len(circuits["pairs"]) == 15
    # figures and the self-contained report
    assert (mine / "figures" / "accuracy.pdf").exists()
    page = (tmp_path / "results" / "report.html").read_text()
    for heading in (
        "Leaderboard",
        "Training budget spent",
        "Behavioural similarity to RLVR",
        "C-SFT: how much of RLVR's change a few SAE features per token write",
        "Circuit overlap",
        "CRL intervention traces",
        "Provenance",
    ):
        assert f">{heading}</h2>" in page
    assert "data:image/png;base64," in page and "http" not in page.split("<body>")[1]
    # C-SFT's fidelity to RLVR: its run's held-out KL and the share of RLVR's gain it recovers
    fidelity = json.loads((mine / "csft.json").read_text())["rows"]
    assert [(e["task"], e["seed"]) for e in fidelity] == [("arith_mc", 0)]
    assert fidelity[0]["kl_base"] > 0 and fidelity[0]["answer_agreement"] is not None  # RLVR differs from base
    assert "| arith_mc | 0 |" in (mine / "csft.md").read_text() and any(
        (mine / "csft" / "arith_mc").glob("*-seed0/features.md")
    )
    assert crl_row["run_dir"] in page
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and "RLVR on" not in again.stderr and "CRL one-token" not in again.stderr
    assert "rl-vector on" not in again.stderr and "crl-lm on" not in again.stderr  # the ladder's runs reused too
    assert (
        "csft on" not in again.stderr
        and "7 evaluation stages, 7 reused" in again.stderr
        and "CorrSteer on" not in again.stderr
    )


def test_bench_profiles_fill_in_what_the_flags_leave_open(tiny_dir):
    from crl_bench.bench_config import DEFAULT_TASKS, BenchConfig, corrsteer_config, vector_config

    laptop = BenchConfig(device="cpu")  # the embedded model on a CPU: make bench's quick run
    assert (laptop.profile, laptop.tasks, laptop.budget) == ("laptop", ["toy_sentiment", "arith_gen"], "laptop")
    # generation tasks' first 128 test items, the others' every item
    assert (laptop.limit_for("generate_until"), laptop.limit_for("multiple_choice")) == (128, None)
    full = BenchConfig(model=tiny_dir, device="cpu")
    assert (full.profile, full.tasks, full.budget) == ("full", list(DEFAULT_TASKS), "cpu")
    assert full.limit_for("generate_until") is None
    chosen = BenchConfig(device="cpu", tasks="arith_mc", budget="smoke")  # flags win over the profile
    assert (chosen.tasks, chosen.budget) == (["arith_mc"], "smoke")
    every = BenchConfig(device="cpu", generation_limit=0)  # 0: every item
    assert (every.limit_for("generate_until"), BenchConfig(device="cpu", limit=50).limit_for("generate_until")) == (
        None,
        50,
    )
    assert BenchConfig(device="cpu", limit=500).limit_for("generate_until") == 128  # the smaller of the two
    with pytest.raises(ValueError, match=r"--generation-limit must be a number of items \(0: every item\), got -1"):
        BenchConfig(device="cpu", generation_limit=-1)
    # laptop: generation tasks get the small sweep, one-token tasks the default one
    small = vector_config(BenchConfig(model=tiny_dir, profile="laptop", device="cpu"), "arith_gen", "generate_until")
    assert (small.layers, small.coefs, small.val_limit) == ([1], [0.5, 1.0, 2.0], 32)  # 4 layers: a sixth in
    usual = vector_config(BenchConfig(model=tiny_dir, profile="laptop", device="cpu"), "arith_mc", "multiple_choice")
    assert (usual.layers, usual.val_limit) == (None, 64)
    # CorrSteer checks its features on as many documents as the task's sweep
    laptop_tiny, full_tiny = (BenchConfig(model=tiny_dir, profile=p, device="cpu") for p in ("laptop", "full"))
    assert corrsteer_config(laptop_tiny, "arith_gen", "generate_until").val_limit == 32
    assert corrsteer_config(laptop_tiny, "arith_mc").val_limit == 64  # looked up: a one-token task
    assert corrsteer_config(full_tiny, "arith_gen", "generate_until").val_limit == 64
    with pytest.raises(ValueError, match="--profile must be one of auto, laptop, full, got 'fast'"):
        BenchConfig(profile="fast")


def test_bench_rl_settings_reach_each_method_and_keep_runs_matched(tmp_path):
    """--rl-settings: per task, shared fields go to RLVR and CRL alike (the budget stays matched),
    rlvr:/crl: to one method; other tasks keep the defaults; a wrong field is named."""
    from crl_bench.bench_config import BenchConfig, crl_configs, rlvr_configs

    settings = tmp_path / "rl.yaml"
    settings.write_text(
        "arith_gen:\n  steps: 100\n  prompts_per_step: 2\n  checkpoint_every: 5\n"
        "  rlvr: {temperature: 0.5, learning_rate: 5e-5}\n  crl: {policy: flat}\n"
    )
    config = BenchConfig(device="cpu", tasks="arith_gen,arith_mc", budget="cpu", rl_settings=str(settings))
    (rlvr,) = rlvr_configs(config, "arith_gen")
    (crl,) = crl_configs(config, "arith_gen", "generate_until")
    assert (rlvr.steps, rlvr.prompts_per_step, rlvr.checkpoint_every, rlvr.budget) == (100, 2, 5, "cpu")
    assert (rlvr.temperature, rlvr.learning_rate) == (0.5, 5e-5)  # YAML reads 5e-5 as a string
    assert (crl.steps, crl.prompts_per_step, crl.policy, crl.temperature) == (100, 2, "flat", 1.0)
    assert rlvr.resolved_budget(True) == crl.resolved_budget(True)
    (other,) = rlvr_configs(config, "arith_mc")
    assert (other.steps, other.temperature) == (None, 1.0)
    assert (
        rlvr.fingerprint()
        != rlvr_configs(BenchConfig(device="cpu", tasks="arith_gen", budget="cpu"), "arith_gen")[0].fingerprint()
    )
    for bad, message in [
        ("arith_gen: {temprature: 0.5}", "arith_gen: temprature cannot be set there"),
        ("arith_gen: {rlvr: {policy: gated}}", "rlvr: policy cannot be set"),
        ("arith_gen: {seed: 3}", "seed cannot be set there"),
        ("arith_gen: {rlvr: {temperature: hot}}", "temperature must be a number"),
        ("- arith_gen", "expected a mapping"),
    ]:
        settings.write_text(bad)
        with pytest.raises(ValueError, match=message):
            BenchConfig(device="cpu", tasks="arith_gen", rl_settings=str(settings))


def test_stage_times_are_written_after_every_stage(tmp_path):
    """A bench run that stops (killed, out of memory, out of time) keeps the table of the stages it
    finished, marked unfinished; the run's last write marks it finished."""
    import json

    from crl_bench.timings import StageTimes

    times = StageTimes()
    times.after_each = lambda: times.write(tmp_path, "t", "crl-bench bench", {}, finished=False)
    with times("SAE"):
        pass
    first = json.loads((tmp_path / "t.json").read_text())
    assert [r["stage"] for r in first["rows"]] == ["SAE"] and not first["finished"]
    assert "**Unfinished**" in (tmp_path / "t.md").read_text()
    with pytest.raises(RuntimeError), times("RLVR training"):
        raise RuntimeError("killed")
    assert [r["stage"] for r in json.loads((tmp_path / "t.json").read_text())["rows"]] == ["SAE", "RLVR training"]
    times.write(tmp_path, "t", "crl-bench bench", {})
    assert json.loads((tmp_path / "t.json").read_text())["finished"]
    assert "Unfinished" not in (tmp_path / "t.md").read_text()

    # no run's table is lost: the same command run again keeps its finished table until it finishes
    # too, and another command of the same profile, budget and tasks gets a table of its own
    again = StageTimes()
    with again("SAE"):
        pass
    again.write(tmp_path, "t", "crl-bench bench", {}, finished=False)
    assert len(json.loads((tmp_path / "t.json").read_text())["rows"]) == 2
    assert not json.loads((tmp_path / "t.unfinished.json").read_text())["finished"]
    again.write(tmp_path, "t", "crl-bench bench", {})
    assert (
        len(json.loads((tmp_path / "t.json").read_text())["rows"]) == 1
        and not (tmp_path / "t.unfinished.json").exists()
    )
    other = again.write(tmp_path, "t", "crl-bench bench --ladder csft", {}, finished=False)
    assert other.name.startswith("t-") and other.name != "t.md" and len(list(tmp_path.glob("t-*.json"))) == 1
    assert json.loads((tmp_path / "t.json").read_text())["command"] == "crl-bench bench"


def test_bench_trains_the_auto_saes_of_every_layer_it_needs_in_one_pass(tiny_dir):
    """An `auto` SAE at the SAE's layer and, when the multi-layer CRL setting runs, at its other
    layers too: the SAE stage trains them together (`train_saes`), not one per CRL run."""
    from crl_bench.bench import _auto_sae_layers
    from crl_bench.bench_config import BenchConfig

    kinds = {"toy_sentiment": "multiple_choice", "arith_gen": "generate_until"}
    both = BenchConfig(model=tiny_dir, device="cpu", tasks="toy_sentiment,arith_gen")
    assert _auto_sae_layers(both, kinds) == [2, 1]  # 4 layers: the middle one, then a third in
    one_token = BenchConfig(model=tiny_dir, device="cpu", tasks="toy_sentiment,arith_gen", crl="one-token,generation")
    assert _auto_sae_layers(one_token, kinds) == [2]
    assert _auto_sae_layers(
        BenchConfig(model=tiny_dir, device="cpu", tasks="arith_gen"), {"arith_gen": "generate_until"}
    ) == [2]
    assert _auto_sae_layers(BenchConfig(model=tiny_dir, device="cpu", tasks="toy_sentiment", sae="none"), kinds) == []
