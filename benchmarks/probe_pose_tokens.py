"""How much of the target silhouette can CANet's pose stream carry? A supervised probe.

Fits CANet's own pose branch (per-token Linear-GELU-LayerNorm, learned weighted sum over the tokens,
GELU, LayerNorm: the modules of :class:`xmdpt.model.canet.CANet`) plus a small head to predict the
16 x 16 foreground silhouette of each image from its pose tokens, on the train split of the `features`
cache (images and flips), and reports the silhouette IoU on the held-out identities, next to the
IoU of the mean train silhouette (a pose-blind answer). The same probe on the rendered skeleton's
raw 8 x 8-pixel patches, without and with 2-D sin-cos positions, tells whether the stand-in encoder
loses anything the pixels hold. A diffusion model conditioned through this stream cannot follow the
pose better than the probe does; if its outputs follow the pose far less, the limit is the training,
not the encoder.

    python benchmarks/probe_pose_tokens.py [--artifacts artifacts] [--dataset data/synth] [--steps 1500]

Needs the DAG's `features` stage (``make run`` or ``dvc repro features``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def load_rows(artifacts: str, dataset: str):
    """Pose tokens (N, S, D), 16x16 silhouettes (N, 256), keypoints (N, 18, 2) and split of every cached row."""
    import pyarrow.parquet as pq

    from xmdpt.data import schema
    from xmdpt.encoders.inputs import load_square_image
    from xmdpt.metrics.synthetic import foreground_mask
    from xmdpt.core.storage import filesystem

    path = Path(artifacts) / "features" / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `make run` (or `dvc repro features`) first")
    manifest = json.loads(path.read_text())
    shape = tuple(manifest["tensors"][schema.POSE_TOKENS]["shape"])
    size = int(manifest.get("image_size") or 64)
    fs, base = filesystem(manifest["uri"])
    files = sorted(p for p in fs.ls(base.rstrip("/") + "/data", detail=False) if p.endswith(".parquet"))
    tokens, masks, keypoints, splits = [], [], [], []
    for f in files:
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh, columns=[schema.IMAGE_PATH, schema.FLIP, schema.SPLIT, schema.KEYPOINTS,
                                               schema.POSE_TOKENS]).to_pylist()
        for r in table:
            tokens.append(np.frombuffer(r[schema.POSE_TOKENS], np.float16).reshape(shape).astype(np.float32))
            m = foreground_mask(load_square_image(dataset, r[schema.IMAGE_PATH], size)).astype(np.float32)
            masks.append(np.ascontiguousarray(m[:, ::-1] if r[schema.FLIP] else m))
            keypoints.append(np.asarray(r[schema.KEYPOINTS], np.float32).reshape(schema.NUM_KEYPOINTS, 2))
            splits.append(r[schema.SPLIT])
    sil = F.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks))[:, None], 16).flatten(1)  # (N, 256)
    return torch.from_numpy(np.stack(tokens)), sil, np.stack(keypoints), np.array(splits), size


def iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over rows of :func:`xmdpt.metrics.synthetic.mask_iou` of (N, P) soft masks cut at 0.5."""
    from xmdpt.metrics.synthetic import mask_iou

    a, b = (pred > 0.5).numpy(), (target > 0.5).numpy()
    return float(np.mean([mask_iou(x, y) for x, y in zip(a, b)]))


def probe(tokens: torch.Tensor, sil: torch.Tensor, train: np.ndarray, steps: int, dim: int = 128) -> tuple[float, float]:
    """Fit CANet's pose branch + a head on the train rows; (held-out IoU, train IoU)."""
    from xmdpt.model.canet import _token_mlp, _token_pool

    torch.manual_seed(0)
    net = nn.Sequential(_token_mlp(tokens.shape[2], dim), _token_pool(tokens.shape[1], dim), nn.Flatten(1),
                        _token_mlp(dim, dim), nn.Linear(dim, sil.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    xt, yt = tokens[train], sil[train]
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(xt), (64,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return iou(torch.sigmoid(net(tokens[~train])), sil[~train]), iou(torch.sigmoid(net(xt)), yt)


def main() -> None:
    from xmdpt.data.keypoints import render_skeleton
    from xmdpt.model.layers import sincos_pos_embed_2d

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--dataset", default="data/synth")
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tokens, sil, kps, splits, size = load_rows(args.artifacts, args.dataset)
    train = splits == "train"
    print(f"# pose-token probe: {train.sum()} train / {(~train).sum()} held-out rows, tokens {tuple(tokens.shape[1:])}, "
          f"{args.steps} steps x 64; 16x16 silhouettes")
    mean_iou = iou(sil[train].mean(0, keepdim=True).expand(int((~train).sum()), -1), sil[~train])
    print("| input | held-out silhouette IoU | train IoU |\n|---|---|---|")
    print(f"| mean train silhouette (pose-blind) | {mean_iou:.3f} | — |")
    skel = torch.from_numpy(np.stack([render_skeleton(k, (size, size), (size, size)) for k in kps])).permute(0, 3, 1, 2)
    patches = F.unfold(skel.float() / 255, size // 8, stride=size // 8).transpose(1, 2)  # (N, 64, 3 * p * p)
    pos = sincos_pos_embed_2d(64, 8).expand(len(patches), -1, -1)  # (N, 64, 64)
    for name, x in (("the cached pose tokens (the DAG's encoder)", tokens),
                    ("raw skeleton patches, no position", patches),
                    ("raw skeleton patches + 2-D sin-cos position", torch.cat([patches, pos], 2))):
        held, fit = probe(x, sil, train, args.steps)
        print(f"| {name} | {held:.3f} | {fit:.3f} |", flush=True)
    print(f"# {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
