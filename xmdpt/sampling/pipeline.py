"""``XMDPTPipeline``: a source photo and a target pose in, the person in that pose out.

    pipe = XMDPTPipeline.from_pretrained("models:/xmdpt@champion")   # or a local pipeline folder
    images = pipe(source_image, target_pose, num_steps=50, cfg_scale=2.0, seed=0)   # list of PIL images

Steps (the same preprocessing as the dataset stages, see :mod:`xmdpt.sampling.inputs`):

1. source photo -> padded to 176:256 with its background colour -> squashed to the model's square
   frame -> VAE posterior (``sample.source_latent``: its mean, or a seeded sample as the authors'
   inference) scaled by ``latent_scale``, and image-encoder tokens, encoded as the `features` stage does;
2. target pose (pose JSON, a PIDM ``pose/*.txt`` or PATN/GFLA annotation row, a ``Pose``, or a photo
   to estimate it from) -> padded the same way -> skeleton image drawn the authors' way -> pose tokens;
3. DDIM (or ``sample.scheduler``: DPM-Solver++ / UniPC) with classifier-free guidance (power-cosine
   schedule), under ``sample.precision`` ->
   decode -> the square image restored to the source's aspect (176x256 for DeepFashion; the PIDM
   protocol's resize) unless ``square=True``.

Folders made by ``xmdpt import-official`` carry ``"features_dtype": "float32"`` in ``pipeline.json``:
their conditions are used at full precision, as the authors' inference computes them online; our
own models' conditions are rounded to fp16 as the feature cache they were trained on stores them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from xmdpt.core.config import SampleConfig, XMDPTConfig, upgrade_legacy_config
from xmdpt.core.precision import inference_dtype
from xmdpt.core.pipeline_folder import CODEC_DIR, check_pipeline_folder
from xmdpt.sampling.inputs import (
    Pose,
    PoseError,
    as_image_array,
    is_pose_annotation,
    is_pose_json,
    load_pose_annotation,
    load_pose_json,
    pad_pose,
    parse_pose,
    pose_from_photo,
    prepare_source,
    restore_aspect,
)
from xmdpt.data import schema
from xmdpt.data.keypoints import render_skeleton
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.sampling import sample
from xmdpt.encoders.dino import TokenEncoder
from xmdpt.encoders.encoding import encode_arrays
from xmdpt.encoders.vae import LatentCodec, to_uint8
from xmdpt.model.folder import load_model_folder

logger = logging.getLogger(__name__)

KEEP: Any = object()  # an override left out: keep the model's own sample setting

PoseLike = Union[Pose, dict, str, Path, np.ndarray, Image.Image, bytes]


def _config_from_folder(config: dict[str, Any]) -> XMDPTConfig:
    """The full config saved with the model; sections other than the config tree's are ignored."""
    known = set(XMDPTConfig.__dataclass_fields__)
    return XMDPTConfig.from_dict({k: v for k, v in upgrade_legacy_config(config).items() if k in known})


def _load_token_encoders(folder: Path, cfg: XMDPTConfig, meta: dict[str, Any], device: torch.device):
    """``(image_encoder, pose_encoder)``: the folder's saved weights, else (pretrained) the config's hub ids."""

    encoders = []
    for role in ("image", "pose"):
        rel = (meta.get("encoder_weights") or {}).get(role)
        if rel:
            encoders.append(TokenEncoder.from_weights(cfg.encoders, role, str(folder / rel), device=device))
        else:
            encoders.append(TokenEncoder.from_config(cfg.encoders, role, device=device))
    return tuple(encoders)


class XMDPTPipeline:
    """Generation from a pipeline folder (see :mod:`xmdpt.core.pipeline_folder`).

    Attributes:
        model: ``XMDPT`` (EMA weights, eval mode); codec: ``LatentCodec``; diffusion: ``GaussianDiffusion``;
        image_encoder / pose_encoder: ``TokenEncoder``; cfg: the ``XMDPTConfig`` saved with the model.
    """

    def __init__(self, model, codec, diffusion, image_encoder, pose_encoder, cfg: XMDPTConfig, *,
                 folder: Optional[Path] = None, meta: Optional[dict[str, Any]] = None,
                 device: str | torch.device = "cpu") -> None:
        self.model = model
        self.codec = codec
        self.diffusion = diffusion
        self.image_encoder = image_encoder
        self.pose_encoder = pose_encoder
        self.cfg = cfg
        self.folder = folder
        self.meta = dict(meta or {})
        self.device = torch.device(device)
        self.image_size = cfg.data.image_size
        # the folder's own estimator; never a path relative to the current directory
        rel = self.meta.get("pose_model")
        self.pose_model_path: Optional[str] = str(Path(folder) / rel) if rel and folder is not None else None

    @classmethod
    def from_pretrained(cls, uri_or_dir: str | Path, *, device: Optional[str | torch.device] = None,
                        tracking_uri: Optional[str] = None, cache_dir: Optional[str | Path] = None) -> "XMDPTPipeline":
        """Load from a local pipeline folder or an MLflow model URI (``models:/xmdpt@champion``, ``runs:/…``).

        Raises:
            xmdpt.core.model_resolver.ModelNotFoundError: unknown folder or URI.
        """
        from xmdpt.core.model_resolver import resolve_model_dir  # the resolver reads pipeline folders: imported here

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = resolve_model_dir(uri_or_dir, tracking_uri=tracking_uri, cache_dir=cache_dir)
        meta = check_pipeline_folder(folder)
        model, config = load_model_folder(folder, map_location=device)
        cfg = _config_from_folder(config)
        codec = LatentCodec.from_folder(str(folder / meta.get("codec", CODEC_DIR)), device=device)
        if abs(codec.latent_scale - float(meta["latent_scale"])) > 1e-6 * abs(codec.latent_scale):
            raise ValueError(f"{folder}: codec latent_scale {codec.latent_scale} != pipeline.json {meta['latent_scale']}")
        image_enc, pose_enc = _load_token_encoders(folder, cfg, meta, device)
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        if meta.get("standin"):
            logger.warning("%s uses random-feature stand-in token encoders (offline default); outputs are a "
                           "pipeline check, not a trained-quality model", folder)
        return cls(model, codec, diffusion, image_enc, pose_enc, cfg, folder=folder, meta=meta, device=device)

    # ------------------------------------------------------------------ inputs
    def load_pose(self, pose: PoseLike, *, name: str = "pose", pose_model_path: Optional[str] = None) -> Pose:
        """A :class:`Pose` from a pose JSON (path/dict), an ``(18, 2)`` array in the dataset frame, or a photo."""
        if isinstance(pose, Pose):
            return pose
        if isinstance(pose, dict):
            return parse_pose(pose, name=name)
        if isinstance(pose, np.ndarray) and pose.shape == (18, 2):
            return Pose(pose.astype(np.float32), (256, 176))
        if isinstance(pose, (str, Path)) and is_pose_json(pose):
            return load_pose_json(pose)
        if isinstance(pose, (str, Path)) and is_pose_annotation(pose):
            return load_pose_annotation(pose)
        img = as_image_array(pose, name=str(pose) if isinstance(pose, (str, Path)) else name)
        model_path = pose_model_path or self.pose_model_path
        if not model_path:
            raise PoseError(f"{name}: a pose photo needs a pose estimator, and the pipeline folder {self.folder} "
                            "carries none (written before folders carried it, or without one): pass --pose-model "
                            "PATH / pose_model_path= (a MediaPipe PoseLandmarker .task), or give the pose as JSON")
        return pose_from_photo(img, model_path,
                               min_visibility=self.cfg.poses.min_visibility,
                               name=str(pose) if isinstance(pose, (str, Path)) else name)

    def _encode(self, sources: np.ndarray, poses: Sequence[Pose], sc: Optional[SampleConfig] = None,
                seeds: Optional[Sequence[int]] = None, pad: bool = True) -> dict[str, torch.Tensor]:
        """Conditions for uint8 square sources ``(N, S, S, 3)`` and poses (any frame).

        The encoders run as in the `features` stage (same preprocessing; fp16 rounding for our own
        models, full precision for imported checkpoints). The source latent is the posterior mean or,
        with ``sample.source_latent: sample``, ``mean + std * eps`` with ``eps`` drawn from a generator
        seeded by ``sample.seed`` (reproducible), scaled by ``latent_scale``.
        """

        sc = sc or self.cfg.sample
        S = self.image_size
        skeletons = []
        for p in poses:
            padded = pad_pose(p) if pad else p  # pad: as the source was (prepare_source); else squash only
            skeletons.append(render_skeleton(padded.keypoints, padded.hw, (S, S)))  # (S, S, 3) uint8
        for enc in (self.image_encoder, self.pose_encoder):
            enc.precision = sc.precision
        dtype = np.float32 if self.meta.get("features_dtype") == "float32" else None
        feats = encode_arrays(self.codec, self.image_encoder, self.pose_encoder, sources, np.stack(skeletons),
                              self.cfg.encoders.token_input_size, dtype=dtype)
        to = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).to(self.device)  # noqa: E731
        mean = to(feats[schema.LATENT_MEAN])  # (N, C, h, w) unscaled
        if sc.source_latent == "sample":
            if seeds is None:
                g = torch.Generator().manual_seed(source_noise_seed(sc.seed))
                eps = torch.randn(mean.shape, generator=g)
            else:  # one stream per image: the same seed gives the same image in any batch
                eps = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(
                    source_noise_seed(s))) for s in seeds])
            latent = mean + to(feats[schema.LATENT_STD]) * eps.to(self.device)
        else:
            latent = mean
        return {"pose_tokens": to(feats[schema.POSE_TOKENS]),  # (N, Sp, Dp)
                "ref_tokens": to(feats[schema.IMAGE_TOKENS]),  # (N, Sr, Dr)
                "ref_latent": latent * self.codec.latent_scale}  # (N, C, h, w)

    def sample_config(self, num_steps: Optional[int] = None, cfg_scale: Optional[float] = None,
                      cfg_power: Optional[float] = None, seed: Optional[int] = None,
                      guidance_interval: Any = KEEP, source_latent: Optional[str] = None,
                      precision: Optional[str] = None, scheduler: Optional[str] = None) -> SampleConfig:
        """The model's ``sample`` config with the given settings replaced (None / ``KEEP``: the model's).

        Raises:
            xmdpt.core.typed_config.ConfigError: an unknown scheduler, precision, ... (names the setting).
        """
        upd = {k: v for k, v in dict(num_steps=num_steps, cfg_scale=cfg_scale, cfg_power=cfg_power, seed=seed,
                                     source_latent=source_latent, precision=precision,
                                     scheduler=scheduler).items()
               if v is not None}
        if guidance_interval is not KEEP:  # None is a value here: guide at every step
            upd["guidance_interval"] = None if guidance_interval is None else tuple(guidance_interval)
        return replace(self.cfg.sample, **upd)

    @torch.no_grad()
    def generate_arrays(self, sources: np.ndarray, poses: Sequence[Pose], *, num_steps: Optional[int] = None,
                        cfg_scale: Optional[float] = None, cfg_power: Optional[float] = None,
                        seed: Optional[int] = None, guidance_interval: Any = KEEP,
                        source_latent: Optional[str] = None, precision: Optional[str] = None,
                        progress: bool = False, seeds: Optional[Sequence[int]] = None,
                        pad: bool = True, scheduler: Optional[str] = None) -> np.ndarray:
        """Batch generation on prepared inputs.

        Args:
            sources: uint8 ``(N, S, S, 3)`` already in the model's frame (see :func:`prepare_source`).
            poses: N target poses (any frame; padded and scaled here).
            num_steps, cfg_scale, cfg_power, seed, guidance_interval, source_latent, precision, scheduler: override
                the model's ``sample`` config (``guidance_interval=None`` guides at every step; leave it
                out for the model's).
            progress: a progress bar over the DDIM steps.
            pad: the poses are padded to 176:256 like sources prepared by :func:`prepare_source` (any
                photo); False for dataset images squashed without padding, as training sees them.
            seeds: one seed per image (its initial noise and source-posterior noise come from its own
                generator, so an image does not depend on the batch it is in); None: one generator
                seeded by ``seed`` for the whole batch.

        Returns:
            uint8 ``(N, S, S, 3)``.
        """

        if len(sources) != len(poses):
            raise ValueError(f"{len(sources)} sources but {len(poses)} poses")
        sc = self.sample_config(num_steps, cfg_scale, cfg_power, seed, guidance_interval, source_latent, precision,
                                scheduler)
        inference_dtype(sc.precision, self.device)  # refuse an unsupported precision before any compute
        if seeds is not None and len(seeds) != len(sources):
            raise ValueError(f"{len(seeds)} seeds for {len(sources)} images")
        cond = self._encode(sources, poses, sc, seeds, pad)
        generator = torch.Generator(device=self.device).manual_seed(sc.seed)
        x_T = None
        if seeds is not None:
            shape = tuple(cond["ref_latent"].shape[1:])
            x_T = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        x_0 = sample(self.model, self.diffusion, cond, sc, generator=generator, progress=progress,
                     x_T=x_T)  # (N, C, h, w)
        return to_uint8(self.codec.decode(x_0 / self.codec.latent_scale))  # (N, S, S, 3)

    def __call__(self, source_image: Any, target_pose: PoseLike, *, num_steps: Optional[int] = None,
                 cfg_scale: Optional[float] = None, cfg_power: Optional[float] = None, seed: int = 0,
                 num_images: int = 1, output_size: Optional[tuple[int, int]] = None,
                 guidance_interval: Any = KEEP, square: bool = False, source_latent: Optional[str] = None,
                 precision: Optional[str] = None, progress: bool = False,
                 scheduler: Optional[str] = None) -> list[Image.Image]:
        """Generate ``num_images`` pictures of the source person in the target pose.

        Args:
            source_image: a path, bytes, PIL image or uint8 ``(H, W, 3)`` array — any photo.
            target_pose: a pose JSON path/dict, a :class:`Pose`, or a photo (path/PIL/array) to estimate it from.
            num_steps, cfg_scale, cfg_power: sampler settings (default: the model's ``sample`` config).
            guidance_interval: ``(lo, hi)`` timesteps to guide at, None for every step (default: the model's).
            seed: seeds the initial noise.
            num_images: samples per call (different noise).
            output_size: ``(H, W)`` to resize the square generation to (overrides ``square``).
            square: keep the model's square frame; default: restore the source's aspect (the padding
                added to the source is cropped away; a 176x256 DeepFashion source gives 176x256).
            source_latent, precision: override ``sample.source_latent`` / ``sample.precision``.
            scheduler: ``ddim`` (the authors' chain), ``dpmsolver++`` or ``unipc`` (default: the model's
                ``sample.scheduler``); the solvers reach DDIM-50's quality in fewer steps.

        Raises:
            xmdpt.data.images.ImageError: unreadable image; PoseError: bad pose JSON / no person found.
        """
        raw = as_image_array(source_image, name=_name(source_image, "source image"))
        src = prepare_source(raw, self.image_size)
        pose = self.load_pose(target_pose, name=_name(target_pose, "target pose"))
        out = self.generate_arrays(np.stack([src] * num_images), [pose] * num_images, num_steps=num_steps,
                                   cfg_scale=cfg_scale, cfg_power=cfg_power, seed=seed,
                                   guidance_interval=guidance_interval, source_latent=source_latent,
                                   precision=precision, progress=progress, scheduler=scheduler)
        if output_size is not None:
            return [Image.fromarray(a).resize((output_size[1], output_size[0]), Image.BICUBIC) for a in out]
        if square:
            return [Image.fromarray(a) for a in out]
        return [Image.fromarray(restore_aspect(a, raw.shape[:2])) for a in out]


def source_noise_seed(seed: int) -> int:
    """Seed of the source-posterior noise for a sampling seed (a different stream from the initial noise)."""
    return (int(seed) * 1_000_003 + 0x5EED) % (2 ** 63)


def _name(obj: Any, default: str) -> str:
    return str(obj) if isinstance(obj, (str, Path)) else default


def generate(model: str | Path, source: str | Path, pose: str | Path, out: str | Path, *, num_steps: Optional[int] = None,
             cfg_scale: Optional[float] = None, seed: int = 0, pose_model_path: Optional[str] = None,
             device: Optional[str] = None, square: bool = False, source_latent: Optional[str] = None,
             precision: Optional[str] = None, progress: bool = True, scheduler: Optional[str] = None) -> Path:
    """``xmdpt generate``: one image of the person in ``source`` in the pose of ``pose`` written to ``out`` (PNG).

    Args:
        model: pipeline folder or MLflow model URI.
        source: any photo of a person.
        pose: a pose JSON file, a PIDM pose txt / GFLA annotation row, or a photo to take the pose from.
        pose_model_path: overrides the folder's pose estimator (MediaPipe ``.task``).
        square: write the model's square frame instead of the source's aspect.
        source_latent, precision, scheduler: override ``sample.source_latent`` / ``.precision`` / ``.scheduler``.
    """
    pipe = XMDPTPipeline.from_pretrained(model, device=device)
    if pose_model_path:
        pipe.pose_model_path = pose_model_path
    # check settings and decode inputs before the (slow) sampling so that bad inputs fail fast
    sc = pipe.sample_config(num_steps, cfg_scale, seed=seed, source_latent=source_latent, precision=precision,
                            scheduler=scheduler)
    inference_dtype(sc.precision, pipe.device)
    src = as_image_array(source, name=str(source))
    target = pipe.load_pose(pose, name=str(pose))
    image = pipe(src, target, num_steps=num_steps, cfg_scale=cfg_scale, seed=seed, square=square,
                 source_latent=source_latent, precision=precision, progress=progress, scheduler=scheduler)[0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    logger.info("wrote %s", out)
    return out


__all__ = ["XMDPTPipeline", "generate", "PoseError"]
