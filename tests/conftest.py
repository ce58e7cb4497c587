"""Shared fixtures: a tiny randomly initialised Gemma 3 (fast) and the embedded model (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("CRL_BENCH_CACHE", str(ROOT / ".cache"))
for _variable, _value in {
    "HF_HUB_CACHE": "hub",
    "HF_DATASETS_CACHE": "datasets",
    "HF_XET_CACHE": "xet",
    "HF_ASSETS_CACHE": "assets",
    "HF_MODULES_CACHE": "modules",
}.items():  # the caches in the project; HF_HOME (the login token) stays the user's
    os.environ.setdefault(_variable, str(ROOT / ".cache" / "huggingface" / _value))
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs pytest -n: share the cores, do not oversubscribe
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
if SHARED_DATA.is_dir():
    os.environ.setdefault("CRL_BENCH_DATA", str(SHARED_DATA))

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the project")


@pytest.fixture(scope="session")
def embedded_dir() -> str:
    from harness.models import resolve_model

    return resolve_model("gemma-3-270m")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, embedded_dir) -> str:
    """A 4-layer, d_model 64 Gemma 3 with random weights and the real tokenizer, saved in fp32."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=8,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Gemma3ForCausalLM(config).float().eval()
    path = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir)


def save_model_dir(model, tokenizer, path) -> str:
    """Save a tiny stand-in and its tokenizer as a Hugging Face folder (fp32); returns its path."""
    model.float().eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def architecture_dirs(tmp_path_factory, embedded_dir) -> dict[str, str]:
    """Tiny random stand-ins of the layouts users run (issue 23), 4 layers, d_model 64, the real
    tokenizer: Gemma 2 (final-logit and attention soft-capping, a sliding window shorter than
    the prompts), GPT-2 (`transformer.h`, `attn.c_proj`, learned positions, no pad token),
    Qwen2 (`self_attn.o_proj` with biased q/k/v) and Llama (no pad token, as Llama 3)."""
    import torch
    from transformers import (
        AutoTokenizer,
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    root = tmp_path_factory.mktemp("architectures")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4)
    heads = dict(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    models = {
        "gemma2": Gemma2ForCausalLM(
            Gemma2Config(
                **shape,
                **heads,
                head_dim=32,
                sliding_window=4,
                final_logit_softcapping=30.0,
                attn_logit_softcapping=50.0,
                pad_token_id=tokenizer.pad_token_id,
                **ids,
            )
        ),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**shape, **heads, pad_token_id=tokenizer.pad_token_id, **ids)),
    }
    dirs = {
        name: save_model_dir(model, tokenizer, root / f"{folder}-tiny")
        for (name, folder), model in zip([("gemma2", "gemma-2"), ("qwen2", "qwen2")], models.values())
    }
    tokenizer.pad_token = None  # GPT-2's and Llama 3's tokenizers have none
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=4, n_head=2, n_positions=1024, **ids)
    )
    dirs["gpt2"] = save_model_dir(gpt2, tokenizer, root / "gpt2-tiny")
    dirs["llama"] = save_model_dir(
        LlamaForCausalLM(LlamaConfig(**shape, **heads, **ids)), tokenizer, root / "llama-tiny"
    )
    return dirs


@pytest.fixture(scope="session")
def random_controller(tmp_path_factory, tiny_dir):
    """A CRL one-token controller for layer 2 of the tiny model, with random weights large enough
    that its greedy choice of feature depends on the residual (an untrained one never acts)."""
    import json

    import torch
    from safetensors.torch import save_file

    from rl.crl.controller import CONTROLLER_TYPES, Controller

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("controller")
    controller = Controller(64, 8, 1, hidden=32)
    with torch.no_grad():
        controller.feature_head.weight.normal_(0, 3.0)
        controller.feature_head.bias[-1] = -10.0  # never the no-op
    save_file({k: v.contiguous() for k, v in controller.state_dict().items()}, str(run / "controller.safetensors"))
    directions = torch.nn.functional.normalize(torch.randn(8, 64), dim=-1)
    save_file({"directions.2": directions, "scales.2": torch.full((8,), 20.0)}, str(run / "bank.safetensors"))
    config = {
        "model": tiny_dir,
        "controller": CONTROLLER_TYPES["flat"],
        "setting": "one-token",
        "d_model": 64,
        "d_sae": 8,
        "hidden": 32,
        "layers_resolved": [2],
    }
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory) -> str:
    """A random TopK SAE (64 features, k=8) for layer 2 of the tiny model, saved by sae-lens."""
    import torch
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    torch.manual_seed(0)
    sae = SAE.from_dict(
        TopKSAEConfig(d_in=64, d_sae=64, k=8, metadata=SAEMetadata(hook_name="model.layers.2")).to_dict()
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("tiny-sae") / "sae"
    sae.save_model(path)
    return str(path)


def save_planted_sae(path, layer: int, good: int, push) -> None:
    """A TopK SAE (d_in 64, 16 features) for `layer` of the tiny model with random features,
    save feature `good`, whose decoder direction is `push` scaled to norm 400 (the CRL tests'
    planted good feature); saved with sae-lens at `path`. Draws from torch's global RNG."""
    import torch
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    sae = SAE.from_dict(
        TopKSAEConfig(d_in=64, d_sae=16, k=4, metadata=SAEMetadata(hook_name=f"model.layers.{layer}")).to_dict()
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn_like(sae.W_enc) * 0.3)
        sae.b_enc.fill_(1.0)
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn_like(sae.W_dec), dim=-1))
        sae.W_dec[good] = push / push.norm() * 400
    sae.save_model(path)


PLANTED_LAYER = 3  # the tiny model's last decoder layer
PLANTED_FEATURE = 5  # the planted SAE feature


@pytest.fixture(scope="session")
def planted(tiny_dir, tmp_path_factory):
    """An SAE for layer 3 of the tiny model whose feature 5 adds a large push towards one digit,
    and arith_mc documents whose answer is that digit (one the unsteered model rarely picks)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.padding import batch
    from harness.prompts import task_prompts
    from harness.sparse_logits import logits_at
    from harness.tasks import load_task

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    task = load_task("arith_mc")
    docs = list(task.training_docs()) + list(task.validation_docs())
    digits = [tokenizer(d, add_special_tokens=False)["input_ids"][0] for d in "0123456789"]
    ids, mask = batch(tokenizer, task_prompts(task, docs[:40]), "cpu")
    last = torch.full((len(ids), 1), ids.shape[1] - 1)
    with torch.no_grad(), logits_at(model, last):
        base_choice = model(input_ids=ids, attention_mask=mask).logits[:, -1][:, digits].argmax(-1)
    target = min(range(10), key=lambda d: int((base_choice == d).sum()))  # the digit the model picks least
    embed = model.get_input_embeddings().weight.detach()
    push = embed[digits[target]] - embed[digits].mean(0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("planted-sae") / "sae"
    save_planted_sae(path, PLANTED_LAYER, PLANTED_FEATURE, push)
    chosen = [d for d in docs if d["answer"] == target]
    return {
        "sae": str(path),
        "train": chosen[: len(chosen) * 2 // 3],
        "validation": chosen[len(chosen) * 2 // 3 :],
        "target": target,
        "push": push,
    }


@pytest.fixture
def planted_splits(planted, monkeypatch):
    import harness.splits

    real = harness.splits.method_splits

    def method_splits(task):
        splits = real(task)
        splits.train, splits.validation = planted["train"], planted["validation"]
        return splits

    monkeypatch.setattr(harness.splits, "method_splits", method_splits)


def tiny_info(tiny_dir: str, name: str | None = None):
    """The tiny model's `ModelInfo`, without loading it."""
    from harness.models import ModelInfo

    return ModelInfo(
        name=name or tiny_dir,
        path=tiny_dir,
        architecture="Gemma3ForCausalLM",
        n_layers=4,
        d_model=64,
        vocab_size=262144,
        layers_path="model.layers",
    )


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> str:
    from harness.tasks import generated_examples

    texts = [t for prompts in generated_examples("train").values() for t in prompts]
    path = tmp_path_factory.mktemp("corpus") / "tasks.txt"
    path.write_text("\n\n".join(texts))
    return str(path)


def sae_train_config(tiny_dir, corpus_file, out, **overrides):
    from harness.sae.train import SAETrainConfig

    settings = dict(
        model=tiny_dir,
        layer=2,
        corpus=corpus_file,
        width=128,
        k=8,
        tokens=4096,
        context_size=32,
        batch_tokens=256,
        lr=3e-3,
        dtype="float32",
        autocast=False,
        device="cpu",
        checkpoints=3,
        out_dir=str(out),
    )
    settings.update(overrides)
    return SAETrainConfig(**settings)
