"""Does the trained model use its conditions, and where is the clothes' colour lost? Four measurements.

0. The autoencoder's round trip: the held-out pairs' ground truth decoded from its cached latent
   (posterior mean) and scored like a generation. What a model that predicted the perfect latent
   would score: the floor the autoencoder sets, above the same-person floor of the metrics.
1. The x_0 error of the trained model's prediction at fixed noise levels on held-out test pairs, with
   the pair's own conditions, with another person's source (image tokens and latent), with another
   target pose, and with the null condition. Conditions the model uses lower the error against the
   other three columns; at high noise (t >= 600) x_t no longer shows the person and only the
   conditions can say what x_0 looks like.
2. Ridge probes for the source image's own torso / legs colour (the metric's regions and distance,
   ``xmdpt.metrics.synthetic``) from what CANet reads (the stand-in image tokens, the source latent)
   and from what it makes of them (its stream outputs and ``y``). Fitted on the train split's images,
   scored on the test split's; "mean predictor" is the floor a probe must beat.
3. Can CANet's image stream (per-token MLP -> per-position weighted sum -> GELU -> LayerNorm) carry
   the colour at all? A fresh stream with a linear read-out is trained for the colour alone on the
   train split's images (AdamW, several weight decays, a quarter / half / all of the images) and
   scored on the test split's. A stream that fits the train images and not the test ones has
   learned the training people, not the colour.

    python benchmarks/probe_conditioning.py [--model FOLDER] [--pairs 96]

Run it in a checkout whose DAG has run (``make run``): it reads the `features`, `validate` and
`train` manifests under ``artifacts/`` and, without ``--model``, the trained model folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from xmdpt.core.config import XMDPTConfig
from xmdpt.core.manifests import FeaturesManifest, TrainManifest, ValidateManifest
from xmdpt.data import schema
from xmdpt.data.images import load_rgb
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.encoders.inputs import read_image_bytes, read_table
from xmdpt.encoders.vae import LatentCodec, to_uint8
from xmdpt.evaluation.pairs import load_test_pairs
from xmdpt.evaluation.scores import dataset_image_for_eval, generated_for_eval, pixel_metrics, synthetic_metrics
from xmdpt.metrics.synthetic import mean_colour, part_masks
from xmdpt.model import XMDPT
from xmdpt.model.canet import CANet
from xmdpt.model.folder import load_model_folder
from xmdpt.sampling.pipeline import _config_from_folder
from xmdpt.training.data import FeatureSpec

NOISE_LEVELS = (300, 450, 600, 750, 900)
RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 1e4)


def feature_rows(features: FeaturesManifest) -> dict:
    """(image_path, flip) -> row of the feature cache."""
    table = read_table(features.uri.rstrip("/") + "/data")
    return {(r[schema.IMAGE_PATH], bool(r[schema.FLIP])): r for r in table.to_pylist()}


def stack(rows: dict, spec: FeatureSpec, paths: list[str], name: str) -> torch.Tensor:
    """(N, ...) float32: tensor ``name`` of the unflipped rows of ``paths``, decoded as the manifest says."""
    return torch.stack([torch.from_numpy(np.frombuffer(rows[(p, False)][name], dtype=spec.dtypes[name])
                                         .reshape(spec.shapes[name]).astype(np.float32)) for p in paths])


@torch.no_grad()
def autoencoder_round_trip(cfg: XMDPTConfig, codec: LatentCodec, rows, spec, pairs) -> None:
    z = stack(rows, spec, [p["target_path"] for p in pairs], schema.LATENT_MEAN)
    images = to_uint8(codec.decode(z))
    hw, protocol = tuple(cfg.evaluate.eval_size), cfg.evaluate.protocol

    def load(path: str) -> np.ndarray:
        return dataset_image_for_eval(load_rgb(read_image_bytes(cfg.paths.dataset_root, path), name=path), hw, protocol)

    gens = {i: generated_for_eval(images[i], hw, protocol) for i in range(len(pairs))}
    gts = {i: load(p["target_path"]) for i, p in enumerate(pairs)}
    srcs = {i: load(p["source_path"]) for i, p in enumerate(pairs)}
    m = synthetic_metrics(pairs, gens, gts, srcs, hw)
    ssim = float(np.mean([pixel_metrics(gens[i], gts[i])["ssim"] for i in gens]))
    print(f"autoencoder round trip of the ground truth, {len(pairs)} held-out pairs (what a perfect latent scores)")
    print("| pose IoU | torso colour | legs colour | SSIM |\n|---|---|---|---|")
    print(f"| {m['synthetic_pose_iou']:.3f} | {m['synthetic_colour_error_torso']:.3f} "
          f"| {m['synthetic_colour_error_legs']:.3f} | {ssim:.3f} |")
    print(f"(same-person floor: torso {m['synthetic_colour_error_torso_same_person_floor']:.3f}, legs "
          f"{m['synthetic_colour_error_legs_same_person_floor']:.3f})\n")


@torch.no_grad()
def conditioning_use(model: XMDPT, diffusion: GaussianDiffusion, rows, spec, pairs, scale: float) -> None:
    tgt, src = [p["target_path"] for p in pairs], [p["source_path"] for p in pairs]
    x_0 = stack(rows, spec, tgt, schema.LATENT_MEAN) * scale
    pose, ref = stack(rows, spec, tgt, schema.POSE_TOKENS), stack(rows, spec, src, schema.IMAGE_TOKENS)
    ref_latent = stack(rows, spec, src, schema.LATENT_MEAN) * scale
    n = len(pairs)
    other = torch.roll(torch.arange(n), n // 2)  # pairs are sorted by person: half-way round is someone else
    variants = {"own conditions": (pose, ref, ref_latent, None),
                "another source": (pose, ref[other], ref_latent[other], None),
                "another pose": (pose[other], ref, ref_latent, None),
                "null condition": (pose, ref, ref_latent, torch.ones(n, dtype=torch.bool))}
    print(f"x_0 MSE of the prediction, {n} held-out pairs (prediction: {diffusion.prediction})")
    print("| t (SNR) | " + " | ".join(variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    g = torch.Generator().manual_seed(0)
    for t in NOISE_LEVELS:
        noise = torch.randn(x_0.shape, generator=g)
        tt = torch.full((n,), t)
        x_t = diffusion.q_sample(x_0, tt, noise)
        errs = []
        for p_, r_, rl_, drop in variants.values():
            eps = diffusion.eps_from_prediction(model(x_t, tt, p_, r_, rl_, drop_cond=drop)[:, :x_0.shape[1]], x_t, tt)
            errs.append(float(((diffusion.predict_x0(x_t, tt, eps) - x_0) ** 2).mean()))
        ab = float(diffusion.alphas_cumprod[t])
        print(f"| {t} ({ab / (1 - ab):.4f}) | " + " | ".join(f"{e:.3f}" for e in errs) + " |")


def part_colours(cfg: XMDPTConfig, validate: ValidateManifest) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Split -> (image path, torso RGB + legs RGB) for images showing both parts."""
    out: dict[str, list] = {"train": [], "test": []}
    for p in read_table(validate.tables.poses.uri).to_pylist():
        path = p[schema.IMAGE_PATH]
        img = load_rgb(read_image_bytes(cfg.paths.dataset_root, path), name=path)
        masks = part_masks(np.asarray(p[schema.KEYPOINTS], np.float32).reshape(schema.NUM_KEYPOINTS, 2), img.shape[:2])
        if masks["torso"] is not None and masks["legs"] is not None:
            out[p[schema.SPLIT]].append((path, np.concatenate([mean_colour(img, masks["torso"]),
                                                               mean_colour(img, masks["legs"])])))
    return out


@torch.no_grad()
def probe_inputs(model: XMDPT, rows, spec, paths: list[str], scale: float) -> dict[str, np.ndarray]:
    ref, pose = stack(rows, spec, paths, schema.IMAGE_TOKENS), stack(rows, spec, paths, schema.POSE_TOKENS)
    latent = stack(rows, spec, paths, schema.LATENT_MEAN) * scale
    cn = model.canet
    feats = {"image tokens, flattened": ref.flatten(1), "image tokens, mean over positions": ref.mean(1),
             "source latent": latent.flatten(1),
             "CANet image stream": cn.ref_pool(cn.ref_proj(ref)).squeeze(1),
             "CANet latent stream": cn.latent_pool(model.tdnet.embed(latent)).squeeze(1),
             "CANet output y": model.summarize_conditions(pose, ref, latent)}
    return {k: v.double().numpy() for k, v in feats.items()}


def ridge_predict(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, lam: float) -> np.ndarray:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mu) / sd, (x_test - mu) / sd
    y_mean = y.mean(0)
    if x.shape[1] > x.shape[0]:  # dual form
        a = np.linalg.solve(x @ x.T + lam * np.eye(len(x)), y - y_mean)
        return x_test @ (x.T @ a) + y_mean
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ (y - y_mean))
    return x_test @ w + y_mean


def colour_errors(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return (float(np.linalg.norm(pred[:, :3] - truth[:, :3], axis=1).mean()),
            float(np.linalg.norm(pred[:, 3:] - truth[:, 3:], axis=1).mean()))


def colour_probes(model: XMDPT, colours: dict[str, list[tuple[str, np.ndarray]]], rows, spec, scale: float) -> None:
    train_paths, train_y = [p for p, _ in colours["train"]], np.stack([c for _, c in colours["train"]])
    test_paths, test_y = [p for p, _ in colours["test"]], np.stack([c for _, c in colours["test"]])
    f_train, f_test = probe_inputs(model, rows, spec, train_paths, scale), probe_inputs(model, rows, spec, test_paths, scale)
    print(f"\nridge probes for the source's torso / legs colour ({len(train_y)} train images, {len(test_y)} test; "
          "best lambda on the test split)")
    print("| input | torso colour error | legs colour error |\n|---|---|---|")
    for name in f_train:
        best = min((colour_errors(ridge_predict(f_train[name], train_y, f_test[name], lam), test_y)
                    for lam in RIDGE_LAMBDAS), key=sum)
        print(f"| {name} | {best[0]:.3f} | {best[1]:.3f} |")
    mean = colour_errors(np.broadcast_to(train_y.mean(0), test_y.shape), test_y)
    print(f"| mean predictor | {mean[0]:.3f} | {mean[1]:.3f} |")


def fit_image_stream(cfg: XMDPTConfig, x: torch.Tensor, y: torch.Tensor, weight_decay: float,
                     steps: int = 1500, lr: float = 2e-3) -> torch.nn.Module:
    """A fresh CANet image stream + linear read-out trained for ``y`` (N, 6) from tokens ``x`` (N, S, D)."""
    torch.manual_seed(0)
    canet = CANet(cfg.model)
    canet.reset_parameters()
    net = torch.nn.Sequential(canet.ref_proj, canet.ref_pool, torch.nn.Flatten(1), torch.nn.Linear(cfg.model.hidden_size, 6))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    y_mean = y.mean(0)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,))
        loss = ((net(x[i]) + y_mean - y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.y_mean = y_mean
    return net


def image_stream_probes(cfg: XMDPTConfig, colours: dict[str, list[tuple[str, np.ndarray]]], rows, spec) -> None:
    x = {s: stack(rows, spec, [p for p, _ in colours[s]], schema.IMAGE_TOKENS) for s in ("train", "test")}
    y = {s: torch.tensor(np.stack([c for _, c in colours[s]]), dtype=torch.float32) for s in ("train", "test")}
    print("\nCANet's image stream trained for the source's torso / legs colour (test split; train split)")
    print("| train images | weight decay | torso, test | legs, test | torso, train | legs, train |\n|---|---|---|---|---|---|")
    n = len(x["train"])
    for k, wd in ((n // 4, 0.01), (n // 2, 0.01), (n, 0.01), (n, 0.3), (n, 1.0), (n, 3.0)):
        net = fit_image_stream(cfg, x["train"][:k], y["train"][:k], wd)
        with torch.no_grad():
            err = {s: colour_errors((net(x[s]) + net.y_mean).numpy(), y[s].numpy()) for s in ("test", "train")}
        print(f"| {k} | {wd} | {err['test'][0]:.3f} | {err['test'][1]:.3f} | {err['train'][0]:.3f} | {err['train'][1]:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--model", default=None, help="model folder (config.json + model.safetensors); default: the train stage's")
    ap.add_argument("--pairs", type=int, default=96)
    args = ap.parse_args()
    art = Path(args.artifacts)
    features = FeaturesManifest.coerce(json.loads((art / "features/manifest.json").read_text()))
    validate = ValidateManifest.coerce(json.loads((art / "validate/manifest.json").read_text()))
    folder = Path(args.model or TrainManifest.coerce(json.loads((art / "train/manifest.json").read_text())).model_uri)
    model, config = load_model_folder(folder)
    cfg = _config_from_folder(config)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    rows, spec = feature_rows(features), FeatureSpec.from_manifest(features)
    torch.set_num_threads(2)
    pairs = load_test_pairs(validate, args.pairs)
    autoencoder_round_trip(cfg, LatentCodec.from_manifest(art / "autoencoder/manifest.json"), rows, spec, pairs)
    conditioning_use(model, diffusion, rows, spec, pairs, features.latent_scale)
    colours = part_colours(cfg, validate)  # reads every image once, for both probes
    colour_probes(model, colours, rows, spec, features.latent_scale)
    image_stream_probes(cfg, colours, rows, spec)


if __name__ == "__main__":
    main()
