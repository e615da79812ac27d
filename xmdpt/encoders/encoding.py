"""What the `features` stage computes per image: the square image and its flip, the rendered
skeletons, and the frozen encoders' outputs (VAE posterior, image tokens, pose tokens), in the Ray
Data actor :class:`EncoderActor` (one codec and two token encoders per actor). :func:`encode_arrays`
is also how generation encodes a new source and pose, so both see the same preprocessing.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa

from xmdpt.core.config import XMDPTConfig
from xmdpt.data import schema
from xmdpt.data.images import ImageError, load_rgb, resize_square
from xmdpt.data.keypoints import flip_keypoints, render_skeleton, scale_keypoints
from xmdpt.encoders.dino import TokenEncoder, prepare_image, prepare_pose, skeletons_to_tensor
from xmdpt.encoders.inputs import read_image_bytes
from xmdpt.encoders.vae import LatentCodec, from_uint8

__all__ = ["augment", "encode_arrays", "EncoderActor", "CHUNK", "ERROR", "NODE", "TENSOR_DTYPE", "OUT_SCHEMA"]

CHUNK = "chunk"  # internal column: the shard an image belongs to
ERROR = "error"  # internal column: "" or why the image was quarantined
NODE = "node"  # internal column: the Ray node id of the actor that encoded the row
TENSOR_DTYPE = np.dtype("<f2")  # fp16, little-endian raw bytes

OUT_SCHEMA = pa.schema([*schema.FEATURES_SCHEMA, pa.field(CHUNK, pa.int32()), pa.field(ERROR, pa.string()),
                        pa.field(NODE, pa.string())])


def augment(image: np.ndarray, keypoints: np.ndarray, size: int, flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squash an image to the model square, optionally flip it, and render its skeleton.

    Args:
        image: uint8 (H, W, 3) as decoded.
        keypoints: (18, 2) (x, y) in the image's own pixel frame, -1 missing.
        size: ``data.image_size``.
        flip: mirror horizontally (keypoints mirrored and left/right swapped before rendering).

    Returns:
        ``(image (size, size, 3) uint8, keypoints (18, 2) float32 in the square frame, skeleton
        (size, size, 3) uint8)``.
    """

    h, w = image.shape[:2]
    img = resize_square(image, size)  # (size, size, 3)
    kps = scale_keypoints(keypoints, (h, w), (size, size))  # (18, 2)
    if flip:
        img = np.ascontiguousarray(img[:, ::-1])
        kps = flip_keypoints(kps, size)
    skeleton = render_skeleton(kps, (size, size), (size, size))  # (size, size, 3)
    return img, kps, skeleton


def encode_arrays(codec, image_encoder, pose_encoder, images: np.ndarray, skeletons: np.ndarray,
                  token_input_size: int, dtype: Optional[np.dtype] = None) -> dict[str, np.ndarray]:
    """Run the three encoders on a batch.

    Args:
        codec: :class:`xmdpt.encoders.vae.LatentCodec`.
        image_encoder, pose_encoder: :class:`xmdpt.encoders.dino.TokenEncoder`.
        images: uint8 (N, H, W, 3) model-square images.
        skeletons: uint8 (N, H, W, 3) rendered skeletons.
        token_input_size: DINO input side.
        dtype: of the outputs (default: the cache's fp16).

    Returns:
        arrays of ``dtype``: latent_mean/latent_std (N, C, h, w), image_tokens (N, S, Dr), pose_tokens (N, S, Dp).
    """
    import torch

    x = from_uint8(images)  # (N, 3, H, W) in [-1, 1]
    mean, std = codec.encode(x)  # (N, C, h, w) each
    img_tokens = image_encoder(prepare_image(x, token_input_size))  # (N, S, Dr)
    pose_tokens = pose_encoder(prepare_pose(skeletons_to_tensor(skeletons), token_input_size))  # (N, S, Dp)
    to16 = lambda t: t.detach().float().cpu().numpy().astype(dtype or TENSOR_DTYPE)  # noqa: E731
    with torch.no_grad():
        return {schema.LATENT_MEAN: to16(mean), schema.LATENT_STD: to16(std),
                schema.IMAGE_TOKENS: to16(img_tokens), schema.POSE_TOKENS: to16(pose_tokens)}


class EncoderActor:
    """Ray Data actor: loads the codec and token encoders once, encodes batches of image rows.

    Input batch (pyarrow): image_path, split, keypoints, chunk. Output: two rows per input image
    (flip False/True) with :data:`schema.FEATURES_SCHEMA` columns plus ``chunk`` and ``error``;
    an undecodable image gives two rows with empty tensors and the reason in ``error``.
    """

    def __init__(self, config: dict[str, Any], vae_uri: str, encoder_weights: dict[str, Optional[str]]) -> None:
        import torch

        import ray

        cfg = XMDPTConfig.from_dict(config)
        enc, fc = cfg.encoders, cfg.features
        self.cfg = cfg
        self.node_id = ray.get_runtime_context().get_node_id()  # recorded per row: where the encoding ran
        use_gpu = fc.num_gpus_per_actor > 0 and torch.cuda.is_available()
        device = "cuda" if use_gpu else "cpu"
        if not use_gpu:
            torch.set_num_threads(max(1, int(round(fc.num_cpus_per_actor))))
        self.codec = LatentCodec.from_folder(vae_uri, device=device)
        self.encoders = {}
        for role in ("image", "pose"):
            uri = encoder_weights.get(role)
            self.encoders[role] = (TokenEncoder.from_weights(enc, role, uri, device=device) if uri
                                   else TokenEncoder.from_config(enc, role, device=device))

    def __call__(self, batch: pa.Table) -> pa.Table:
        cfg = self.cfg
        size = cfg.data.image_size
        d = batch.to_pydict()
        ok_images, ok_skel, ok_rows, bad_rows = [], [], [], []
        for i, path in enumerate(d[schema.IMAGE_PATH]):
            meta = {schema.IMAGE_PATH: path, schema.SPLIT: d[schema.SPLIT][i], CHUNK: d[CHUNK][i]}
            try:
                image = load_rgb(read_image_bytes(cfg.paths.dataset_root, path), name=path)
                kps = np.asarray(d[schema.KEYPOINTS][i], np.float32).reshape(schema.NUM_KEYPOINTS, 2)
                for flip in (False, True):
                    img, kps_sq, skel = augment(image, kps, size, flip)
                    ok_images.append(img)
                    ok_skel.append(skel)
                    ok_rows.append({**meta, schema.FLIP: flip, schema.KEYPOINTS: kps_sq.reshape(-1).tolist(), ERROR: ""})
            except (ImageError, OSError, ValueError) as e:
                ok_rows = [r for r in ok_rows if r[schema.IMAGE_PATH] != path]
                ok_images, ok_skel = ok_images[:len(ok_rows)], ok_skel[:len(ok_rows)]
                for flip in (False, True):
                    bad_rows.append({**meta, schema.FLIP: flip, schema.KEYPOINTS: [-1.0] * (2 * schema.NUM_KEYPOINTS),
                                     ERROR: f"{path}: {e}"})
        tensors = {name: [] for name in schema.FEATURE_TENSORS}
        if ok_rows:
            out = encode_arrays(self.codec, self.encoders["image"], self.encoders["pose"], np.stack(ok_images),
                                np.stack(ok_skel), cfg.encoders.token_input_size)
            for name in schema.FEATURE_TENSORS:
                tensors[name] = [a.tobytes() for a in out[name]]
        for name in schema.FEATURE_TENSORS:
            tensors[name] += [b""] * len(bad_rows)
        rows = ok_rows + bad_rows
        cols = {f.name: [r[f.name] for r in rows] for f in OUT_SCHEMA
                if f.name not in (*schema.FEATURE_TENSORS, NODE)}
        cols.update(tensors)
        cols[NODE] = [self.node_id] * len(rows)
        return pa.Table.from_pydict(cols, schema=OUT_SCHEMA)
