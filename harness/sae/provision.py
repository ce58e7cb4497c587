"""Provision an SAE for a model layer: `--sae` is a sae-lens release/id, a local directory, or `auto`.

- `release/id`, e.g. `gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical`: the
  release name is everything before the first `/` (release names never contain one), the
  SAE id the rest. Checked against sae-lens's own directory of pretrained SAEs before any
  download, so a typo or a release for another model fails at once.
- a local directory holding a sae-lens SAE (`cfg.json` + `sae_weights.safetensors`).
- `auto`: a published SAE for this model and layer when sae-lens knows one (see
  `PUBLISHED`); otherwise one is trained with sae-lens on this model (`harness.sae.train`)
  and cached, so the next run reuses it.

Whatever the source, the SAE is checked against the model at load time: input width vs
d_model, the hook point vs the layer we steer, the hook kind (residual stream only), dtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.models import ModelInfo
from harness.paths import cache_root

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE

AUTO = "auto"
SAE_CFG = "cfg.json"

# Residual-stream SAE releases we prefer when `--sae auto` meets one of these models;
# `{layer}` is filled in with the requested layer.
PUBLISHED: dict[str, tuple[str, str]] = {
    "gemma-2-2b": ("gemma-scope-2b-pt-res-canonical", "layer_{layer}/width_16k/canonical"),
    "gemma-2-9b": ("gemma-scope-9b-pt-res-canonical", "layer_{layer}/width_16k/canonical"),
    "gpt2": ("gpt2-small-res-jb", "blocks.{layer}.hook_resid_pre"),
}


@dataclass
class LoadedSAE:
    """A sae-lens SAE bound to the model layer whose output (residual stream) it reads.

    `encode`/`decode` are the one place where residual-stream dtype meets SAE dtype:
    activations are cast to the SAE's dtype and reconstructions back to the caller's.
    """

    sae: "SAE"
    layer: int
    spec: str
    source: str  # "pretrained", "local" or "trained"
    directory: Path  # where quality.json and feature_cards.json live
    name: str

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def dtype(self) -> "torch.dtype":
        return self.sae.W_dec.dtype

    def encode(self, resid: "torch.Tensor") -> "torch.Tensor":
        """Float[..., d_model] residual stream -> Float[..., d_sae] feature activations (SAE dtype)."""
        return self.sae.encode(resid.to(self.dtype))

    def decode(self, acts: "torch.Tensor", dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        out = self.sae.decode(acts.to(self.dtype))
        return out if dtype is None else out.to(dtype)

    def directions(self) -> "torch.Tensor":
        """Float[d_sae, d_model]: the decoder rows, the directions CRL adds."""
        return self.sae.W_dec.detach()

    def describe(self) -> dict[str, Any]:
        meta = self.sae.cfg.metadata
        return {
            "name": self.name,
            "spec": self.spec,
            "source": self.source,
            "directory": str(self.directory),
            "layer": self.layer,
            "hook_name": meta.hook_name,
            "architecture": self.sae.cfg.architecture(),
            "d_in": int(self.sae.cfg.d_in),
            "d_sae": self.d_sae,
            "k": getattr(self.sae.cfg, "k", None),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def hook_layer(hook_name: str | None, layers_path: str) -> int:
    """The decoder layer whose *output* a hook name reads, or a ValueError naming the fix.

    `model.layers.6` (our own hook points, also what `--sae auto` trains on) and
    TransformerLens's `blocks.6.hook_resid_post` are the output of layer 6;
    `blocks.7.hook_resid_pre` is the same point.
    """
    if not hook_name:
        raise ValueError(
            "the SAE's config names no hook point (metadata.hook_name); name its layer (bench: --sae-layer N; "
            "train crl: --layers N; sae eval: --layer N)"
        )
    own = re.fullmatch(re.escape(layers_path) + r"\.(\d+)", hook_name)
    if own:
        return int(own.group(1))
    match = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_post|resid_pre)", hook_name)
    if match:
        layer, kind = int(match.group(1)), match.group(2)
        if kind == "resid_post":
            return layer
        if layer == 0:
            raise ValueError(
                f"the SAE reads {hook_name} (the embeddings, before any decoder layer); crl-bench "
                f"steers decoder-layer outputs, so pick an SAE for blocks.N.hook_resid_pre with N >= 1"
            )
        return layer - 1
    raise ValueError(
        f"the SAE reads {hook_name!r}, which is not the residual stream; crl-bench steers the "
        f"residual stream after a decoder layer, so pass a residual-stream SAE "
        f"(hook blocks.N.hook_resid_post / {layers_path}.N), e.g. a '-res' release"
    )


def check_sae_matches(
    sae: "SAE", info: ModelInfo, layer: int | None = None, activation_dtype: "torch.dtype | None" = None
) -> int:
    """Validate an SAE against a model; return the layer it reads. Errors name the fix."""
    d_in = int(sae.cfg.d_in)
    hook_name = sae.cfg.metadata.hook_name
    if d_in != info.d_model:
        raise ValueError(
            f"SAE expects d_in={d_in} but {info.name} has d_model={info.d_model}; pass an SAE "
            f"trained for this model, or --sae auto to train one"
        )
    sae_layer = hook_layer(hook_name, info.layers_path) if hook_name or layer is None else layer
    info.check_layer(sae_layer)
    if layer is not None and layer != sae_layer:
        raise ValueError(
            f"the SAE reads layer {sae_layer} ({hook_name}) but layer {layer} was requested; pass an SAE for "
            f"layer {layer} (a `{{layer}}` pattern in --sae gives one per layer, e.g. "
            f"gemma-scope-2b-pt-res-canonical/layer_{{layer}}/width_16k/canonical), or use layer {sae_layer} "
            f"(bench: --sae-layer {sae_layer}; train crl: --layers {sae_layer})"
        )
    dtype = sae.W_dec.dtype
    if activation_dtype is not None and activation_dtype != dtype:
        raise ValueError(
            f"SAE weights are {str(dtype).removeprefix('torch.')} but the model's activations are "
            f"{str(activation_dtype).removeprefix('torch.')}; load the SAE with "
            f"--sae-dtype {str(activation_dtype).removeprefix('torch.')}, or encode through "
            f"LoadedSAE.encode, which casts"
        )
    if not dtype.is_floating_point:
        raise ValueError(f"SAE weights have dtype {dtype}; pass --sae-dtype float32")
    return sae_layer


def same_hub_model(a: str, b: str) -> bool:
    """Whether two model names mean the same hub model (`gpt2`, `gpt2-small` and
    `openai-community/gpt2`; `gemma-2-2b` and `google/gemma-2-2b`)."""
    from harness.models import hub_id

    def key(name: str) -> str:
        return hub_id(name).lower()

    return key(a) == key(b) or Path(key(a)).name == Path(key(b)).name


def published_sae(info: ModelInfo, layer: int) -> str | None:
    """`release/id` of a published residual SAE for this model and layer, if sae-lens lists one."""
    key = next((name for name in PUBLISHED if same_hub_model(name, info.name)), None)
    if key is None:
        return None
    release, template = PUBLISHED[key]
    sae_id = template.format(layer=layer + 1 if "resid_pre" in template else layer)
    directory = _pretrained_directory()
    if release in directory and sae_id in directory[release].saes_map:
        return f"{release}/{sae_id}"
    return None


def _pretrained_directory() -> dict:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def _parse_release(spec: str, info: ModelInfo) -> tuple[str, str]:
    import difflib

    release, _, sae_id = spec.partition("/")
    directory = _pretrained_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"--sae {spec!r}: not a local directory, not 'auto', and {release!r} is not a sae-lens "
            f"release{hint}; pass <release>/<sae id>, a directory with cfg.json, or auto"
        )
    entry = directory[release]
    if sae_id not in entry.saes_map:
        close = difflib.get_close_matches(sae_id, list(entry.saes_map), n=3)
        raise ValueError(
            f"release {release} has no SAE {sae_id!r}; close ids: {', '.join(close) or 'none'} "
            f"({len(entry.saes_map)} ids in all)"
        )
    if entry.model and not Path(info.name).exists() and not same_hub_model(entry.model, info.name):
        raise ValueError(
            f"release {release} was trained on {entry.model}, but the model is {info.name}; pass "
            f"--model {entry.model}, or an SAE for {info.name} (--sae auto trains one)"
        )
    return release, sae_id


def pretrained_dir(release: str, sae_id: str) -> Path:
    return cache_root() / "saes" / "pretrained" / release / sae_id.replace("/", "__")


def train_auto_saes(info: ModelInfo, layers: list[int], **train_options: Any) -> list[int]:
    """Train, together from one forward pass (`harness.sae.train.train_saes`), the `auto` SAEs of
    `layers` that no published SAE serves, so that a later `load_sae("auto", ...)` at each layer
    finds its SAE trained. Finished ones are reused. Returns the layers it provisioned.
    `train_options` are `SAETrainConfig` fields, as for `load_sae`."""
    from harness.sae.train import SAETrainConfig, train_saes

    missing = sorted(layer for layer in {info.check_layer(x) for x in layers} if not published_sae(info, layer))
    if len(missing) > 1:  # one layer: load_sae trains it alone, as it would have
        train_saes([SAETrainConfig(model=info.name, layer=layer, **train_options) for layer in missing])
    return missing


def load_sae(
    spec: str,
    info: ModelInfo,
    layer: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    **train_options: Any,
) -> LoadedSAE:
    """Provision the SAE named by `spec` for `info` (see the module docstring).

    `train_options` are `SAETrainConfig` fields used when `auto` has to train.
    """
    from sae_lens import SAE

    if dtype == "float16" and str(device).startswith("cpu"):
        raise ValueError("float16 SAEs are slow and lossy on CPU; pass --sae-dtype float32 or bfloat16")
    if "{layer}" in spec:  # one SAE per layer (e.g. Gemma Scope's layer_{layer}/width_16k/canonical)
        layer = info.check_layer(layer if layer is not None else info.n_layers // 2)
        spec = spec.format(layer=layer)
    path = Path(spec).expanduser()
    if spec == AUTO:
        chosen = info.check_layer(layer if layer is not None else info.n_layers // 2)
        published = published_sae(info, chosen)
        if published:
            return load_sae(published, info, chosen, dtype, device)
        from harness.sae.train import SAETrainConfig, train_sae

        directory = train_sae(SAETrainConfig(model=info.name, layer=chosen, **train_options))
        return load_sae(str(directory), info, chosen, dtype, device)
    elif path.exists():
        if not (path / SAE_CFG).exists():
            raise ValueError(
                f"SAE directory {path} has no {SAE_CFG}; pass a directory written by sae-lens "
                f"(SAE.save_model), a release/id, or auto"
            )
        directory, name = path.resolve(), path.resolve().name
        source = "trained" if (directory / "manifest.json").exists() else "local"
        sae = SAE.load_from_disk(directory, device=device, dtype=dtype)
    elif spec.startswith((".", "/", "~")):
        raise ValueError(f"SAE directory {spec!r} does not exist; pass an existing directory, a release/id, or auto")
    else:
        release, sae_id = _parse_release(spec, info)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
        except Exception as err:  # network errors come in many types; all mean the same here
            raise ValueError(
                f"could not download SAE {release}/{sae_id} ({type(err).__name__}: {err}); offline, "
                f"pass a local sae-lens directory or --sae auto"
            ) from err
        directory, source, name = pretrained_dir(release, sae_id), "pretrained", f"{release}/{sae_id}"
        directory.mkdir(parents=True, exist_ok=True)
    sae.eval()
    sae.requires_grad_(False)
    sae_layer = check_sae_matches(sae, info, layer)
    return LoadedSAE(sae=sae, layer=sae_layer, spec=spec, source=source, directory=Path(directory), name=name)
