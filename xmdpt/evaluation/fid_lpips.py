"""FID and LPIPS of the `evaluate` stage: reported only with the published backbone weights.

``fid`` (Inception-v3 pool3 features of the generations vs the training images) and ``lpips``
(AlexNet-LPIPS against the ground truth) are computed only when their weights files are configured
(``evaluate.inception_weights``; ``evaluate.lpips_weights`` and ``evaluate.alexnet_weights``) —
otherwise ``null`` with a ``*_unavailable`` reason, never a number from other weights. Each comes
with the sha256 of its backbone file and whether that file is torchvision's published checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from xmdpt.core.config import XMDPTConfig
from xmdpt.data import schema
from xmdpt.data.deepfashion_split import read_split_lists
from xmdpt.data.images import ImageError
from xmdpt.encoders.inputs import read_image_table
from xmdpt.metrics.fid import InceptionFeatures, fid_from_features
from xmdpt.metrics.lpips import LPIPS
from xmdpt.evaluation.pairs import ValidateLike
from xmdpt.core.storage import file_sha256

logger = logging.getLogger(__name__)

# sha256 prefixes in torchvision's published file names (inception_v3_google-0cc3c7bd.pth, alexnet-owt-7be5be79.pth)
TORCHVISION_SHA256_PREFIX = {"inception_v3": "0cc3c7bd", "alexnet": "7be5be79"}


def fid_real_paths(cfg: XMDPTConfig, validate_manifest: ValidateLike) -> tuple[list[str], str]:
    """The FID real set: every image ``train.lst`` names (as both peers use), else the validated train split.

    Returns:
        (image paths relative to the dataset root, where the list came from).
    """

    split_of, problems = read_split_lists(cfg.paths.dataset_root)
    for p in problems:
        logger.warning("train.lst: %s", p.reason if hasattr(p, "reason") else p)
    train = sorted(path for path, split in split_of.items() if split == "train")
    if train:
        return train, f"train.lst ({len(train)} images)"
    table = read_image_table(validate_manifest)
    train = [p for p, s in zip(table.column(schema.IMAGE_PATH).to_pylist(), table.column(schema.SPLIT).to_pylist())
             if s == "train"]
    return train, f"the validated train split ({len(train)} images; the dataset has no train.lst)"


def fid_metrics(cfg: XMDPTConfig, validate_manifest: ValidateLike, gens: Sequence[np.ndarray],
                load: Callable[[str], np.ndarray]) -> dict[str, Any]:
    """FID of ``gens`` against the real set (:func:`fid_real_paths`), each real image read with ``load``
    (a path relative to the dataset root -> the eval-size image); null with the reason when unavailable."""
    if not cfg.evaluate.inception_weights:
        return {"fid": None, "fid_unavailable": "no Inception-v3 weights configured (evaluate.inception_weights); "
                "FID is only reported with torchvision's ImageNet Inception-v3 weights"}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ext = InceptionFeatures(cfg.evaluate.inception_weights, device=device)
    listed, source = fid_real_paths(cfg, validate_manifest)
    train = listed[: cfg.evaluate.max_real_images or None]

    real, unreadable = [], []
    for i in range(0, len(train), 64):
        imgs = []
        for p in train[i:i + 64]:
            try:
                imgs.append(load(p))
            except (ImageError, OSError) as e:  # counted against the list, never silently dropped
                unreadable.append(str(e))
        if imgs:
            real.append(ext(np.stack(imgs)))
    if unreadable:
        logger.warning("FID real set: %d of %d listed images unreadable, e.g. %s", len(unreadable), len(train),
                       unreadable[0])
    fake = ext(np.stack(list(gens)))
    real_f = np.concatenate(real) if real else np.zeros((0, 2048))
    if len(real_f) < 2 or len(fake) < 2:
        return {"fid": None, "fid_unavailable": f"too few images for FID ({len(real_f)} real, {len(fake)} generated)"}
    return {"fid": fid_from_features(real_f, fake), "fid_real_images": len(real_f), "fid_real_listed": len(listed),
            "fid_real_unreadable": unreadable[:20],
            "fid_real_source": source, "fid_generated_images": len(fake),
            **_provenance("fid", cfg.evaluate.inception_weights, TORCHVISION_SHA256_PREFIX["inception_v3"])}


def lpips_metrics(cfg: XMDPTConfig, gens: np.ndarray, gts: np.ndarray) -> dict[str, Any]:
    """Mean LPIPS (AlexNet) of ``gens`` against ``gts``; null with the reason when the weights are not configured."""
    ev = cfg.evaluate
    if not ev.lpips_weights or not ev.alexnet_weights:
        missing = [k for k, v in (("evaluate.lpips_weights", ev.lpips_weights),
                                  ("evaluate.alexnet_weights", ev.alexnet_weights)) if not v]
        return {"lpips": None, "lpips_unavailable": f"no LPIPS-alex weights configured ({', '.join(missing)}); "
                "LPIPS is only reported with the published AlexNet-LPIPS weights"}

    m = LPIPS.from_files(ev.alexnet_weights, ev.lpips_weights)
    return {"lpips": float(m.distance_uint8(gens, gts).mean()),
            **_provenance("lpips", ev.alexnet_weights, TORCHVISION_SHA256_PREFIX["alexnet"])}


def _provenance(metric: str, path: str, torchvision_prefix: str) -> dict[str, Any]:
    """sha256 of the backbone file, and whether it is torchvision's published checkpoint (by hash prefix)."""

    digest = file_sha256(path)
    return {f"{metric}_weights_sha256": digest, f"{metric}_weights_are_torchvision": digest.startswith(torchvision_prefix)}
