"""Feature-cache throughput and size: `python benchmarks/bench_features.py [--images 64] [--actors 1 2]`.

Encodes synthetic DeepFashion-layout images (``xmdpt.synth``) with the embedded default's
encoders as ``params.yaml`` sets them (fitted-architecture VAE, 64 px -> 4x32x32 latents; random-
feature stand-in tokens 65 x 384 at 112 px) through the real `features` stage code (Ray Data actor pool), once per actor count, and
prints images/s (wall time of the stage, actor start-up included), the bytes per image of the
embedded and of the paper's configuration, and the projection for DeepFashion (~52.7k images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xmdpt.core.config import load_config
from xmdpt.data import schema

REPO = Path(__file__).resolve().parents[1]
DEEPFASHION_IMAGES = 52_712  # In-shop images used by the pose-transfer splits (~52.7k)
FP16 = 2


def tensor_bytes(latent: tuple[int, int, int], image_tokens: tuple[int, int], pose_tokens: tuple[int, int]) -> int:
    """Raw fp16 bytes per image: mean + std latents, image and pose tokens, x2 for the flip."""
    per_aug = (2 * math.prod(latent) + math.prod(image_tokens) + math.prod(pose_tokens)) * FP16
    return 2 * per_aug


def make_fixture(root: Path, n_images: int):
    """Synthetic images + a validated-poses table (keypoints from the synthetic annotations)."""
    from xmdpt.synth import write_synthetic_dataset

    data = root / "data"
    write_synthetic_dataset(str(data), identities=max(2, math.ceil(n_images / 5)), seed=0, test_fraction=0.2)
    paths = sorted(str(p.relative_to(data)) for p in data.glob("img/**/*.jpg"))[:n_images]
    rng = np.random.default_rng(0)
    rows = {f.name: [] for f in schema.POSES_SCHEMA}
    for i, rel in enumerate(paths):
        kps = np.stack([rng.uniform(20, 156, 18), rng.uniform(20, 236, 18)], 1).astype(np.float32)
        for k, v in ((schema.IMAGE_PATH, rel), (schema.SPLIT, "train" if i % 5 else "test"), (schema.HEIGHT, 256),
                     (schema.WIDTH, 176), (schema.KEYPOINTS, kps.reshape(-1).tolist()), (schema.CONFIDENCE, [1.0] * 18),
                     (schema.POSE_SOURCE, "annotation")):
            rows[k].append(v)
    (root / "poses").mkdir()
    pq.write_table(pa.Table.from_pydict(rows, schema=schema.POSES_SCHEMA), root / "poses" / "part-0.parquet")
    from xmdpt.core.manifests import TableEntry, ValidateManifest, ValidateTables

    unused = TableEntry(uri=str(root / "unused"), rows=0)  # tables the autoencoder / features stages do not read
    return ValidateManifest(
        uri=str(root), params={}, dataset_root=str(data), layout="pidm", inputs={},
        tables=ValidateTables(pairs=unused, poses=TableEntry(uri=str(root / "poses"), rows=len(paths)),
                              quarantine=unused),
        counts={"input_rows": len(paths), "valid": len(paths), "quarantined": 0},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    from xmdpt.features.stage import build_feature_cache
    from xmdpt.training.autoencoder import fit_autoencoder
    from xmdpt.core.ray_utils import init_ray

    init_ray(num_cpus=os.cpu_count())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        validate = make_fixture(root, args.images)
        base = load_config(REPO / "params.yaml").replace(paths={"dataset_root": str(root / "data"), "storage_root": str(root / "store0"),
                                            "artifacts_dir": str(root / "artifacts")},
                                     autoencoder={"train_steps": 1})  # weights do not change the encoding cost
        ae = fit_autoencoder(base, validate)
        for n_actors in args.actors:
            cfg = base.replace(paths={"storage_root": str(root / f"store{n_actors}")},
                               features={"num_actors": n_actors, "num_cpus_per_actor": 1.0})
            t0 = time.perf_counter()
            m = build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate, validate=False)
            dt = time.perf_counter() - t0
            results[n_actors] = {"seconds": dt, "images_per_s": m["images"]["cached"] / dt,
                                 "bytes_per_image_on_disk": m["bytes_per_image"], "tensors": m["tensors"]}
    t = results[args.actors[0]]["tensors"]
    embedded = tensor_bytes(tuple(t["latent_mean"]["shape"]), tuple(t["image_tokens"]["shape"]),
                            tuple(t["pose_tokens"]["shape"]))
    paper = tensor_bytes((4, 32, 32), (257, 1536), (257, 768))
    best = max(r["images_per_s"] for r in results.values())
    disk = results[args.actors[0]]["bytes_per_image_on_disk"]
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only)",
        "images": args.images,
        "throughput": {f"{k}_actors": {"images_per_s": round(v["images_per_s"], 2), "seconds": round(v["seconds"], 1)}
                       for k, v in results.items()},
        "bytes_per_image": {"embedded_raw_fp16": embedded, "embedded_on_disk_zstd": disk, "paper_raw_fp16": paper},
        "deepfashion_projection": {
            "images": DEEPFASHION_IMAGES,
            "embedded_size_gb": round(DEEPFASHION_IMAGES * disk / 1e9, 2),
            "paper_size_gb": round(DEEPFASHION_IMAGES * paper / 1e9, 1),
            "embedded_hours_at_best_rate": round(DEEPFASHION_IMAGES / best / 3600, 2),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
