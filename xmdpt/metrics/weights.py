"""Loading backbone weights from files without pickle (safetensors, or ``torch.load(weights_only=True)``)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pt/.pth`` file (``weights_only=True``).

    Args:
        path: the weights file.
        key: the config key that named it, for error messages (``evaluate.inception_weights``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}: weights file {p} not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the key and file named
        raise ValueError(f"{key}: cannot read {p} as a weights-only state dict: {e}") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{key}: {p} does not hold a state dict (got {type(sd).__name__})")
    return sd
