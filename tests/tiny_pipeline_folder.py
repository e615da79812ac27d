"""Build a tiny but complete pipeline folder the way the stages save it (used by several tests).

A random-weight X-MDPT (tiny), a random ``AutoencoderKL`` saved by ``LatentCodec.save`` (as the
`autoencoder` stage), the seeded stand-in token encoders saved as safetensors (as the `features`
stage), then :func:`write_pipeline_folder` (as the `evaluate` stage).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from xmdpt.core.config import XMDPTConfig

from tiny_config import tiny_dict

# the tiny test config (tests/tiny_config.py) made smaller still: 16 px images, a 2x autoencoder, 5 tokens
TINY = tiny_dict({
    "data": {"image_size": 16},
    "autoencoder": {"block_channels": [8, 16], "latent_channels": 4},
    "encoders": {"standin_depth": 1, "token_input_size": 28},
    "model": {"preset": "xmdpt-tiny/2", "hidden_size": 32, "depth": 3, "num_heads": 2, "input_size": 8,
              "pose_num_tokens": 5, "pose_token_dim": 384, "ref_num_tokens": 5, "ref_token_dim": 384},
    "sample": {"num_steps": 3},
})


# the pose estimator the folder carries (assets/models/README.md); XMDPT_POSE_TASK overrides
POSE_TASK = Path(os.environ.get("XMDPT_POSE_TASK", Path(__file__).resolve().parents[1] / "assets" / "models"
                                / "pose_landmarker_full.task"))


def tiny_config(**sections) -> XMDPTConfig:
    """``TINY`` with ``sections`` merged in, section by section."""
    d = {k: dict(v) for k, v in TINY.items()}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v}
    return XMDPTConfig.from_dict(d)


def build_tiny_pipeline_folder(root: Path, cfg: XMDPTConfig | None = None, seed: int = 0,
                               pose_model: Path | None = POSE_TASK) -> Path:
    """Write ``root/pipeline`` (plus the upstream folders it is assembled from) and return its path;
    it carries ``pose_model`` (None, or a missing file: a folder without a pose estimator)."""
    from xmdpt.encoders.dino import TokenEncoder
    from xmdpt.encoders.vae import LatentCodec, build_fitted_vae
    from xmdpt.model import XMDPT
    from xmdpt.model.folder import save_model_folder
    from xmdpt.core.pipeline_folder import write_pipeline_folder

    cfg = cfg or tiny_config()
    root = Path(root)
    torch.manual_seed(seed)
    codec = LatentCodec(build_fitted_vae(cfg.autoencoder, cfg.data.image_size), 1.0, source="fitted")
    codec_dir = codec.save(str(root / "autoencoder"))
    weights, specs = {}, {}
    for role in ("image", "pose"):
        enc = TokenEncoder.from_config(cfg.encoders, role)
        weights[role] = enc.save(str(root / "encoders" / f"{role}.safetensors"))
        specs[role] = enc.spec
    model = XMDPT(cfg.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero weights everywhere (adaLN-Zero init makes blocks the identity)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    config = cfg.to_dict()
    config["poses"]["model_path"] = ""  # only an explicit pose_model goes into the folder
    model_dir = save_model_folder(root / "model", model, {**config, "latent_scale": 1.0})
    return write_pipeline_folder(root / "pipeline", model_folder=model_dir, codec_uri=codec_dir,
                                 encoder_weights=weights, encoders=specs, standin=True, latent_scale=1.0,
                                 lineage={"fixture": "tiny"},
                                 pose_model=str(pose_model) if pose_model and Path(pose_model).is_file() else None)
