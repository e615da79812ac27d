"""Checking a state dict against the keys and shapes a module needs (model folders, checkpoints, EMA).

Kept outside :mod:`xmdpt.model` so that code which only checks weights (the EMA the autoencoder fit
uses) does not import the X-MDPT network: the stages before `train` do not depend on it.
"""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["check_state_dict"]


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``ValueError`` naming every missing key, unexpected key and shape mismatch.

    Args:
        expected: key -> shape the model needs.
        state_dict: key -> tensor offered.
        what: the source, for the message (a path or "authors' checkpoint").
    """
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k}: expected {tuple(expected[k])}, got {tuple(state_dict[k].shape)}"
                   for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if wrong:
        problems.append(f"shape mismatches [{'; '.join(wrong)}]")
    if problems:
        raise ValueError(f"{what}: state dict does not fit the model: " + ", ".join(problems))
