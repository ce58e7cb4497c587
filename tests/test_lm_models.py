"""Our lm-eval wrappers against lm-eval's own models (the oracles nobody here wrote)."""

import pytest
import torch
from lm_eval.api.instance import Instance

from harness.vectors import SteeringVectors

REQUESTS = [
    ("Review: I loved it.\nSentiment:", " positive"),
    ("Review: I loved it.\nSentiment:", " negative"),
    ("Question: What is 2+2?\nAnswer:", " four, of course"),
    ("7-3=", "4"),
    ("A much longer context so that the batch has right padding in it, with several words", " and a tail"),
]


def _instances(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _ll(lm, pairs=REQUESTS):
    return lm.loglikelihood(_instances(pairs), disable_tqdm=True)


COMMON = {"device": "cpu", "dtype": "float32", "batch_size": 2}


@pytest.fixture(scope="module")
def hf_reference(tiny_dir):
    from lm_eval.models.huggingface import HFLM

    return _ll(HFLM(pretrained=tiny_dir, **COMMON))


def test_lean_loglikelihoods_equal_lm_eval_hf(tiny_dir, hf_reference):
    from harness.lm_models import LeanHFLM

    lean = _ll(LeanHFLM(pretrained=tiny_dir, **COMMON))
    torch.testing.assert_close([ll for ll, _ in lean], [ll for ll, _ in hf_reference], rtol=1e-5, atol=1e-4)
    assert [g for _, g in lean] == [g for _, g in hf_reference]


def test_vector_steered_equals_lm_eval_steered(tiny_dir, tmp_path, hf_reference):
    from lm_eval.models.hf_steered import SteeredModel

    from harness.lm_models import VectorSteeredLM

    torch.manual_seed(1)
    vectors = SteeringVectors({1: torch.randn(64), 2: torch.randn(64)}, coefficient=4.0)
    vectors.save(tmp_path / "steer")
    exported = vectors.export_lmeval_steered(tmp_path / "steer.pt")
    ours = _ll(VectorSteeredLM(pretrained=tiny_dir, steer=str(tmp_path / "steer"), **COMMON))
    theirs = _ll(SteeredModel(pretrained=tiny_dir, steer_path=str(exported), **COMMON))
    torch.testing.assert_close([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=1e-5, atol=1e-4)
    # and steering really changed something
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, hf_reference)) > 1e-2


def test_rlvr_lora_equals_hf_with_peft(tiny_dir, tmp_path, hf_reference):
    from lm_eval.models.huggingface import HFLM
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.lm_models import RLVRLoraLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = _ll(RLVRLoraLM(pretrained=tiny_dir, adapter=str(tmp_path / "adapter"), **COMMON))
    theirs = _ll(HFLM(pretrained=tiny_dir, peft=str(tmp_path / "adapter"), **COMMON))
    torch.testing.assert_close([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=1e-5, atol=1e-4)
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, hf_reference)) > 1e-3


def test_generation_through_wrapper_matches_hf(tiny_dir):
    from lm_eval.models.huggingface import HFLM

    from harness.lm_models import LeanHFLM

    requests = [
        Instance(
            request_type="generate_until",
            doc={},
            idx=i,
            arguments=(ctx, {"until": ["\n"], "max_gen_toks": 5, "do_sample": False}),
        )
        for i, (ctx, _) in enumerate(REQUESTS)
    ]
    expected = HFLM(pretrained=tiny_dir, **COMMON).generate_until(requests, disable_tqdm=True)
    assert LeanHFLM(pretrained=tiny_dir, **COMMON).generate_until(requests, disable_tqdm=True) == expected
    # generation_batch_size: as many rows per generate call as asked (all 5 here, not 2), the same
    # completions, and the log-likelihood batch size unchanged afterwards
    wide = LeanHFLM(pretrained=tiny_dir, generation_batch_size=8, **COMMON)
    rows = []
    generate = wide._model_generate
    wide._model_generate = lambda context, *args, **kwargs: (
        rows.append(len(context)) or generate(context, *args, **kwargs)
    )
    assert wide.generate_until(requests, disable_tqdm=True) == expected
    assert rows == [len(requests)] and wide.batch_size == 2
    with pytest.raises(ValueError, match="generation_batch_size must be at least 1"):
        LeanHFLM(pretrained=tiny_dir, generation_batch_size=-1, **COMMON)


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "match"),
    [
        ("harness.lm_models:VectorSteeredLM", {"steer": "/no/such/run"}, FileNotFoundError, "does not exist"),
        ("harness.lm_models:VectorSteeredLM", {}, ValueError, "needs steer="),
        ("harness.lm_models:VectorSteeredLM", {"steer": "x.pt"}, ValueError, "never loads pickles"),
        ("harness.lm_models:RLVRLoraLM", {"adapter": "/no/such/adapter"}, FileNotFoundError, "crl-bench train rlvr"),
        ("rl.crl.lm:CRLSteeredLM", {"controller": "/no/such/controller"}, FileNotFoundError, "crl-bench train crl"),
    ],
)
def test_missing_artifacts_fail_before_loading(cls, kwargs, error, match):
    import importlib

    module, name = cls.split(":")  # as lm-eval's registry names them
    with pytest.raises(error, match=match):
        getattr(importlib.import_module(module), name)(pretrained="/never/loaded", **kwargs)


def test_steering_vector_of_wrong_size_or_layer(tiny_dir, tmp_path):
    from harness.lm_models import VectorSteeredLM

    SteeringVectors({1: torch.randn(65)}).save(tmp_path / "wide")
    with pytest.raises(ValueError, match=r"d_model=64; pass a vector of shape \(64,\)"):
        VectorSteeredLM(pretrained=tiny_dir, steer=str(tmp_path / "wide"), **COMMON)
    SteeringVectors({9: torch.randn(64)}).save(tmp_path / "deep")
    with pytest.raises(ValueError, match="layer 9 does not exist"):
        VectorSteeredLM(pretrained=tiny_dir, steer=str(tmp_path / "deep"), **COMMON)


def test_artifact_round_trip(tmp_path):
    vectors = SteeringVectors({3: torch.randn(8)}, coefficient=2.5, positions="last", method="mean_diff", model="m")
    loaded = SteeringVectors.load(vectors.save(tmp_path / "run"))
    assert (loaded.coefficient, loaded.positions, loaded.method, loaded.model) == (2.5, "last", "mean_diff", "m")
    torch.testing.assert_close(loaded.vectors[3], vectors.vectors[3])
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "vectors.safetensors", "manifest.json"}


def test_contiguous_head_hands_the_head_contiguous_input_with_the_same_logits(tiny_dir):
    from harness.models import contiguous_head, load_causal_lm

    model, _ = load_causal_lm(tiny_dir, dtype="bfloat16", device="cpu")
    head = model.get_output_embeddings()
    contiguous_head(model)  # second call: still one hook
    assert len(head._forward_pre_hooks) == 1
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 100, (3, 7))
    with torch.no_grad():
        sliced = model(input_ids=ids, logits_to_keep=1).logits  # the last position: a strided view
        full = model(input_ids=ids).logits[:, -1:]
    assert seen == [True, True]
    torch.testing.assert_close(sliced, full)
