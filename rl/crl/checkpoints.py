"""A CRL run's checkpoints: the controller's weights, the optimiser's state and the run's own
state (spent budget, curve, masking, RNG), as safetensors + JSON, never pickle.

Each checkpoint is a directory `step-<n>/` written whole under a temporary name and then
renamed, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

CONTROLLER_FILE = "controller.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value if torch.is_tensor(value) else torch.tensor(value)
        for index, entry in state["state"].items()
        for name, value in entry.items()
    }
    return tensors, state["param_groups"]


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    directory: Path, controller: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_tensors(tmp / CONTROLLER_FILE, controller.state_dict())
    tensors, groups = _optimizer_state(optimizer)
    if tensors:
        save_tensors(tmp / OPTIMIZER_FILE, tensors)
    (tmp / STATE_FILE).write_text(json.dumps({**state, "param_groups": groups}))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = (
        sorted(
            (p for p in checkpoints.glob("step-*") if (p / STATE_FILE).exists()),
            key=lambda p: int(p.name.split("-")[1]),
        )
        if checkpoints.is_dir()
        else []
    )
    return found[-1] if found else None


def load_checkpoint(directory: Path, controller: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restores the controller and the optimiser in place; returns the run's saved state."""
    from safetensors.torch import load_file

    state = json.loads((directory / STATE_FILE).read_text())
    controller.load_state_dict(load_file(str(directory / CONTROLLER_FILE)))
    if (directory / OPTIMIZER_FILE).exists():
        _load_optimizer(optimizer, load_file(str(directory / OPTIMIZER_FILE)), state["param_groups"])
    return state
