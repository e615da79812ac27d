"""The metrics of the `evaluate` stage (``metrics.json``, a DVC metric), from the generated test pairs.

- PIDM protocol on outputs resized to 256x176: ``ssim`` (window 51), ``ssim_256`` (Gaussian
  sigma 1.2), ``psnr``; ``lpips`` (AlexNet) and ``fid`` (Inception-v3 pool3 vs the training
  images) only when their weights files are configured — otherwise ``null`` with a ``*_unavailable``
  reason, never a number from other weights (see :mod:`xmdpt.evaluation.fid_lpips`);
- ``synthetic_*`` — valid only on the synthetic benchmark (see :mod:`xmdpt.metrics.synthetic`):
  silhouette IoU vs the source-image baseline, per-part colour error vs the other-identity
  baseline, cross-view consistency;
- ``subset_*`` — guided vs conditional-only vs null condition on the same subset;
- ``comparisons`` — the model against each baseline and guided against each unguided variant, pair
  by pair: mean difference, 95 % bootstrap interval and which side the interval favours
  (``undecided`` when it contains 0; see :mod:`xmdpt.metrics.stats`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any, Optional, Sequence

import numpy as np

from xmdpt.core.config import XMDPTConfig
from xmdpt.data.images import ImageError, load_rgb, resize_square
from xmdpt.data.keypoints import scale_keypoints
from xmdpt.encoders.inputs import read_image_bytes
from xmdpt.metrics.image import psnr, resize_for_eval, ssim, ssim_256
from xmdpt.metrics.protocol import Protocol, get_protocol
from xmdpt.metrics.stats import gap_closed, paired_comparison
from xmdpt.metrics.synthetic import (foreground_mask, mask_iou, part_colour_error, part_masks, pose_match,
                                     view_consistency)
from xmdpt.evaluation.fid_lpips import fid_metrics, lpips_metrics
from xmdpt.evaluation.pairs import COND_ONLY, GUIDED, NULL_COND, ValidateLike

logger = logging.getLogger(__name__)

PSNR_CAP = 100.0  # identical images give inf; capped so that means stay finite


# ------------------------------------------------------------------------------------------------
# Images as the protocol reads them; pixel metrics
# ------------------------------------------------------------------------------------------------


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _eval_keypoints(p: dict[str, Any], eval_hw: tuple[int, int]) -> np.ndarray:
    return scale_keypoints(p["keypoints"], (p["height"], p["width"]), eval_hw)


def dataset_image_for_eval(img: np.ndarray, eval_hw: tuple[int, int], protocol: str) -> np.ndarray:
    """A dataset photo (ground truth, source, FID real image) as the protocol's metric code reads it.

    ``pidm``: the LMDB's square PIL-bicubic PNG (``data/prepare_data.py``), then ``cv2.resize`` bilinear to
    ``eval_hw``; ``cfld``: bicubic with antialiasing straight to ``eval_hw``.
    """
    if get_protocol(protocol).resize == "cv2_bilinear":
        return resize_for_eval(resize_square(img, eval_hw[0]), eval_hw, "cv2_bilinear")
    return resize_for_eval(img, eval_hw, "pil_bicubic")


def generated_for_eval(img: np.ndarray, eval_hw: tuple[int, int], protocol: str) -> np.ndarray:
    """A square generation resized to ``eval_hw`` the protocol's way (cv2 bilinear / PIL bicubic)."""
    return resize_for_eval(img, eval_hw, get_protocol(protocol).resize)


def pixel_metrics(gen: np.ndarray, gt: np.ndarray, ssim_256_sigma: float = 1.2) -> dict[str, float]:
    """SSIM, SSIM_256, PSNR of two uint8 eval-size images."""
    return {"ssim": ssim(gen, gt), "ssim_256": ssim_256(gen, gt, sigma=ssim_256_sigma),
            "psnr": min(psnr(gen, gt), PSNR_CAP)}


# ------------------------------------------------------------------------------------------------
# Synthetic benchmark
# ------------------------------------------------------------------------------------------------


def _other_identity_colour_error(pairs: Sequence[dict[str, Any]], gts: dict[int, np.ndarray], rows: list[int],
                                 r: int, eval_hw: tuple[int, int]) -> dict[str, float]:
    """The other-identity appearance baseline of row ``r``, per part: the colour error of another
    person's ground truth (in its own target pose) against this row's ground truth.

    For each part the other person is the first row after ``r`` (cyclically) of someone else whose
    ground truth shows that part, so a part hidden in one view (a torso seen from the side) does not
    drop the pair from the baseline. Parts not visible in row ``r`` itself are absent.
    """
    kps = _eval_keypoints(pairs[r], eval_hw)
    visible = {part for part, m in part_masks(kps, eval_hw).items() if m is not None}
    out: dict[str, float] = {}
    i = rows.index(r)
    for o in rows[i + 1:] + rows[:i]:
        if not visible - set(out):
            break
        if pairs[o]["person_id"] == pairs[r]["person_id"]:
            continue
        for part, v in part_colour_error(gts[o], _eval_keypoints(pairs[o], eval_hw), gts[r], kps).items():
            if v is not None and part not in out:
                out[part] = v
    return out


def worst_rows(pairs: Sequence[dict[str, Any]], images: dict[str, dict[int, np.ndarray]], n: int,
               eval_hw: tuple[int, int]) -> list[int]:
    """The ``n`` evaluated rows with the largest colour error (mean of torso and legs where visible)."""
    scores = {}
    for r in images["gen"]:
        kps = _eval_keypoints(pairs[r], eval_hw)
        errs = [v for v in part_colour_error(images["gen"][r], kps, images["gt"][r], kps).values() if v is not None]
        if errs:
            scores[r] = float(np.mean(errs))
    return sorted(scores, key=lambda r: (-scores[r], r))[:n]


def _same_person_floor(p: dict[str, Any], src: np.ndarray, gt: np.ndarray, eval_hw: tuple[int, int]
                       ) -> dict[str, Optional[float]]:
    """The same-person floor of row ``p``, per part: the source photo's own region colour (from its own
    keypoints) against the ground truth's — what a model that copies the clothes exactly scores.
    Empty when the pair carries no source keypoints."""
    if p.get("source_keypoints") is None:
        return {}
    src_kps = scale_keypoints(p["source_keypoints"], (p["source_height"], p["source_width"]), eval_hw)
    return part_colour_error(src, src_kps, gt, _eval_keypoints(p, eval_hw))


def _consistency(pairs: Sequence[dict[str, Any]], gens: dict[int, np.ndarray], gts: dict[int, np.ndarray],
                 rows: Sequence[int]) -> dict[str, Any]:
    """Consistency: one target generated from several source views of the same person."""
    by_target: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_target[pairs[r]["target_path"]].append(r)
    groups = [g for g in by_target.values() if len({pairs[r]["source_path"] for r in g}) >= 2]
    cons = [view_consistency([gens[r] for r in g]) for g in groups]
    gt_vs_gen = [float(np.mean([np.abs(gens[r].astype(np.float64) - gts[r]).mean() / 255.0 for r in g])) for g in groups]
    return {
        "synthetic_consistency_groups": len(groups),
        "synthetic_consistency_pixel_l1": _mean([c["pixel_l1"] for c in cons]),
        "synthetic_consistency_iou": _mean([c["iou"] for c in cons]),
        "synthetic_consistency_gt_pixel_l1": _mean(gt_vs_gen),  # reference scale: generated vs GT in those groups
    }


def synthetic_metrics(pairs: Sequence[dict[str, Any]], gens: dict[int, np.ndarray], gts: dict[int, np.ndarray],
                      srcs: dict[int, np.ndarray], eval_hw: tuple[int, int],
                      others: Optional[dict[int, list[np.ndarray]]] = None) -> dict[str, Any]:
    """The ``synthetic_*`` metrics for the rows in ``gens`` (eval-size uint8 images).

    Args:
        others: row -> foreground masks of the same person's images in the evaluated pairs, other
            than the pair's source and target (for ``synthetic_pose_match``); None or empty: None.
    """
    others = others or {}
    iou, iou_src = [], []
    match, match_src = [], []
    err: dict[str, list] = {"torso": [], "legs": []}  # per row, None where the part is not visible
    err_other: dict[str, list] = {"torso": [], "legs": []}
    err_floor: dict[str, list] = {"torso": [], "legs": []}
    rows = sorted(gens)
    for r in rows:
        p = pairs[r]
        kps = _eval_keypoints(p, eval_hw)
        gen_mask, gt_mask, src_mask = foreground_mask(gens[r]), foreground_mask(gts[r]), foreground_mask(srcs[r])
        iou.append(mask_iou(gen_mask, gt_mask))
        iou_src.append(mask_iou(src_mask, gt_mask))
        match.append(pose_match(gen_mask, gt_mask, others.get(r, [])))
        match_src.append(pose_match(src_mask, gt_mask, others.get(r, [])))
        gen_err = part_colour_error(gens[r], kps, gts[r], kps)
        other_err = _other_identity_colour_error(pairs, gts, rows, r, eval_hw)
        floor_err = _same_person_floor(p, srcs[r], gts[r], eval_hw)
        for part in err:
            err[part].append(gen_err.get(part))
            err_other[part].append(other_err.get(part))
            err_floor[part].append(floor_err.get(part))
    out: dict[str, Any] = {
        "synthetic_pose_iou": _mean(iou),
        "synthetic_pose_iou_source_baseline": _mean(iou_src),
        # among the person's other poses, how often the target's silhouette is the closest (0.5: pose ignored)
        "synthetic_pose_match": _mean(match),
        "synthetic_pose_match_source_baseline": _mean(match_src),
    }
    for part in ("torso", "legs"):
        out[f"synthetic_colour_error_{part}"] = _mean(err[part])
        out[f"synthetic_colour_error_{part}_other_identity_baseline"] = _mean(err_other[part])
        # the floor: the source photo's own region against the ground truth (the same person, another view)
        out[f"synthetic_colour_error_{part}_same_person_floor"] = _mean(err_floor[part])
        gap = gap_closed(err[part], err_other[part], err_floor[part])
        out[f"synthetic_colour_gap_closed_{part}"] = gap["share"] if gap else None
        out[f"synthetic_colour_gap_closed_{part}_detail"] = gap
    # the same comparisons pair by pair, with bootstrap intervals (see xmdpt.metrics.stats)
    out["comparisons"] = {
        "pose_iou_model_vs_source_image": paired_comparison(
            iou, iou_src, names=("model", "source_image"), higher_is_better=True),
        "pose_match_model_vs_source_image": paired_comparison(
            match, match_src, names=("model", "source_image"), higher_is_better=True),
        **{f"colour_error_{part}_model_vs_other_identity": paired_comparison(
            err[part], err_other[part], names=("model", "other_identity"), higher_is_better=False)
           for part in ("torso", "legs")},
        **{f"colour_error_{part}_model_vs_same_person_floor": paired_comparison(
            err[part], err_floor[part], names=("model", "same_person_floor"), higher_is_better=False)
           for part in ("torso", "legs")},
    }
    out.update(_consistency(pairs, gens, gts, rows))
    return out


def _other_poses(pairs: Sequence[dict[str, Any]], rows: Sequence[int], load) -> dict[int, list[np.ndarray]]:
    """Row -> foreground masks of the person's images in ``pairs`` (as source or target) other than
    this pair's source and target, each read and masked once; unreadable ones are skipped with a warning."""

    by_person: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        by_person[p["person_id"]].update((p["source_path"], p["target_path"]))
    cache: dict[str, Optional[np.ndarray]] = {}

    def cached(path: str) -> Optional[np.ndarray]:
        if path not in cache:
            try:
                cache[path] = foreground_mask(load(path))
            except (ImageError, OSError) as e:
                logger.warning("pose-match candidate skipped: %s", e)
                cache[path] = None
        return cache[path]

    out = {}
    for r in rows:
        p = pairs[r]
        paths = sorted(by_person[p["person_id"]] - {p["source_path"], p["target_path"]})
        out[r] = [m for m in (cached(q) for q in paths) if m is not None]
    return out

# ------------------------------------------------------------------------------------------------
# All metrics
# ------------------------------------------------------------------------------------------------


def _read_ground_truth(pairs: Sequence[dict[str, Any]], rows: Sequence[int], load, quarantined: dict[int, str]
                       ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """``(ground truth, source)`` eval-size images of ``rows``; a pair whose images cannot be read is
    quarantined (``quarantined`` updated in place)."""
    gts, srcs = {}, {}
    for r in rows:
        try:
            gts[r], srcs[r] = load(pairs[r]["target_path"]), load(pairs[r]["source_path"])
        except (ImageError, OSError) as e:
            quarantined[r] = f"{pairs[r]['pair_id']}: ground truth {e}"
            logger.warning("quarantined %s", quarantined[r])
    return gts, srcs


def _sampler_settings(cfg: XMDPTConfig) -> dict[str, Any]:
    s = cfg.sample
    return {"scheduler": s.scheduler, "num_steps": s.num_steps, "cfg_scale": s.cfg_scale, "cfg_power": s.cfg_power,
            "respacing": s.respacing,
            "seed": s.seed,
            "guidance_interval": list(s.guidance_interval) if s.guidance_interval is not None else None}


def _guided_vs_unguided(pairs: Sequence[dict[str, Any]], generated: dict[str, dict[int, np.ndarray]],
                        gens: dict[int, np.ndarray], gts: dict[int, np.ndarray],
                        others: dict[int, list[np.ndarray]], eval_hw: tuple[int, int], protocol: Protocol
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Guided vs conditional-only vs null condition on the pairs generated all three ways.

    Returns:
        (``subset_size``, ``subset_*`` and ``synthetic_subset_*`` means; the pair-by-pair comparisons
        of guided against each unguided variant).
    """
    subset = sorted(set(generated.get(COND_ONLY, {})) & set(generated.get(NULL_COND, {})) & set(gts))
    out: dict[str, Any] = {"subset_size": len(subset)}
    if not subset:
        return out, {}
    gt_masks = {r: foreground_mask(gts[r]) for r in subset}
    kps = {r: _eval_keypoints(pairs[r], eval_hw) for r in subset}
    per_row: dict[str, dict[str, list]] = {}  # variant -> metric -> values aligned with subset
    for variant in (GUIDED, COND_ONLY, NULL_COND):
        imgs = {r: (gens[r] if variant == GUIDED else generated_for_eval(generated[variant][r], eval_hw, protocol.name))
                for r in subset}
        pm = [pixel_metrics(imgs[r], gts[r], protocol.ssim_256_sigma) for r in subset]
        masks = {r: foreground_mask(imgs[r]) for r in subset}
        v = per_row[variant] = {
            "ssim": [m["ssim"] for m in pm],
            "pose_iou": [mask_iou(masks[r], gt_masks[r]) for r in subset],
            "pose_match": [pose_match(masks[r], gt_masks[r], others.get(r, [])) for r in subset],
        }
        colour = [part_colour_error(imgs[r], kps[r], gts[r], kps[r]) for r in subset]
        for part in ("torso", "legs"):
            v[f"colour_error_{part}"] = [c[part] for c in colour]
        out[f"subset_{variant}_ssim"] = _mean(v["ssim"])
        out[f"subset_{variant}_psnr"] = _mean([m["psnr"] for m in pm])
        for name in ("pose_iou", "pose_match", "colour_error_torso", "colour_error_legs"):
            out[f"synthetic_subset_{variant}_{name}"] = _mean(v[name])
    comparisons = {}
    for unguided in (COND_ONLY, NULL_COND):
        for name, higher in (("ssim", True), ("pose_iou", True), ("pose_match", True), ("colour_error_torso", False),
                             ("colour_error_legs", False)):
            comparisons[f"subset_{name}_{GUIDED}_vs_{unguided}"] = paired_comparison(
                per_row[GUIDED][name], per_row[unguided][name], names=(GUIDED, unguided), higher_is_better=higher)
    return out, comparisons


def compute_metrics(cfg: XMDPTConfig, validate_manifest: ValidateLike, pairs: Sequence[dict[str, Any]],
                    generated: dict[str, dict[int, np.ndarray]], quarantined: Optional[dict[int, str]] = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """All metrics, and the eval-size images used (for the grid).

    Args:
        quarantined: rows already quarantined during generation (row -> reason); updated in place
            with pairs whose ground truth cannot be read.

    Returns:
        (metrics, {"gen": {row: img}, "gt": {row: img}, "src": {row: img}}) with uint8 (256, 176, 3) images.
    """

    eval_hw = tuple(cfg.evaluate.eval_size)
    root = cfg.paths.dataset_root
    quarantined = quarantined if quarantined is not None else {}

    protocol = get_protocol(cfg.evaluate.protocol)

    def load(path: str) -> np.ndarray:
        return dataset_image_for_eval(load_rgb(read_image_bytes(root, path), name=path), eval_hw, protocol.name)

    gts, srcs = _read_ground_truth(pairs, sorted(generated[GUIDED]), load, quarantined)
    rows = sorted(gts)
    gens = {r: generated_for_eval(generated[GUIDED][r], eval_hw, protocol.name) for r in rows}
    others = _other_poses(pairs, rows, load)
    per_pair = [pixel_metrics(gens[r], gts[r], protocol.ssim_256_sigma) for r in rows]
    if not rows:
        raise ValueError(f"no test pair could be evaluated ({len(quarantined)} quarantined, e.g. "
                         f"{next(iter(quarantined.values()), '')})")
    metrics: dict[str, Any] = {
        "num_pairs": len(rows),
        "num_pairs_quarantined": len(quarantined),
        "protocol": protocol.describe(),
        "eval_size": list(eval_hw),
        "sampler": _sampler_settings(cfg),
        "ssim": _mean([m["ssim"] for m in per_pair]),
        "ssim_256": _mean([m["ssim_256"] for m in per_pair]),
        "psnr": _mean([m["psnr"] for m in per_pair]),
    }
    gen_arr, gt_arr = np.stack([gens[r] for r in rows]), np.stack([gts[r] for r in rows])
    metrics.update(lpips_metrics(cfg, gen_arr, gt_arr))
    metrics.update(fid_metrics(cfg, validate_manifest, gen_arr, load))
    metrics["image_counts"] = {"generated": len(rows), "ground_truth": len(rows),
                               "real": metrics.get("fid_real_images")}
    metrics.update(synthetic_metrics(pairs, gens, gts, srcs, eval_hw, others))
    metrics["synthetic_metrics_note"] = ("synthetic_* metrics assume a light near-uniform background (the synthetic "
                                         "benchmark); they are meaningless on real photos")
    subset, comparisons = _guided_vs_unguided(pairs, generated, gens, gts, others, eval_hw, protocol)
    metrics.update(subset)
    metrics["comparisons"].update(comparisons)
    return metrics, {"gen": gens, "gt": gts, "src": srcs}
