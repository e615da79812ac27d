"""Training checkpoints in the model-folder format, pickle-free.

A checkpoint folder is a loadable model folder (``config.json`` + ``model.safetensors`` with the
**EMA** weights, see :mod:`xmdpt.model.folder`) plus the state needed to resume:

- ``train_model.safetensors`` — the raw (non-EMA) weights being optimised;
- ``optimizer.safetensors`` — every tensor of the optimizer state, flattened to
  ``state.{param index}.{name}`` keys;
- ``trainer_state.json`` — the step, the optimizer's non-tensor parts (param groups, scalar
  state), the data hash, the loss history and anything else JSON-able.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save

from xmdpt.model.folder import CONFIG_FILE, WEIGHTS_FILE, write_model_folder

__all__ = ["save_checkpoint", "load_checkpoint", "read_trainer_state", "flatten_optimizer_state",
           "unflatten_optimizer_state", "RAW_WEIGHTS_FILE", "OPTIMIZER_FILE", "TRAINER_STATE_FILE"]

RAW_WEIGHTS_FILE = "train_model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"


def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and a JSON-able rest.

    Returns:
        ``(tensors, meta)``: tensors under ``state.{idx}.{name}``; ``meta`` holds ``param_groups``
        and the non-tensor state entries (``{"state": {idx: {name: value}}}``).
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    meta = {"param_groups": state_dict["param_groups"], "state": scalars}
    json.dumps(meta)  # fail here, not at resume, if something is not JSON-able
    return tensors, meta


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta.get("state", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]  # JSON lists
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, ema: Any, opt: torch.optim.Optimizer,
                    config: Mapping[str, Any], trainer_state: Mapping[str, Any]) -> Path:
    """Write a checkpoint folder (a model folder of the EMA weights + resume state).

    Args:
        path: local folder to write (created).
        model: the unwrapped model being trained.
        ema: its :class:`~xmdpt.training.ema.EMA`.
        opt: the optimizer.
        config: full config dict (with the ``model`` section) for ``config.json``.
        trainer_state: JSON-able (``step``, ``data_hash``, history, ...).
    """
    opt_tensors, opt_meta = flatten_optimizer_state(opt.state_dict())
    state = {**trainer_state, "optimizer": opt_meta}
    raw = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    extra = {
        RAW_WEIGHTS_FILE: save(raw),
        OPTIMIZER_FILE: save(opt_tensors) if opt_tensors else save({"_empty": torch.zeros(0)}),
        TRAINER_STATE_FILE: (json.dumps(state, indent=1, sort_keys=True) + "\n").encode(),
    }
    return write_model_folder(path, ema.state_dict(), dict(config), extra_files=extra)


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint folder."""
    p = Path(path) / TRAINER_STATE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{path}: not a training checkpoint (missing {TRAINER_STATE_FILE})")
    return json.loads(p.read_text())


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, ema: Any, opt: torch.optim.Optimizer,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore model, EMA and optimizer in place from a checkpoint folder; return the trainer state."""
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE, RAW_WEIGHTS_FILE, OPTIMIZER_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: incomplete checkpoint (missing {name})")
    state = read_trainer_state(path)
    model.load_state_dict(load_file(str(path / RAW_WEIGHTS_FILE), device=str(device)))
    ema.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=str(device)))
    tensors = {k: v for k, v in load_file(str(path / OPTIMIZER_FILE), device=str(device)).items() if k != "_empty"}
    opt.load_state_dict(unflatten_optimizer_state(tensors, state.pop("optimizer")))
    return state
