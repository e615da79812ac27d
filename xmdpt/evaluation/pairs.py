"""The test pairs of the `evaluate` stage and their generation.

The test pairs (sorted by pair id; ``evaluate.max_pairs`` of them evenly spaced, one source per
target under the PIDM protocol) flow through Ray Data batch inference: an actor pool
(``ActorPoolStrategy``; one GPU per actor when the cluster has GPUs) where each actor holds an
:class:`~xmdpt.sampling.pipeline.XMDPTPipeline` and generates with the ``sample`` config (DDIM 50,
CFG 2.0 power-cosine by default), one seed per pair. A subset (``evaluate.unguided_pairs``) is also
generated with ``cfg_scale = 1`` (conditional only) and ``cfg_scale = 0`` (null condition) to report
guided vs unguided.

The generated images can be kept (:func:`save_generated`) as soon as generation ends and found
again by a rerun (:func:`load_generated`), so a failure in the metrics does not cost the generation.
"""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from xmdpt.core.config import XMDPTConfig
from xmdpt.data import schema
from xmdpt.encoders.inputs import read_table
from xmdpt.core.manifests import ValidateManifest
from xmdpt.core.ray_utils import init_ray
from xmdpt.core.storage import absolute, filesystem, join
from xmdpt.sampling.batch import map_generation

logger = logging.getLogger(__name__)

ValidateLike = Union[ValidateManifest, Mapping[str, Any]]  # the typed `validate` manifest or its JSON dict
GUIDED, COND_ONLY, NULL_COND = "guided", "cond_only", "null_cond"
VARIANT_SCALES = {COND_ONLY: 1.0, NULL_COND: 0.0}
GENERATED_MANIFEST = "generated.json"


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
        (keypoints in the target image's frame) and ``source_keypoints, source_height, source_width``
        (the source image's, for the same-person floor of the appearance metrics).
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
        src = poses[p[schema.SOURCE_PATH]]
        rows.append({
            "pair_id": p[schema.PAIR_ID], "person_id": p[schema.PERSON_ID],
            "source_path": p[schema.SOURCE_PATH], "target_path": p[schema.TARGET_PATH],
            "keypoints": np.asarray(pose[schema.KEYPOINTS], np.float32).reshape(schema.NUM_KEYPOINTS, 2),
            "height": int(pose[schema.HEIGHT]), "width": int(pose[schema.WIDTH]),
            "source_keypoints": np.asarray(src[schema.KEYPOINTS], np.float32).reshape(schema.NUM_KEYPOINTS, 2),
            "source_height": int(src[schema.HEIGHT]), "source_width": int(src[schema.WIDTH]),
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


def _generation_items(cfg: XMDPTConfig, pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per image to generate: every pair guided, the first ``evaluate.unguided_pairs`` also
    conditional-only and with the null condition; ``row`` is the row's index, ``pair`` its pair's."""
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
    return items


def _collect_generated(ds, items: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]]
                       ) -> tuple[dict[str, dict[int, np.ndarray]], dict[int, str]]:
    """The actors' outputs by variant and pair; a pair with any failed row is quarantined (all its variants)."""
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


def generate_pairs(cfg: XMDPTConfig, model_dir: str, pairs: Sequence[dict[str, Any]]
                   ) -> tuple[dict[str, dict[int, np.ndarray]], dict[int, str]]:
    """Generate every pair (guided) and the unguided subset through the batch-generation actors
    (:mod:`xmdpt.sampling.batch`, the code path of ``xmdpt generate-batch``).

    Returns:
        ``({variant: {row index: uint8 (S, S, 3)}}, {row index: reason})`` for variants guided /
        cond_only / null_cond; rows whose source image cannot be read are quarantined with the reason.
    """

    init_ray(cfg=cfg)  # before asking the cluster for GPUs
    items = _generation_items(cfg, pairs)
    gpus = _gpus_per_actor(cfg.evaluate.num_gpus_per_actor)
    logger.info("generating %d images (%d pairs) with %d actor(s), %s GPU each, %d %s steps, cfg %.2f",
                len(items), len(pairs), cfg.evaluate.num_actors, gpus, cfg.sample.num_steps, cfg.sample.scheduler,
                cfg.sample.cfg_scale)
    sample = cfg.to_dict()["sample"]
    ds = map_generation(items, absolute(str(model_dir)), batch_size=cfg.evaluate.batch_size,
                        actors=cfg.evaluate.num_actors, num_cpus_per_actor=cfg.evaluate.num_cpus_per_actor,
                        num_gpus_per_actor=gpus, sample=sample, square=True, return_images=True,
                        pad=False)  # dataset images: squashed without padding, as in training
    return _collect_generated(ds, items, pairs)


# ------------------------------------------------------------------------------------------------
# Kept generations
# ------------------------------------------------------------------------------------------------


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
