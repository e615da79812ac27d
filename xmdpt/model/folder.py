"""Self-describing model folder: ``config.json`` (the config dict, with a ``model`` section that is a
``ModelConfig``) + ``model.safetensors`` (+ optional extra files). Loading needs no pickle."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors.torch import load_file, save_file

from xmdpt.core.config import ConfigError, ModelConfig
from xmdpt.model.xmdpt import XMDPT
from xmdpt.core.state_dict import check_state_dict
from xmdpt.core.typed_config import from_plain

logger = logging.getLogger(__name__)

__all__ = ["save_model_folder", "load_model_folder", "write_model_folder", "check_state_dict",
           "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _model_config(config: Mapping[str, Any], what: str) -> ModelConfig:
    if not isinstance(config.get("model"), dict):
        raise ConfigError(f"{what}: config needs a 'model' section (a ModelConfig dict)")
    return from_plain(ModelConfig, config["model"], prefix="model.")


def write_model_folder(path: str | Path, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                       extra_files: Optional[Mapping[str, bytes]] = None) -> Path:
    """Write a folder from a state dict (checked against the model that ``config['model']`` builds)."""
    path = Path(path)
    cfg = _model_config(config, str(path))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in XMDPT(cfg).state_dict().items()}
    check_state_dict(expected, state_dict, str(path))
    path.mkdir(parents=True, exist_ok=True)
    for name, blob in (extra_files or {}).items():
        if Path(name).name != name or name in (CONFIG_FILE, WEIGHTS_FILE):
            raise ValueError(f"extra file {name!r}: must be a plain file name other than {CONFIG_FILE}/{WEIGHTS_FILE}")
        (path / name).write_bytes(blob)
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info("wrote model folder %s", path)
    return path


def save_model_folder(path: str | Path, model: XMDPT, config: dict[str, Any],
                      extra_files: Optional[dict[str, bytes]] = None) -> Path:
    """Save ``model``'s weights and ``config`` (must hold ``model``: the ModelConfig as a dict)."""
    return write_model_folder(path, model.state_dict(), config, extra_files)


def load_model_folder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[XMDPT, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` (no pickle).

    Returns:
        (model in eval mode, config dict).
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = json.loads((path / CONFIG_FILE).read_text())
    model = XMDPT(_model_config(config, str(path / CONFIG_FILE)))
    try:
        state_dict = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
    except Exception as e:  # safetensors raises its own SafetensorError for a malformed file
        raise ValueError(f"{path / WEIGHTS_FILE}: not a readable safetensors file ({e})") from e
    check_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict, str(path / WEIGHTS_FILE))
    model.load_state_dict(state_dict)
    return model.to(map_location).eval(), config
