"""Stage and run identity includes what was read, by content (issue 24, item 2): replacing a
model folder's weights, editing the data behind CRL_BENCH_DATA, or switching a task between
its local copy and lm-eval's built-in changes the fingerprint, and the rerun says why."""

import shutil

from tests.conftest import SHARED_DATA, needs_data


def _tiny_copy(tiny_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_dir, target)
    return target


def test_replacing_a_model_folders_weights_changes_its_identity(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from harness.identity import changed, model_identity

    model = _tiny_copy(tiny_dir, tmp_path)
    before = model_identity(str(model))
    assert model_identity(str(model)) == before  # stable when nothing changed
    weights = next(model.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0  # new weights, same names, shapes and file size
    save_file(tensors, str(weights), metadata={"format": "pt"})
    after = model_identity(str(model))
    assert after != before and changed({"model": before}, {"model": after}) == ["model.files"]
    assert torch.equal(load_file(str(weights))[name], tensors[name])


@needs_data
def test_task_identity_follows_its_data_and_which_definition_resolved(tmp_path, monkeypatch):
    from harness.identity import changed, task_identity
    from harness.tasks import task_manager

    data = tmp_path / "data"
    shutil.copytree(SHARED_DATA / "boolq", data / "boolq")
    monkeypatch.setenv("CRL_BENCH_DATA", str(data))
    local = task_identity("boolq", task_manager(names=["boolq"]))
    assert local["source"] == "crl-bench local copy" and "data" in local
    assert task_identity("boolq", task_manager(names=["boolq"])) == local
    with open(data / "boolq" / "validation.jsonl", "a") as handle:  # one more document
        handle.write('{"question": "is this new", "passage": "It is.", "idx": 99999, "label": 1}\n')
    edited = task_identity("boolq", task_manager(names=["boolq"]))
    assert changed(local, edited) == ["data"]
    monkeypatch.delenv("CRL_BENCH_DATA")  # unset: the name resolves to lm-eval's built-in task
    builtin = task_identity("boolq", task_manager(names=["boolq"]))
    assert builtin["source"] == "lm-eval built-in" and "data" not in builtin


def test_training_runs_and_sweeps_fingerprint_their_inputs(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from baselines.train import VectorTrainConfig
    from rl.rlvr.config import RLVRConfig

    model = _tiny_copy(tiny_dir, tmp_path)
    rlvr, sweep = RLVRConfig(model=str(model), task="arith_mc"), VectorTrainConfig(model=str(model), task="arith_mc")
    before = rlvr.fingerprint(), sweep.fingerprint()
    assert rlvr.identity()["inputs"]["task"]["source"] == "crl-bench generated"
    weights = next(model.glob("*.safetensors"))
    tensors = {k: v * 2 for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert rlvr.fingerprint() != before[0] and sweep.fingerprint() != before[1]


def test_bench_says_why_a_stage_is_evaluated_again(tiny_dir, tmp_path):
    import json

    from crl_bench.bench_config import BenchConfig
    from crl_bench.stages import STAGE, plan

    model = _tiny_copy(tiny_dir, tmp_path)
    config = BenchConfig(
        model=str(model),
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
    assert stage.why_not_reused() is None  # nothing evaluated before
    stage.run_dir.mkdir(parents=True)
    (stage.run_dir / STAGE).write_text(json.dumps({"fingerprint": stage.fingerprint, "settings": stage.settings}))
    assert stage.done()
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")  # the folder changed
    (again,) = plan(config)
    assert not again.done() and again.run_dir != stage.run_dir
    assert "these changed: inputs.model.files" in again.why_not_reused()
    assert stage.home == again.home  # both settings' evaluations live side by side


def test_a_hub_model_not_yet_downloaded_is_named_by_its_id():
    from harness.identity import model_identity

    assert model_identity("google/gemma-2-2b") == {"hub": "google/gemma-2-2b", "revision": None}


def test_crl_runs_fingerprint_their_sae_files(tiny_dir, tiny_sae_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from rl.crl.config import CRLConfig

    sae = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, sae)
    config = CRLConfig(model=tiny_dir, task="arith_mc", sae=str(sae))
    before = config.fingerprint()
    assert config.identity()["inputs"]["sae"] == {"sae": config.identity()["inputs"]["sae"]["sae"]}
    weights = sae / "sae_weights.safetensors"
    tensors = {k: v + torch.ones_like(v) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    assert config.fingerprint() != before
