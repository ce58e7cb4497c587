"""The one GRPO trainer's random-reward control (issue 26): coin flips with the step's mean
reward carry no information about which rollout was right, so GRPO's group-normalised
advantages average zero for right and wrong rollouts alike; the control's run lives beside
the real one, whose fingerprint it leaves alone."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from rl.budget import Spent
from rl.grpo import RewardMeter


def _advantages(rewards: list[float]) -> torch.Tensor:
    r = torch.tensor(rewards)
    return (r - r.mean()) / (r.std() + 1e-4)  # TRL's group-relative advantage of one prompt's group


def test_random_reward_gives_no_learning_signal_on_average():
    def right(prompts, completions):
        return [float(c == "right") for c in completions]

    completions = ["right"] * 3 + ["wrong"] * 5  # one prompt's group of 8: mean reward 3/8
    task = RewardMeter(right, [], Spent())
    assert (_advantages(task([""] * 8, completions))[:3] > 0).all()  # the task's reward: right ones are favoured
    control = RewardMeter(right, [], Spent(), random_seed=0)
    by_kind: dict[str, list[float]] = {"right": [], "wrong": []}
    flips = []
    for _ in range(4000):
        rewards = control([""] * 8, completions)
        flips += rewards
        for completion, advantage in zip(completions, _advantages(rewards).tolist()):
            by_kind[completion].append(advantage)
        assert control.last_mean == 3 / 8  # the curve still shows the task's reward
    assert abs(statistics.mean(flips) - 3 / 8) < 0.01  # the same mean
    assert abs(statistics.mean(by_kind["right"])) < 0.03 and abs(statistics.mean(by_kind["wrong"])) < 0.03
    # a resumed run draws the same flips: they are seeded by the rollouts spent so far
    again = RewardMeter(right, [], Spent(rollouts=8), random_seed=0)
    first = RewardMeter(right, [], Spent(), random_seed=0)
    first([""] * 8, completions)
    assert first([""] * 8, completions) == again([""] * 8, completions)


def test_the_control_has_its_own_run_and_leaves_the_real_fingerprint_alone(tmp_path):
    from rl.rlvr.config import RLVRConfig
    from rl.runs import run_dir_for

    real = RLVRConfig(task="arith_mc", runs_dir=str(tmp_path))
    control = RLVRConfig(task="arith_mc", runs_dir=str(tmp_path), reward="random")
    assert "reward" not in real.fingerprint_settings()  # runs trained before the control keep their fingerprint
    assert real.fingerprint() != control.fingerprint()
    assert run_dir_for(control, "rlvr").parts[-3] == "rlvr-random-reward"
    assert run_dir_for(real, "rlvr").parts[-3] == "rlvr"


def test_bench_plans_the_ladder_and_the_controls(tiny_dir, tiny_sae_dir, tmp_path):
    """What bench trains beyond RLVR: each rung per seed on RLVR's budget and temperature, and with
    --controls random-reward one random-reward run of RLVR and of each GRPO rung (first seed)."""
    from crl_bench.bench_config import BenchConfig
    from crl_bench.ladder import ladder_runs

    settings = tmp_path / "rl.yaml"
    settings.write_text("arith_mc: {steps: 3, rlvr: {temperature: 0.7}, crl-lm: {k: 2}}\n")
    common = dict(model=tiny_dir, tasks="arith_mc", budget="smoke", device="cpu", runs_dir=str(tmp_path))
    config = BenchConfig(**common, sae=tiny_sae_dir, controls="random-reward", rl_settings=str(settings))
    runs = [
        (method, setting, getattr(c, "reward", "task"), c.seed, c.steps, c.temperature)
        for method, setting, c in ladder_runs(config, "arith_mc")
    ]
    assert runs == [
        ("rl-vector", "-", "task", 0, 3, 0.7),
        ("crl-lm", "-", "task", 0, 3, 0.7),
        ("csft", "-", "task", 0, 3, 0.7),  # distilled, so it has no random-reward control
        ("rlvr", "random-reward", "random", 0, 3, 0.7),
        ("rl-vector", "random-reward", "random", 0, 3, 0.7),
        ("crl-lm", "random-reward", "random", 0, 3, 0.7),
    ]
    assert next(c for m, _, c in ladder_runs(config, "arith_mc") if m == "crl-lm").k == 2
    # C-SFT distils RLVR's run of its seed
    teacher = next(c for m, _, c in ladder_runs(config, "arith_mc") if m == "csft").teacher
    assert Path(teacher).parts[-3:] == ("rlvr", "arith_mc", "seed0")
    plain = BenchConfig(**common, sae="none", ladder="rl-vector")
    assert [(m, s) for m, s, _ in ladder_runs(plain, "arith_mc")] == [("rl-vector", "-")]
    import pytest

    with pytest.raises(ValueError, match="unknown --ladder rungs lora"):
        BenchConfig(**common, ladder="lora")
    with pytest.raises(ValueError, match="unknown --controls shuffled"):
        BenchConfig(**common, controls="shuffled")


def test_the_ladder_budget_file_is_the_cpu_preset_on_three_seeds():
    from pathlib import Path

    from rl.budget import Budget

    path = Path(__file__).resolve().parent.parent / "configs" / "ladder-cpu-3seeds.yaml"
    three, cpu = Budget.resolve(str(path)), Budget.resolve("cpu")
    assert three.seeds == [0, 1, 2] and three.rollouts == cpu.rollouts == 1280
    assert Budget.resolve(str(path), generation=True).rollouts == Budget.resolve("cpu", generation=True).rollouts


def test_each_run_has_its_own_results_folder_and_a_reused_one_is_published_again(tmp_path):
    """Seeds, budgets and the control each get a folder in results/ (`<budget>-seed<k>`), so none
    replaces another's curve; a finished run that bench reuses is copied in again."""
    from rl.rlvr.config import RLVRConfig
    from rl.runs import publish_run, run_dir_for

    common = dict(task="arith_mc", runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))
    configs = [
        RLVRConfig(**common, seed=0),
        RLVRConfig(**common, seed=1),
        RLVRConfig(**common, seed=0, steps=20),
        RLVRConfig(**common, seed=0, reward="random"),
    ]
    assert publish_run(configs[0], "rlvr") is None  # nothing trained yet
    folders = []
    for i, config in enumerate(configs):
        run_dir = run_dir_for(config, "rlvr")
        run_dir.mkdir(parents=True, exist_ok=True)
        budget = {"steps": config.steps or 40, "prompts_per_step": 4, "samples_per_prompt": 8}
        (run_dir / "manifest.json").write_text(json.dumps({"budget": budget, "run": i}))
        (run_dir / "curve.csv").write_text(f"step\n{i}\n")
        folders.append(publish_run(config, "rlvr"))
    model = configs[0].model_results
    assert [f.relative_to(model).as_posix() for f in folders] == [
        "rlvr/arith_mc/40x4x8-seed0",
        "rlvr/arith_mc/40x4x8-seed1",
        "rlvr/arith_mc/20x4x8-seed0",
        "rlvr-random-reward/arith_mc/40x4x8-seed0",
    ]
    assert [(f / "curve.csv").read_text() for f in folders] == [f"step\n{i}\n" for i in range(4)]
    assert not (folders[0] / "features.md").exists()  # only the files the run has
    (folders[1] / "curve.csv").unlink()
    assert publish_run(configs[1], "rlvr") == folders[1] and (folders[1] / "curve.csv").read_text() == "step\n1\n"


def test_the_frozen_checksum_sees_a_frozen_weight_change_and_ignores_trained_ones():
    """Summed a million values at a time (no whole-tensor float64 copy), it is still the float64
    sum of the frozen parameters' absolute values: a changed frozen weight changes it, a changed
    LoRA weight does not."""
    from rl.runs import frozen_fingerprint

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.embed = torch.nn.Parameter(torch.randn(3 * (1 << 20) + 5))  # more than one chunk
    model.lora_A = torch.nn.Parameter(torch.randn(4, 4))
    before = frozen_fingerprint(model)
    assert before == pytest.approx(float(model.embed.detach().double().abs().sum()), rel=1e-12)
    with torch.no_grad():
        model.lora_A.add_(1.0)
    assert frozen_fingerprint(model) == before
    with torch.no_grad():
        model.embed[-1] = model.embed[-1].abs() + 1.0  # in the last, partial chunk: |w| grows by at least 1
    assert frozen_fingerprint(model) != before
