"""FID: Frechet distance between Gaussians fitted to Inception-v3 pool3 features.

Protocol (PIDM/CFLD, PAPER.md §3): torchvision Inception-v3 ImageNet weights, images resized
(bilinear) to 299x299, 2048-d average-pool ("pool3") features; real set = training images,
generated set = test outputs at 256x176. The weights come from a file
(``evaluate.inception_weights``); with none configured FID is reported as unavailable, never
computed with other weights.

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xmdpt.metrics.weights import load_state_dict

logger = logging.getLogger(__name__)

INCEPTION_SIZE = 299
FEATURE_DIM = 2048


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and covariance ``(F, F)`` (unbiased, as pytorch-fid) of ``features`` ``(N, F)``, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an (N, F) feature array with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative eigenvalues from round-off -> 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``Tr((S1 S2)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix ``S1^{1/2} S2 S1^{1/2}`` (same spectrum as ``S1 S2``), which is exact for PSD inputs
    and avoids the complex round-off of a general ``sqrtm``.

    Args:
        mu1, mu2: means ``(F,)``.
        sigma1, sigma2: covariances ``(F, F)``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets ``(N, F)`` and ``(M, F)``."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InceptionFeatures:
    """torchvision Inception-v3 pool3 features (2048-d) from a weights file, no hub access.

    Input: uint8 ``(N, H, W, 3)`` images, prepared as the peers' FID code does (PIDM
    ``utils/inception.py``, CFLD ``models/metrics.py``): scaled to [0, 1], resized (bilinear) to 299,
    then torchvision's per-channel ``transform_input`` affine ``x * (std / 0.5) + (mean - 0.5) / 0.5``
    (ImageNet mean/std) applied to that [0, 1] tensor, and fed with ``transform_input=False``. (Not
    ``2x - 1``: the same weights give other features on it, and FIDs not comparable with the tables.)
    """

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        from torchvision.models import inception_v3

        sd = load_state_dict(weights_path, "evaluate.inception_weights")
        aux = any(k.startswith("AuxLogits.") for k in sd)
        with torch.device("meta"):  # no random init of weights that are overwritten right away
            net = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
        try:
            net.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as e:
            raise ValueError(f"evaluate.inception_weights: {weights_path} is not a torchvision "
                             f"inception_v3 state dict: {e}") from e
        net.fc = torch.nn.Identity()  # pool3 features
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        logger.info("loaded Inception-v3 weights from %s", weights_path)

    @staticmethod
    def prepare(images: np.ndarray) -> torch.Tensor:
        """uint8 ``(n, H, W, 3)`` -> the network input ``(n, 3, 299, 299)`` (see the class docstring)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (n, 3, H, W)
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Args: images uint8 ``(N, H, W, 3)``. Returns float64 ``(N, 2048)``."""
        out = []
        for i in range(0, len(images), self.batch_size):
            x = self.prepare(images[i:i + self.batch_size]).to(self.device)
            out.append(self.net(x).double().cpu().numpy())  # (n, 2048)
        return np.concatenate(out, axis=0) if out else np.zeros((0, FEATURE_DIM))
