"""Exponential moving average of model weights (the authors: rate 0.9999, updated every step from
step 0, initialised as a copy of the weights)."""

from __future__ import annotations

import torch
from torch import nn

from xmdpt.model.folder import check_state_dict

__all__ = ["EMA"]


class EMA:
    """``shadow <- decay * shadow + (1 - decay) * param`` for every floating-point parameter;
    buffers are copied. ``state_dict()`` has the model's own keys, so it saves as model weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._param_names = [k for k, p in model.named_parameters() if p.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        names = self._param_names
        torch._foreach_lerp_([self.shadow[k] for k in names], [params[k].detach() for k in names], 1.0 - self.decay)
        for k, v in model.state_dict().items():
            if k not in params:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        check_state_dict({k: tuple(v.shape) for k, v in self.shadow.items()}, state_dict, "EMA")
        for k, v in state_dict.items():
            self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (e.g. an eval copy)."""
        model.load_state_dict(self.shadow)
