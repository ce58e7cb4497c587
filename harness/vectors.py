"""Steering-vector artifacts: one direction per layer, a coefficient and the positions.

On disk (a run directory): `config.json` (method, model, layers, coefficient, positions),
`vectors.safetensors` (tensors named `layer.<i>`, Float[d_model]) and `manifest.json`.
`export_lmeval_steered` writes the same vectors in the format lm-eval's own `steered`
model reads, so lm-eval's built-in model can evaluate them too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from harness.artifacts import CONFIG, MANIFEST, check_keys, read_config, read_tensors, require_run_dir
from harness.manifest import build_manifest, write_json
from harness.steering import POSITIONS, AddVectors, Positions

VECTORS_FILE = "vectors.safetensors"
HOW_TO_REBUILD = "rebuild it with `crl-bench train vectors` (or `crl-bench bench --force`)"
HOW_TO_MAKE = (
    "pass steer=<run dir written by `crl-bench train vectors`> or a .safetensors file whose tensors are named layer.<i>"
)


@dataclass
class SteeringVectors:
    vectors: dict[int, torch.Tensor]
    coefficient: float = 1.0
    positions: Positions = "all"
    method: str = "custom"
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if not self.vectors:
            raise ValueError("a steering artifact needs at least one layer's vector")

    def intervention(self) -> AddVectors:
        return AddVectors(vectors=self.vectors, coefficient=self.coefficient, positions=self.positions)

    def save(self, run_dir: str | Path, **manifest: Any) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{layer}": v.detach().float().contiguous().cpu() for layer, v in self.vectors.items()}
        save_file(tensors, str(run_dir / VECTORS_FILE))
        config = {k: v for k, v in asdict(self).items() if k != "vectors"}
        write_json(run_dir / CONFIG, {**config, "layers": sorted(self.vectors)})
        write_json(run_dir / MANIFEST, build_manifest(**manifest))
        return run_dir

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVectors":
        path = Path(path).expanduser()
        if path.suffix == ".safetensors" and path.is_file():
            return cls(vectors=_read_vectors(path))
        if path.suffix in {".pt", ".pth"}:
            raise ValueError(
                f"{path} is a pickle file; crl-bench never loads pickles. Convert it to a "
                f".safetensors file with tensors named layer.<i>, or {HOW_TO_MAKE}"
            )
        run_dir = require_run_dir(path, "steering artifact", (CONFIG, VECTORS_FILE), HOW_TO_MAKE)
        config = read_config(run_dir, HOW_TO_REBUILD)
        check_keys(config, {f.name for f in fields(cls)} - {"vectors"} | {"layers"}, run_dir / CONFIG, HOW_TO_REBUILD)
        layers = config.pop("layers", None)
        vectors = _read_vectors(run_dir / VECTORS_FILE)
        if layers is not None and sorted(vectors) != sorted(layers):
            raise ValueError(
                f"{run_dir}: config.json names layers {sorted(layers)} but {VECTORS_FILE} holds {sorted(vectors)}; "
                f"{HOW_TO_REBUILD}"
            )
        return cls(vectors=vectors, **config)

    def export_lmeval_steered(self, path: str | Path, layers_path: str = "model.layers") -> Path:
        """Write the `.pt` file that lm-eval's `steered` model loads (`steer_path=`).

        lm-eval names hook points relative to `model.base_model` (e.g. `layers.6`), and
        adds at every position, so only `positions="all"` has an lm-eval equivalent.
        """
        if self.positions != "all":
            raise ValueError(
                f"lm-eval's steered model adds at every position; this artifact uses "
                f"positions={self.positions!r}. Export a copy with positions='all'"
            )
        prefix = layers_path.split(".", 1)[1] if "." in layers_path else layers_path
        config = {
            f"{prefix}.{layer}": {
                "steering_vector": vector.detach().float().cpu(),
                "steering_coefficient": float(self.coefficient),
                "action": "add",
                "bias": None,
                "head_index": None,
            }
            for layer, vector in self.vectors.items()
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(config, path)  # lm-eval's format is a pickle; we only write it, never read it
        return path


def _read_vectors(path: Path) -> dict[int, torch.Tensor]:
    tensors = read_tensors(path, HOW_TO_REBUILD)
    vectors: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():
        prefix, _, layer = name.partition(".")
        if prefix != "layer" or not layer.isdigit():
            raise ValueError(f"{path}: tensor {name!r} is not named layer.<i>; {HOW_TO_MAKE}")
        vectors[int(layer)] = tensor
    return vectors
