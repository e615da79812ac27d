"""LPIPS (Zhang et al. 2018) with the AlexNet backbone, as PIDM/CFLD report it (``LPIPS(net="alex")``).

    d(x, y) = sum_l mean_{h,w} || w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|) ||^2

``f_l`` are the ReLU outputs of AlexNet's five conv layers (64, 192, 384, 256, 256 channels),
unit-normalised over channels; ``w_l`` the learned non-negative per-channel weights ("lin"
layers). Both come from files: the torchvision AlexNet ImageNet state dict
(``evaluate.alexnet_weights``) and the LPIPS v0.1 ``alex.pth`` linear heads
(``evaluate.lpips_weights``; keys ``lin{l}.model.1.weight``, shape (1, C_l, 1, 1)).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from xmdpt.metrics.weights import load_state_dict

logger = logging.getLogger(__name__)

LAYER_CHANNELS = (64, 192, 384, 256, 256)
_RELU_IDX = (1, 4, 7, 9, 11)  # indices of the ReLUs in torchvision alexnet.features
# LPIPS input scaling layer (inputs in [-1, 1])
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS distance; ``forward(x, y)`` with ``x, y`` ``(N, 3, H, W)`` in [-1, 1] returns ``(N,)``."""

    def __init__(self) -> None:
        super().__init__()
        # torchvision's alexnet.features up to the last ReLU (same module indices, so its keys load)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
        )
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LAYER_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, alexnet_path: str | Path, lin_path: str | Path) -> "LPIPS":
        """Backbone from a torchvision AlexNet state dict, heads from an LPIPS ``alex.pth`` (or safetensors)."""
        m = cls()
        backbone = load_state_dict(alexnet_path, "evaluate.alexnet_weights")
        # torchvision's state dict also holds features.12 (pool) — no weights — and the classifier
        feats = {k[len("features."):]: v for k, v in backbone.items() if k.startswith("features.")}
        try:
            m.features.load_state_dict(feats, strict=True)
        except RuntimeError as e:
            raise ValueError(f"evaluate.alexnet_weights: {alexnet_path} is not a torchvision alexnet "
                             f"state dict: {e}") from e
        heads = load_state_dict(lin_path, "evaluate.lpips_weights")
        for i, lin in enumerate(m.lins):
            key = next((k for k in (f"lin{i}.model.1.weight", f"lin{i}.weight", f"lins.{i}.weight") if k in heads), None)
            if key is None:
                raise ValueError(f"evaluate.lpips_weights: {lin_path} has no weight for layer {i} "
                                 f"(expected key 'lin{i}.model.1.weight'; found {sorted(heads)[:8]})")
            w = heads[key].reshape(1, LAYER_CHANNELS[i], 1, 1)
            lin.weight.data.copy_(w)
        logger.info("loaded LPIPS-alex from %s + %s", alexnet_path, lin_path)
        return m

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two (N, 3, H, W) batches of equal shape, got {tuple(x.shape)} / {tuple(y.shape)}")
        fx, fy = self._feats((x - self.shift) / self.scale), self._feats((y - self.shift) / self.scale)
        d = 0.0
        for a, b, lin in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # (N, C_l, h, w), unit over channels
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = d + lin((a - b) ** 2).mean(dim=(1, 2, 3))  # (N,)
        return d

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _RELU_IDX:
                out.append(x)
        return out

    @torch.no_grad()
    def distance_uint8(self, a: np.ndarray, b: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Per-image LPIPS of uint8 ``(N, H, W, 3)`` arrays. Returns ``(N,)``."""
        dev = self.shift.device
        out = []
        for i in range(0, len(a), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(a[i:i + batch_size])).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1
            y = torch.from_numpy(np.ascontiguousarray(b[i:i + batch_size])).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append(self(x, y).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)
