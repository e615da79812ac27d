"""Pixel metrics of the PIDM protocol (PAPER.md §3): SSIM, SSIM_256, PSNR on 256x176 images.

Images are ``(H, W, 3)`` arrays in ``[0, 1]`` (float) or ``uint8``; both are converted to float in
``[0, 1]`` (``data_range=1``), as PIDM's ``Reconstruction_Metrics`` does.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

logger = logging.getLogger(__name__)

EVAL_SIZE = (256, 176)  # (H, W) of the literature's DeepFashion numbers


def as_float01(img: np.ndarray | Image.Image) -> np.ndarray:
    """``(H, W, 3)`` float64 in [0, 1] from a PIL image, a uint8 array or a float array in [0, 1]."""
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    if a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise ValueError(f"float image must be in [0, 1], got range [{a.min():.3f}, {a.max():.3f}]")
    return np.clip(a, 0.0, 1.0)


RESIZE_METHODS = ("pil_bicubic", "cv2_bilinear")


def resize_for_eval(img: np.ndarray | Image.Image, size: tuple[int, int] = EVAL_SIZE,
                    method: str = "pil_bicubic") -> np.ndarray:
    """Resize to ``size = (H, W)``, return uint8 (H, W, 3).

    ``pil_bicubic``: PIL bicubic with antialiasing (CFLD; the PIDM author's advice). ``cv2_bilinear``:
    ``cv2.resize(img, (W, H))`` with the default INTER_LINEAR (PIDM ``utils/metrics.py``). The model
    generates square images (the dataset squashes 256x176 to 256x256); this undoes the squash.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; expected one of {list(RESIZE_METHODS)}")
    if isinstance(img, Image.Image):
        a = np.asarray(img.convert("RGB"))
    else:
        a = np.asarray(img)
        if a.dtype != np.uint8:
            a = np.round(as_float01(a) * 255.0).astype(np.uint8)
    h, w = size
    if method == "cv2_bilinear":
        import cv2

        return np.ascontiguousarray(cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR))
    return np.asarray(Image.fromarray(a).convert("RGB").resize((w, h), Image.BICUBIC))


def ssim(a: np.ndarray, b: np.ndarray, win_size: int = 51) -> float:
    """SSIM with a uniform ``win_size`` window (PIDM/CFLD: 51), channels averaged, data range 1."""
    a, b = as_float01(a), as_float01(b)
    _same_shape(a, b)
    win = min(win_size, *(s if s % 2 else s - 1 for s in a.shape[:2]))
    return float(structural_similarity(a, b, win_size=win, channel_axis=2, data_range=1.0))


def ssim_256(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.2) -> float:
    """"SSIM_256" as the peers compute it: images on the 0–255 scale, Gaussian-weighted window (σ 1.2
    in PIDM, 1.5 in CFLD), population covariance, ``data_range = pred.max() - pred.min()``."""
    a, b = as_float01(pred) * 255.0, as_float01(gt) * 255.0
    _same_shape(a, b)
    data_range = float(a.max() - a.min()) or 255.0  # a constant prediction: the full scale
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                       channel_axis=2, data_range=data_range))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB with data range 1 (``inf`` for identical images)."""
    a, b = as_float01(a), as_float01(b)
    _same_shape(a, b)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
