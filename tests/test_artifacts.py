"""Every artifact load validates what it reads (issue 24, item 4): NaN/inf tensors, truncated
safetensors and JSON, unknown config keys, and artifacts made for another model are refused
with one error that names the file (or the model) and the fix, before any model is loaded."""

import json
import shutil
from pathlib import Path

import pytest
import torch


def _vectors(tmp_path: Path, model: str, value: float = 1.0) -> Path:
    from harness.vectors import SteeringVectors

    return SteeringVectors({2: torch.full((64,), value)}, method="probe", model=model).save(tmp_path / "vec")


def test_vectors_with_nan_truncated_or_unknown_keys_are_refused(tmp_path, tiny_dir):
    from safetensors.torch import save_file

    from harness.vectors import VECTORS_FILE, SteeringVectors

    run = _vectors(tmp_path, tiny_dir)
    assert SteeringVectors.load(run).vectors[2].shape == (64,)
    save_file({"layer.2": torch.tensor([float("nan")] * 64)}, str(run / VECTORS_FILE))
    with pytest.raises(ValueError, match=r"vectors.safetensors: tensor 'layer.2' holds NaN or inf; rebuild it"):
        SteeringVectors.load(run)
    (run / VECTORS_FILE).write_bytes((run / VECTORS_FILE).read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match=r"vectors.safetensors cannot be read as safetensors .* truncated or corrupt"):
        SteeringVectors.load(run)
    run = _vectors(tmp_path / "b", tiny_dir)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "coeficient": 2.0}))
    with pytest.raises(ValueError, match=r"config.json: unknown keys coeficient \(did you mean coefficient\?\)"):
        SteeringVectors.load(run)
    (run / "config.json").write_text(json.dumps(config)[:30])
    with pytest.raises(ValueError, match=r"config.json is not valid JSON .* truncated or corrupt; rebuild it"):
        SteeringVectors.load(run)


def test_an_artifact_made_for_another_model_is_refused_unless_overridden(tmp_path, tiny_dir):
    from harness.lm_models import VectorSteeredLM

    other = tmp_path / "other-model"
    shutil.copytree(tiny_dir, other)  # the same width: only the name in config.json tells them apart
    run = _vectors(tmp_path, str(other))
    with pytest.raises(ValueError, match="was made for the model .*other-model.*allow_other_model=True"):
        VectorSteeredLM(pretrained=tiny_dir, steer=str(run), device="cpu", dtype="float32")
    lm = VectorSteeredLM(pretrained=tiny_dir, steer=str(run), device="cpu", dtype="float32", allow_other_model=True)
    assert lm.steering.model == str(other)
    assert VectorSteeredLM(pretrained=str(other), steer=str(run), device="cpu", dtype="float32").steering


def _controller_run(tmp_path: Path, model: str) -> Path:
    from rl.crl.checkpoints import save_tensors
    from rl.crl.controller import CONTROLLER_TYPES, Controller

    run = tmp_path / "crl"
    controller = Controller(64, 8, 1, 16)
    save_tensors(run / "controller.safetensors", controller.state_dict())
    save_tensors(
        run / "bank.safetensors",
        {"directions.2": torch.randn(8, 64), "scales.2": torch.ones(8), "ids.2": torch.arange(8)},
    )
    config = {
        "model": model,
        "controller": CONTROLLER_TYPES["flat"],
        "layers_resolved": [2],
        "d_model": 64,
        "d_sae": 8,
        "hidden": 16,
    }
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_controllers_are_checked_for_their_model_and_their_tensors(tmp_path, tiny_dir):
    from rl.crl.controller import load_controller
    from rl.crl.lm import CRLSteeredLM

    other = tmp_path / "other-model"
    shutil.copytree(tiny_dir, other)
    run = _controller_run(tmp_path, str(other))
    with pytest.raises(ValueError, match="CRL controller .* was made for the model .*other-model"):
        CRLSteeredLM(pretrained=tiny_dir, controller=str(run), device="cpu", dtype="float32")
    load_controller(run)  # intact: loads
    tensors = (run / "controller.safetensors").read_bytes()
    (run / "controller.safetensors").write_bytes(tensors[: len(tensors) // 2])
    with pytest.raises(ValueError, match=r"controller.safetensors cannot be read .* retrain it with"):
        load_controller(run)
    from rl.crl.checkpoints import save_tensors

    save_tensors(run / "controller.safetensors", {"something.else": torch.zeros(2)})
    with pytest.raises(
        ValueError,
        match=r"controller.safetensors does not hold the tensors this artifact needs \(missing \[.coef_head.bias",
    ):
        load_controller(run)


def test_a_truncated_stage_record_is_redone_and_says_why(tiny_dir, tmp_path):
    from crl_bench.bench_config import BenchConfig
    from crl_bench.stages import STAGE, plan

    config = BenchConfig(
        model=tiny_dir,
        tasks=["arith_mc"],
        vectors="none",
        rlvr=False,
        ladder=[],
        crl="none",
        sae="none",
        device="cpu",
        runs_dir=str(tmp_path / "runs"),
    )
    (stage,) = plan(config)
    stage.run_dir.mkdir(parents=True)
    (stage.run_dir / STAGE).write_text('{"fingerprint": "')
    assert not stage.done()
    assert "stage.json is truncated or corrupt: evaluating again" in stage.why_not_reused()
