"""Evaluation metrics.

- :mod:`xmdpt.metrics.image`: SSIM (window 51 and the "SSIM_256" Gaussian variant), PSNR, and the
  PIDM-protocol resize to 256x176.
- :mod:`xmdpt.metrics.fid`: Frechet distance of Inception-v3 pool3 features (torchvision weights,
  loaded from a file, never from a hub).
- :mod:`xmdpt.metrics.lpips`: LPIPS with an AlexNet backbone (weights from files).
- :mod:`xmdpt.metrics.synthetic`: metrics valid only on the synthetic benchmark (``synthetic_*``):
  silhouette IoU, per-part colour error, cross-view consistency.
"""

from xmdpt.metrics.fid import frechet_distance, gaussian_stats
from xmdpt.metrics.image import psnr, resize_for_eval, ssim, ssim_256

__all__ = ["frechet_distance", "gaussian_stats", "psnr", "resize_for_eval", "ssim", "ssim_256"]
