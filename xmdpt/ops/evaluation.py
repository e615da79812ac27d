"""The `evaluate` stage: generate every test pair with the EMA weights and measure.

Generation is Ray Data batch inference: the test pairs (sorted by pair id) flow through an actor
pool (``ActorPoolStrategy``; one GPU per actor when the cluster has GPUs) where each actor holds an
:class:`~xmdpt.sampling.pipeline.XMDPTPipeline` and generates with the ``sample`` config (DDIM 50,
CFG 2.0 power-cosine by default), seeded per batch. A subset (``evaluate.unguided_pairs``) is also
generated with ``cfg_scale = 1`` (conditional only) and ``cfg_scale = 0`` (null condition) to report
guided vs unguided.

Metrics (``metrics.json``, a DVC metric):

- PIDM protocol on outputs resized to 256x176: ``ssim`` (window 51), ``ssim_256`` (Gaussian
  sigma 1.2), ``psnr``; ``lpips`` (AlexNet) and ``fid`` (Inception-v3 pool3 vs the training
  images) only when their weights files are configured — otherwise ``null`` with a ``*_unavailable``
  reason, never a number from other weights;
- ``synthetic_*`` — valid only on the synthetic benchmark (see :mod:`xmdpt.metrics.synthetic`):
  silhouette IoU vs the source-image baseline, per-part colour error vs the other-identity
  baseline, cross-view consistency;
- ``subset_*`` — guided vs conditional-only vs null condition on the same subset;
- ``comparisons`` — the model against each baseline and guided against each unguided variant, pair
  by pair: mean difference, 95 % bootstrap interval and which side the interval favours
  (``undecided`` when it contains 0; see :mod:`xmdpt.metrics.stats`).

Outputs: generated PNGs under ``{storage_root}/evaluate/{hash}/images/``, ``grid.png``
(source | target skeleton | generated | ground truth) and ``metrics.json`` under
``{artifacts_dir}/evaluate/``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from xmdpt.config import XMDPTConfig
from xmdpt.data import schema
from xmdpt.metrics.image import psnr, resize_for_eval, ssim, ssim_256
from xmdpt.metrics.protocol import get_protocol
from xmdpt.metrics.stats import paired_comparison
from xmdpt.metrics.synthetic import (foreground_mask, mask_iou, part_colour_error, part_masks, pose_match,
                                     view_consistency)
from xmdpt.ops.manifests import EvaluateLineage, EvaluateManifest, FeaturesManifest, TrainManifest, ValidateManifest
from xmdpt.ops.storage import absolute
from xmdpt.data.deepfashion_split import read_split_lists
from xmdpt.data.images import ImageError, load_rgb, resize_square
from xmdpt.data.keypoints import render_skeleton, scale_keypoints
from xmdpt.encoders.inputs import read_image_bytes, read_image_table, read_table
from xmdpt.metrics.fid import InceptionFeatures, fid_from_features
from xmdpt.metrics.lpips import LPIPS
from xmdpt.ops.ray_utils import init_ray
from xmdpt.ops.storage import file_sha256, filesystem, is_url, join, stage_prefix
from xmdpt.sampling.batch import map_generation
from xmdpt.sampling.folder import write_pipeline_folder

logger = logging.getLogger(__name__)

STAGE = "evaluate"
ValidateLike = Union[ValidateManifest, Mapping[str, Any]]  # the typed `validate` manifest or its JSON dict
GUIDED, COND_ONLY, NULL_COND = "guided", "cond_only", "null_cond"
VARIANT_SCALES = {COND_ONLY: 1.0, NULL_COND: 0.0}
# sha256 prefixes in torchvision's published file names (inception_v3_google-0cc3c7bd.pth, alexnet-owt-7be5be79.pth)
TORCHVISION_SHA256_PREFIX = {"inception_v3": "0cc3c7bd", "alexnet": "7be5be79"}
PSNR_CAP = 100.0  # identical images give inf; capped so that means stay finite


# ------------------------------------------------------------------------------------------------
# Test pairs
# ------------------------------------------------------------------------------------------------


def load_test_pairs(validate_manifest: ValidateLike, max_pairs: Optional[int] = None, *,
                    rule: str = "every_row", seed: int = 0) -> list[dict[str, Any]]:
    """Test pairs joined with the target keypoints, sorted by pair id; ``max_pairs`` of them evenly spaced.

    ``rule``: ``every_row`` keeps every validated pair (CFLD: the csv rows); ``one_per_target`` keeps one
    source per target, drawn with ``seed`` among its candidate sources (PIDM: one output per
    ``test_pairs.txt`` line, whose first path is the target).

    Returns:
        dicts with ``pair_id, person_id, source_path, target_path, keypoints (18, 2), height, width``
        (keypoints in the target image's frame).
    """

    tables = ValidateManifest.coerce(validate_manifest).tables
    pairs_uri, poses_uri = tables.pairs.uri, tables.poses.uri
    pairs = read_table(pairs_uri).to_pylist()
    poses = {r[schema.IMAGE_PATH]: r for r in read_table(poses_uri, [schema.IMAGE_PATH, schema.HEIGHT, schema.WIDTH,
                                                                      schema.KEYPOINTS]).to_pylist()}
    rows, missing = [], 0
    for p in sorted((p for p in pairs if p[schema.SPLIT] == "test"), key=lambda r: r[schema.PAIR_ID]):
        pose = poses.get(p[schema.TARGET_PATH])
        if pose is None or p[schema.SOURCE_PATH] not in poses:
            missing += 1
            continue
        rows.append({
            "pair_id": p[schema.PAIR_ID], "person_id": p[schema.PERSON_ID],
            "source_path": p[schema.SOURCE_PATH], "target_path": p[schema.TARGET_PATH],
            "keypoints": np.asarray(pose[schema.KEYPOINTS], np.float32).reshape(schema.NUM_KEYPOINTS, 2),
            "height": int(pose[schema.HEIGHT]), "width": int(pose[schema.WIDTH]),
        })
    if missing:
        logger.warning("%d test pairs skipped: source or target image not in the validated poses table", missing)
    if not rows:
        raise ValueError(f"{pairs_uri}: no test pairs with validated images")
    if rule == "one_per_target":
        rows = one_per_target(rows, seed)
    elif rule != "every_row":
        raise ValueError(f"unknown test-pair rule {rule!r}")
    return evenly_spaced(rows, max_pairs)


def one_per_target(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """One row per target image: its source drawn uniformly (``seed``) among the target's rows, in pair-id order."""
    by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_target[r["target_path"]].append(r)
    rng = np.random.default_rng(seed)
    picked = [cands[int(rng.integers(len(cands)))] for _, cands in sorted(by_target.items())]
    return sorted(picked, key=lambda r: r["pair_id"])


def evenly_spaced(rows: list, n: Optional[int]) -> list:
    """``n`` of ``rows`` evenly spaced, first row included, order kept (all of them for ``n`` None or >= len).

    Test pairs are sorted by id, so a cap taken this way still covers every test identity.
    """
    if not n or n >= len(rows):
        return list(rows)
    return [rows[(i * len(rows)) // n] for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Ray Data generation
# ------------------------------------------------------------------------------------------------


def _gpus_per_actor(configured: Optional[float]) -> float:
    if configured is not None:
        return float(configured)
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def pair_seed(sample_seed: int, row: int) -> int:
    """The seed of test pair ``row``: every variant of a pair (guided / conditional / null) starts from
    the same noise, so their comparison is paired; independent of batching and actors."""
    return (int(sample_seed) * 1_000_003 + int(row)) % (2 ** 31)


def generate_pairs(cfg: XMDPTConfig, model_dir: str, pairs: Sequence[dict[str, Any]]
                   ) -> tuple[dict[str, dict[int, np.ndarray]], dict[int, str]]:
    """Generate every pair (guided) and the unguided subset through the batch-generation actors
    (:mod:`xmdpt.sampling.batch`, the code path of ``xmdpt generate-batch``).

    Returns:
        ``({variant: {row index: uint8 (S, S, 3)}}, {row index: reason})`` for variants guided /
        cond_only / null_cond; rows whose source image cannot be read are quarantined with the reason.
    """

    init_ray(cfg=cfg)  # before asking the cluster for GPUs
    root = absolute(cfg.paths.dataset_root)
    items = []
    for i, p in enumerate(pairs):
        pose = json.dumps({"format": "coco18", "image_size": [int(p["height"]), int(p["width"])],
                           "keypoints": [[float(x), float(y)] for x, y in np.asarray(p["keypoints"]).reshape(-1, 2)]})
        base = {"pair": i, "source": join(root, p["source_path"]), "pose": pose,
                "seed": pair_seed(cfg.sample.seed, i)}
        items.append({**base, "variant": GUIDED, "cfg_scale": float(cfg.sample.cfg_scale)})
        if i < cfg.evaluate.unguided_pairs:
            for variant, scale in VARIANT_SCALES.items():
                items.append({**base, "variant": variant, "cfg_scale": scale})
    for k, it in enumerate(items):
        it["row"], it["id"] = k, f"{pairs[it['pair']]['pair_id']}|{it['variant']}"
    gpus = _gpus_per_actor(cfg.evaluate.num_gpus_per_actor)
    logger.info("generating %d images (%d pairs) with %d actor(s), %s GPU each, %d DDIM steps, cfg %.2f",
                len(items), len(pairs), cfg.evaluate.num_actors, gpus, cfg.sample.num_steps, cfg.sample.cfg_scale)
    sample = cfg.to_dict()["sample"]
    ds = map_generation(items, absolute(str(model_dir)), batch_size=cfg.evaluate.batch_size,
                        actors=cfg.evaluate.num_actors, num_cpus_per_actor=cfg.evaluate.num_cpus_per_actor,
                        num_gpus_per_actor=gpus, sample=sample, square=True, return_images=True,
                        pad=False)  # dataset images: squashed without padding, as in training
    out: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    failed: dict[int, str] = {}
    seen = 0
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for k, img, err in zip(batch["row"], batch["image"], batch["error"]):
            seen += 1
            it = items[int(k)]
            if err:
                failed[it["pair"]] = f"{pairs[it['pair']]['pair_id']}: {str(err).split(': ', 1)[-1]}"
            else:
                out[it["variant"]][it["pair"]] = img
    if seen != len(items):
        raise RuntimeError(f"generation returned {seen} of {len(items)} rows")
    for r, reason in failed.items():
        logger.warning("quarantined %s", reason)
        for imgs in out.values():
            imgs.pop(r, None)
    return dict(out), failed


GENERATED_MANIFEST = "generated.json"


def save_generated(uri: str, pairs: Sequence[dict[str, Any]], generated: dict[str, dict[int, np.ndarray]],
                   quarantined: dict[int, str]) -> None:
    """Keep the generated images (PNG per variant and pair row) and, written last, their manifest."""
    from PIL import Image

    fs, base = filesystem(uri)
    base = base.rstrip("/")
    for variant, imgs in generated.items():
        fs.makedirs(f"{base}/{variant}", exist_ok=True)
        for r, img in imgs.items():
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            with fs.open(f"{base}/{variant}/{r:06d}.png", "wb") as f:
                f.write(buf.getvalue())
    manifest = {"pair_ids": [p["pair_id"] for p in pairs],
                "variants": {v: sorted(int(r) for r in imgs) for v, imgs in generated.items()},
                "quarantined": {str(r): reason for r, reason in quarantined.items()}}
    with fs.open(f"{base}/{GENERATED_MANIFEST}", "w") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")


def load_generated(uri: str, pairs: Sequence[dict[str, Any]]
                   ) -> Optional[tuple[dict[str, dict[int, np.ndarray]], dict[int, str]]]:
    """The images :func:`save_generated` kept for exactly these pairs, or None (absent, incomplete, other pairs)."""
    from PIL import Image

    fs, base = filesystem(uri)
    base = base.rstrip("/")
    if not fs.exists(f"{base}/{GENERATED_MANIFEST}"):
        return None
    manifest = json.loads(fs.cat_file(f"{base}/{GENERATED_MANIFEST}"))
    if manifest.get("pair_ids") != [p["pair_id"] for p in pairs]:
        logger.warning("%s holds images of other test pairs; generating again", uri)
        return None
    generated: dict[str, dict[int, np.ndarray]] = {}
    for variant, rows in manifest["variants"].items():
        generated[variant] = {int(r): np.asarray(Image.open(io.BytesIO(fs.cat_file(f"{base}/{variant}/{int(r):06d}.png")))
                                                .convert("RGB")) for r in rows}
    return generated, {int(r): reason for r, reason in manifest["quarantined"].items()}


# ------------------------------------------------------------------------------------------------
# Metrics
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
        for part in err:
            err[part].append(gen_err.get(part))
            err_other[part].append(other_err.get(part))
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
    # the same comparisons pair by pair, with bootstrap intervals (see xmdpt.metrics.stats)
    out["comparisons"] = {
        "pose_iou_model_vs_source_image": paired_comparison(
            iou, iou_src, names=("model", "source_image"), higher_is_better=True),
        "pose_match_model_vs_source_image": paired_comparison(
            match, match_src, names=("model", "source_image"), higher_is_better=True),
        **{f"colour_error_{part}_model_vs_other_identity": paired_comparison(
            err[part], err_other[part], names=("model", "other_identity"), higher_is_better=False)
           for part in ("torso", "legs")},
    }
    # consistency: one target generated from several source views of the same person
    by_target: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_target[pairs[r]["target_path"]].append(r)
    groups = [g for g in by_target.values() if len({pairs[r]["source_path"] for r in g}) >= 2]
    cons = [view_consistency([gens[r] for r in g]) for g in groups]
    gt_vs_gen = [float(np.mean([np.abs(gens[r].astype(np.float64) - gts[r]).mean() / 255.0 for r in g])) for g in groups]
    out["synthetic_consistency_groups"] = len(groups)
    out["synthetic_consistency_pixel_l1"] = _mean([c["pixel_l1"] for c in cons])
    out["synthetic_consistency_iou"] = _mean([c["iou"] for c in cons])
    out["synthetic_consistency_gt_pixel_l1"] = _mean(gt_vs_gen)  # reference scale: generated vs GT in those groups
    return out


def _fid(cfg: XMDPTConfig, validate_manifest: ValidateLike, gens: Sequence[np.ndarray]) -> dict[str, Any]:
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
                imgs.append(dataset_image_for_eval(load_rgb(read_image_bytes(cfg.paths.dataset_root, p), name=p),
                                                   tuple(cfg.evaluate.eval_size), cfg.evaluate.protocol))
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


def _lpips(cfg: XMDPTConfig, gens: np.ndarray, gts: np.ndarray) -> dict[str, Any]:
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

    gts, srcs = {}, {}
    for r in sorted(generated[GUIDED]):
        try:
            gts[r], srcs[r] = load(pairs[r]["target_path"]), load(pairs[r]["source_path"])
        except (ImageError, OSError) as e:
            quarantined[r] = f"{pairs[r]['pair_id']}: ground truth {e}"
            logger.warning("quarantined %s", quarantined[r])
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
        "sampler": {"num_steps": cfg.sample.num_steps, "cfg_scale": cfg.sample.cfg_scale,
                    "cfg_power": cfg.sample.cfg_power, "respacing": cfg.sample.respacing, "seed": cfg.sample.seed,
                    "guidance_interval": (list(cfg.sample.guidance_interval)
                                          if cfg.sample.guidance_interval is not None else None)},
        "ssim": _mean([m["ssim"] for m in per_pair]),
        "ssim_256": _mean([m["ssim_256"] for m in per_pair]),
        "psnr": _mean([m["psnr"] for m in per_pair]),
    }
    gen_arr, gt_arr = np.stack([gens[r] for r in rows]), np.stack([gts[r] for r in rows])
    metrics.update(_lpips(cfg, gen_arr, gt_arr))
    metrics.update(_fid(cfg, validate_manifest, gen_arr))
    metrics["image_counts"] = {"generated": len(rows), "ground_truth": len(rows),
                               "real": metrics.get("fid_real_images")}
    metrics.update(synthetic_metrics(pairs, gens, gts, srcs, eval_hw, others))
    metrics["synthetic_metrics_note"] = ("synthetic_* metrics assume a light near-uniform background (the synthetic "
                                         "benchmark); they are meaningless on real photos")
    # guided vs unguided on the same subset
    subset = sorted(set(generated.get(COND_ONLY, {})) & set(generated.get(NULL_COND, {})) & set(gts))
    metrics["subset_size"] = len(subset)
    gt_masks = {r: foreground_mask(gts[r]) for r in subset}
    per_row: dict[str, dict[str, list]] = {}  # variant -> metric -> values aligned with subset
    for variant in (GUIDED, COND_ONLY, NULL_COND):
        if not subset:
            break
        imgs = {r: (gens[r] if variant == GUIDED else generated_for_eval(generated[variant][r], eval_hw, protocol.name))
                for r in subset}
        pm = [pixel_metrics(imgs[r], gts[r], protocol.ssim_256_sigma) for r in subset]
        masks = {r: foreground_mask(imgs[r]) for r in subset}
        v = per_row[variant] = {
            "ssim": [m["ssim"] for m in pm],
            "pose_iou": [mask_iou(masks[r], gt_masks[r]) for r in subset],
            "pose_match": [pose_match(masks[r], gt_masks[r], others.get(r, [])) for r in subset],
            "colour_error_torso": [part_colour_error(imgs[r], _eval_keypoints(pairs[r], eval_hw), gts[r],
                                                     _eval_keypoints(pairs[r], eval_hw))["torso"] for r in subset],
        }
        metrics[f"subset_{variant}_ssim"] = _mean(v["ssim"])
        metrics[f"subset_{variant}_psnr"] = _mean([m["psnr"] for m in pm])
        for name in ("pose_iou", "pose_match", "colour_error_torso"):
            metrics[f"synthetic_subset_{variant}_{name}"] = _mean(v[name])
    for unguided in (COND_ONLY, NULL_COND):
        for name, higher in (("ssim", True), ("pose_iou", True), ("pose_match", True), ("colour_error_torso", False)):
            if per_row:
                metrics["comparisons"][f"subset_{name}_{GUIDED}_vs_{unguided}"] = paired_comparison(
                    per_row[GUIDED][name], per_row[unguided][name], names=(GUIDED, unguided), higher_is_better=higher)
    return metrics, {"gen": gens, "gt": gts, "src": srcs}


# ------------------------------------------------------------------------------------------------
# Grid and the stage
# ------------------------------------------------------------------------------------------------


def sample_grid(pairs: Sequence[dict[str, Any]], images: dict[str, dict[int, np.ndarray]], rows: int,
                eval_hw: tuple[int, int]) -> np.ndarray:
    """Rows of (source | target skeleton | generated | ground truth), uint8 ``(rows*H, 4*W, 3)``."""

    out = []
    for r in sorted(images["gen"])[:rows]:
        p = pairs[r]
        skel = render_skeleton(p["keypoints"], (p["height"], p["width"]), eval_hw)
        out.append(np.concatenate([images["src"][r], skel, images["gen"][r], images["gt"][r]], axis=1))
    return np.concatenate(out, axis=0)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def evaluate(cfg: XMDPTConfig, model_dir: str, validate_manifest: ValidateLike, *, out_dir: str | Path,
             images_uri: Optional[str] = None, generation_uri: Optional[str] = None) -> dict[str, Any]:
    """Generate the test pairs with the pipeline folder ``model_dir`` and write grid + metrics.

    Args:
        model_dir: a pipeline folder (or model URI) readable by the actors.
        validate_manifest: the `validate` manifest (pairs + poses tables).
        out_dir: ``{artifacts_dir}/evaluate`` — ``grid.png`` and ``metrics.json`` go here.
        images_uri: folder/URL for the generated PNGs (content-addressed prefix); None: not written.
        generation_uri: where the generated images and their manifest are kept as soon as generation
            ends (keyed by what generation depends on, not by the metric settings); a rerun finds them
            there and skips the generation. None: not kept.

    Returns:
        The metrics dict (also written to ``metrics.json``).
    """

    pairs = load_test_pairs(validate_manifest, cfg.evaluate.max_pairs,
                            rule=get_protocol(cfg.evaluate.protocol).test_pairs, seed=cfg.sample.seed)
    reused = load_generated(generation_uri, pairs) if generation_uri else None
    if reused is not None:
        generated, quarantined = reused
        logger.info("reusing the %d generated images kept at %s (an earlier run stopped after generation)",
                    sum(len(v) for v in generated.values()), generation_uri)
    else:
        generated, quarantined = generate_pairs(cfg, model_dir, pairs)
        if generation_uri:  # kept before the metrics: a failure there does not cost the generation again
            save_generated(generation_uri, pairs, generated, quarantined)
    metrics, images = compute_metrics(cfg, validate_manifest, pairs, generated, quarantined)
    metrics["generation_reused"] = reused is not None
    if metrics["num_pairs"] + len(quarantined) != len(pairs):
        raise RuntimeError(f"{metrics['num_pairs']} evaluated + {len(quarantined)} quarantined != {len(pairs)} pairs")
    metrics["quarantine"] = [quarantined[r] for r in sorted(quarantined)][:50]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = sample_grid(pairs, images, cfg.evaluate.grid_rows, tuple(cfg.evaluate.eval_size))
    (out_dir / "grid.png").write_bytes(_png(grid))
    if images_uri:
        fs, base = filesystem(images_uri)
        fs.makedirs(base, exist_ok=True)
        for variant, imgs in generated.items():
            for r, img in imgs.items():
                if r in quarantined:
                    continue
                name = pairs[r]["pair_id"].split(":", 1)[-1].replace("/", "_")
                suffix = "" if variant == GUIDED else f"_{variant}"
                with fs.open(f"{base.rstrip('/')}/{name}{suffix}_vis.png", "wb") as f:
                    f.write(_png(img))
        metrics["images_uri"] = images_uri
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    logger.info("evaluation: %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
                                   if not isinstance(v, (dict, list, str))})
    return metrics


# ------------------------------------------------------------------------------------------------
# The DVC stage
# ------------------------------------------------------------------------------------------------


def pipeline_inputs(train_manifest: TrainManifest, features_manifest: FeaturesManifest) -> dict[str, Any]:
    """What :func:`xmdpt.sampling.folder.write_pipeline_folder` needs, read from the upstream manifests."""
    codec_uri = features_manifest.vae_uri
    if codec_uri.rstrip("/").endswith("/vae"):  # the diffusers folder inside the codec folder
        codec_uri = codec_uri.rstrip("/")[: -len("/vae")]
    return {
        "model_folder": train_manifest.model_uri,
        "codec_uri": codec_uri,
        "encoder_weights": dict(features_manifest.encoder_weights),
        "encoders": {k: dict(v) for k, v in features_manifest.encoders.items()},
        "standin": features_manifest.standin,
        "latent_scale": float(features_manifest.latent_scale),
    }


def evaluate_stage(cfg: XMDPTConfig) -> dict[str, Any]:
    """Run the `evaluate` stage: pipeline folder, generation, metrics, grid; returns the stage manifest.

    Reads ``{artifacts_dir}/{validate,features,train}/manifest.json``; writes ``grid.png``,
    ``metrics.json`` and ``manifest.json`` (pipeline folder URI, lineage) under ``{artifacts_dir}/evaluate``.
    """
    import shutil

    art = Path(cfg.paths.artifacts_dir)
    validate, features, train = (ValidateManifest.load(art), FeaturesManifest.load(art), TrainManifest.load(art))
    keys = [m.key() for m in (validate, features, train)]
    inputs = pipeline_inputs(train, features)
    prefix = stage_prefix(cfg.paths.storage_root, STAGE, cfg.sample, cfg.evaluate, cfg.paths.dataset_root, *keys)
    lineage = EvaluateLineage(
        train_run_id=train.run_id,
        train_manifest=str(TrainManifest.path(art)),
        features_manifest=str(FeaturesManifest.path(art)),
        model_folder=inputs["model_folder"],
        evaluate_prefix=prefix,
    )
    if is_url(prefix):
        local = Path.home() / ".cache" / "xmdpt" / "pipelines" / Path(prefix.rstrip("/")).name
    else:
        local = Path(prefix) / "pipeline"
    if is_url(inputs["model_folder"]):
        fs, path = filesystem(inputs["model_folder"])
        tmp_model = local.with_name(local.name + ".model")
        shutil.rmtree(tmp_model, ignore_errors=True)
        fs.get(path.rstrip("/") + "/", str(tmp_model) + "/", recursive=True)
        inputs["model_folder"] = str(tmp_model)
    write_pipeline_folder(local, lineage=lineage.to_dict(), **inputs)
    pipeline_uri = str(local)
    if is_url(prefix):
        fs, path = filesystem(join(prefix, "pipeline"))
        fs.put(str(local) + "/", path.rstrip("/") + "/", recursive=True)
        pipeline_uri = join(prefix, "pipeline")
    # generation depends on the sampler, the pairs and the upstream outputs, not on the metric settings
    generation_uri = join(stage_prefix(cfg.paths.storage_root, "evaluate-generation", cfg.sample,
                                       {"max_pairs": cfg.evaluate.max_pairs,
                                        "unguided_pairs": cfg.evaluate.unguided_pairs,
                                        "test_pairs": get_protocol(cfg.evaluate.protocol).test_pairs},
                                       cfg.paths.dataset_root, *keys),
                          "generated")
    metrics = evaluate(cfg, str(local), validate, out_dir=art / STAGE, images_uri=join(prefix, "images"),
                       generation_uri=generation_uri)
    return EvaluateManifest(
        uri=prefix,
        pipeline_uri=pipeline_uri,
        pipeline_local=str(local),
        standin_encoders=inputs["standin"],
        metrics_path=str(art / STAGE / "metrics.json"),
        grid_path=str(art / STAGE / "grid.png"),
        num_pairs=metrics["num_pairs"],
        lineage=lineage,
        tracking_uri=train.tracking_uri,
    ).write(EvaluateManifest.path(art))
