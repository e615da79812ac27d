"""One typed configuration tree, loaded from ``params.yaml``.

Every section is a frozen dataclass; :func:`load_config` maps the YAML one-to-one onto
:class:`XMDPTConfig`, rejecting unknown keys and wrong types with a message that names the
offending key (``model.hiden_size: unknown key; expected one of [...]``). Cross-field invariants are
checked in ``__post_init__``. A section belongs to the stage that reads it (``synth``, ``poses``,
``autoencoder``, ``features``, ``train``, ``evaluate``, ``register``); ``data``, ``encoders``,
``model``, ``diffusion`` and ``sample`` describe the model and are read wherever it runs.

The defaults are the paper's setting (X-MDPT-S/2 on DeepFashion at 256 px, the authors' training and
inference; ``docs/paper.md`` lists each value with its source). ``params.yaml`` is the embedded
experiment, a small override of them that trains on two CPU cores; ``params/deepfashion.yaml`` adds
only where the data, the outputs and the cluster are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from xmdpt.core.config_stages import (AutoencoderConfig, ClusterConfig, DataConfig, EvaluateConfig, FeaturesConfig,
                                 PathsConfig, PosesConfig, RegisterConfig, SynthConfig, TrainConfig)
from xmdpt.core.typed_config import ConfigError, check, from_plain, section_hash, to_plain

SCHEDULERS = ("ddim", "dpmsolver++", "unipc")  # sample.scheduler values; ddim is the authors' chain

__all__ = [
    "ConfigError",
    "PathsConfig",
    "DataConfig",
    "SynthConfig",
    "PosesConfig",
    "AutoencoderConfig",
    "EncodersConfig",
    "FeaturesConfig",
    "ModelConfig",
    "MODEL_PRESETS",
    "DiffusionConfig",
    "TrainConfig",
    "SampleConfig",
    "EvaluateConfig",
    "RegisterConfig",
    "ClusterConfig",
    "XMDPTConfig",
    "load_config",
    "upgrade_legacy_config",
    "section_hash",
]


# --------------------------------------------------------------------------------------------
# The model's sections (the stages' sections: xmdpt/core/config_stages.py)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodersConfig:
    """The frozen DINOv2 token encoders (source image and target skeleton).

    ``pretrained=True`` is the paper's setting and needs a model hub or local weights; ``False`` builds
    seeded random-init stand-ins of the same family (offline; labelled as such everywhere).
    """

    pretrained: bool = True  # True: DINOv2 weights (hub or the files below); False: seeded random-feature stand-ins
    image_encoder: str = "vit_giant_patch14_dinov2.lvd142m"  # source image tokens (S x Dr)
    pose_encoder: str = "vit_base_patch14_dinov2.lvd142m"  # rendered target skeleton tokens (S x Dp)
    # pretrained only: a local weights file instead of the hub (timm model.safetensors, or the torch-hub
    # dinov2_vitg14_pretrain.pth / dinov2_vitb14_pretrain.pth layout); "" = timm's hub id above
    image_encoder_weights: str = ""
    pose_encoder_weights: str = ""
    token_input_size: int = 224  # DINO input side: 224 -> 16x16 patches + CLS = 257 tokens
    standin_image_encoder: str = "vit_small_patch14_dinov2.lvd142m"  # architecture of the offline stand-in
    standin_pose_encoder: str = "vit_small_patch14_dinov2.lvd142m"
    standin_depth: int = 2  # stand-ins are shallow random-init ViTs of the same family
    standin_seed: int = 0
    # where a stand-in token is: "sincos" gives its patch tokens a fixed 2-D sin-cos position embedding at
    # the patch embedding's scale (a DINOv2 token knows where it is; CANet's per-token MLP needs that to
    # tell a torso token from a legs token); "random" keeps timm's init (std 0.02: almost no position)
    standin_pos_embed: str = "sincos"
    # stand-ins only: standardise each token position and channel to zero mean, unit std over the training
    # images (fitted by the features stage, saved with the encoder). A shallow random ViT gives every
    # skeleton's black patches and every photo's background the same token, so a pooled summary is almost
    # the same vector for every input; standardised, it varies with the pose and the clothes
    standin_standardize: bool = True

    def __post_init__(self) -> None:
        check(self.token_input_size % 14 == 0, "encoders.token_input_size", "must be a multiple of the patch size 14")
        check(self.standin_pos_embed in ("sincos", "random"), "encoders.standin_pos_embed",
              f"unknown {self.standin_pos_embed!r}; expected one of ['random', 'sincos']")


# Named architectures (DiT naming). Paper presets use the paper's encoders: 32x32x4 SD-VAE latents,
# DINOv2 ViT-B/14 pose tokens (257 x 768) and ViT-g/14 image tokens (257 x 1536).
_PAPER_ENCODERS = dict(input_size=32, in_channels=4, pose_num_tokens=257, pose_token_dim=768,
                       ref_num_tokens=257, ref_token_dim=1536)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "xmdpt-s/2": dict(depth=12, hidden_size=384, num_heads=6, patch_size=2, **_PAPER_ENCODERS),
    "xmdpt-s/4": dict(depth=12, hidden_size=384, num_heads=6, patch_size=4, **_PAPER_ENCODERS),
    "xmdpt-s/8": dict(depth=12, hidden_size=384, num_heads=6, patch_size=8, **_PAPER_ENCODERS),
    "xmdpt-b/2": dict(depth=12, hidden_size=768, num_heads=12, patch_size=2, **_PAPER_ENCODERS),
    "xmdpt-l/2": dict(depth=24, hidden_size=1024, num_heads=16, patch_size=2, **_PAPER_ENCODERS),
    "xmdpt-xl/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2, **_PAPER_ENCODERS),
    # CPU-sized, 384-wide stand-in tokens. tiny/2: 16x16x4 latents of a 64 px image (a 4x autoencoder)
    # in 2x2 patches -> 64 tokens; tiny/4 (the embedded default in params.yaml) takes the 32x32x4
    # latents of a 2x autoencoder at the same token count.
    "xmdpt-tiny/2": dict(depth=4, hidden_size=128, num_heads=4, patch_size=2, input_size=16, in_channels=4,
                         pose_num_tokens=65, pose_token_dim=384, ref_num_tokens=65, ref_token_dim=384),
    "xmdpt-tiny/4": dict(depth=4, hidden_size=128, num_heads=4, patch_size=4, input_size=32, in_channels=4,
                         pose_num_tokens=65, pose_token_dim=384, ref_num_tokens=65, ref_token_dim=384),
}


@dataclass(frozen=True)
class ModelConfig:
    """The X-MDPT network (TDNet + CANet + MIPNet). Named presets: ``MODEL_PRESETS`` above.

    In ``params.yaml``, ``preset`` fills the architecture fields and explicitly given fields override
    it (see :func:`XMDPTConfig.from_dict`). Token counts and widths of the condition encoders come
    from here, never from literals in the model.
    """

    preset: str = "xmdpt-s/2"  # a key of MODEL_PRESETS, or "" for a fully explicit config
    input_size: int = 32  # latent side H = W
    in_channels: int = 4  # latent channels C
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    learn_sigma: bool = True  # 2C output channels: eps and the variance interpolation v
    mask_ratio: float = 0.3  # MIPNet: share of target tokens dropped in the masked pass
    decode_layer: int = 2  # the last `decode_layer` blocks are the decoder
    pose_num_tokens: int = 257  # S: [CLS; patches] of the pose encoder (224 px: 16x16 + 1)
    pose_token_dim: int = 768  # Dp (ViT-B/14)
    ref_num_tokens: int = 257  # S: [CLS; patches] of the image encoder
    ref_token_dim: int = 1536  # Dr (ViT-g/14)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in MODEL_PRESETS:
            raise ConfigError(f"model.preset: unknown preset {name!r}; expected one of {sorted(MODEL_PRESETS)}")
        return cls(preset=name, **{**MODEL_PRESETS[name], **overrides})

    def __post_init__(self) -> None:
        check(self.preset == "" or self.preset in MODEL_PRESETS, "model.preset",
               f"unknown preset {self.preset!r}; expected one of {sorted(MODEL_PRESETS)}")
        check(self.hidden_size % self.num_heads == 0, "model.hidden_size", "must be divisible by model.num_heads")
        check(self.input_size % self.patch_size == 0, "model.input_size", "must be divisible by model.patch_size")
        check(0.0 <= self.mask_ratio < 1.0, "model.mask_ratio", "must be in [0, 1)")
        check(0 < self.decode_layer < self.depth, "model.decode_layer", "must be in (0, depth)")


PREDICTIONS = ("eps", "v")


@dataclass(frozen=True)
class DiffusionConfig:
    """Gaussian diffusion: linear beta schedule, eps (or v) prediction, learned-range variance (IDDPM)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # what the model's first C output channels predict: eps (the paper) | v = sqrt(abar) eps - sqrt(1 - abar) x_0
    prediction: str = "eps"

    def __post_init__(self) -> None:
        check(0 < self.beta_start < self.beta_end < 1, "diffusion.beta_start", "need 0 < beta_start < beta_end < 1")
        check(self.prediction in PREDICTIONS, "diffusion.prediction",
              f"unknown prediction {self.prediction!r}; expected one of {list(PREDICTIONS)}")


@dataclass(frozen=True)
class SampleConfig:
    """Sampling: DDIM (or a multistep solver) with classifier-free guidance on the power-cosine schedule."""

    # ddim (the authors' chain) | dpmsolver++ | unipc (diffusers' multistep solvers on our schedule)
    scheduler: str = "ddim"
    num_steps: int = 50
    respacing: str = "authors"  # authors (evenly rounded over [0, T-1], incl. t=T-1) | ddim (stride)
    eta: float = 0.0
    cfg_scale: float = 2.0
    cfg_power: float = 0.01  # power-cosine exponent p (authors' inference: 0.01 ~ constant scale)
    # [lo, hi]: guide only at original timesteps lo <= t <= hi and take the conditional prediction at
    # the others (one forward instead of two there); null: guide at every step (the authors)
    guidance_interval: Optional[tuple[int, int]] = None
    seed: int = 0
    # the source image's latent: a posterior sample drawn from `seed` (the authors' inference) or the
    # VAE posterior mean
    source_latent: str = "sample"
    # denoiser + DINOv2: auto (bf16 autocast on CUDA as the authors, fp32 on CPU) | fp32 | bf16 (CUDA with
    # bf16 support, or a CPU with native bf16 — AVX512-BF16/AMX; refused elsewhere)
    precision: str = "auto"

    def __post_init__(self) -> None:
        check(self.scheduler in SCHEDULERS, "sample.scheduler",
              f"unknown scheduler {self.scheduler!r}; expected one of {list(SCHEDULERS)}")
        check(self.source_latent in ("mean", "sample"), "sample.source_latent",
               f"unknown source_latent {self.source_latent!r}; expected one of ['mean', 'sample']")
        check(self.precision in ("auto", "fp32", "bf16"), "sample.precision",
               f"unknown precision {self.precision!r}; expected one of ['auto', 'bf16', 'fp32']")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            check(0 <= lo <= hi, "sample.guidance_interval", f"expected 0 <= lo <= hi, got {list(self.guidance_interval)}")
        check(self.respacing in ("authors", "ddim"), "sample.respacing",
               f"unknown respacing {self.respacing!r}; expected one of ['authors', 'ddim']")
        check(self.num_steps >= 1, "sample.num_steps", "must be >= 1")


@dataclass(frozen=True)
class XMDPTConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    poses: PosesConfig = field(default_factory=PosesConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        if self.train.mse_space == "x0":
            # an eps prediction's x_0 error is its eps error times sqrt(1/SNR): x 57 at t = 900
            check(self.diffusion.prediction == "v", "train.mse_space",
                  f"'x0' needs diffusion.prediction 'v', got {self.diffusion.prediction!r}")
            check(self.train.min_snr_gamma is None, "train.min_snr_gamma",
                  "must be null with train.mse_space 'x0' (the x_0 MSE is unweighted)")

    # ---- (de)serialisation ----
    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "XMDPTConfig":
        d = dict(d or {})
        model = d.get("model")
        if isinstance(model, dict) and model.get("preset"):
            name = model["preset"]
            if name not in MODEL_PRESETS:
                raise ConfigError(f"model.preset: unknown preset {name!r}; expected one of {sorted(MODEL_PRESETS)}")
            d["model"] = {**MODEL_PRESETS[name], **model}
        sample = d.get("sample")
        if isinstance(sample, dict) and "sampler" in sample:  # model folders saved before the solvers
            sample = dict(sample)
            sample.setdefault("scheduler", sample.pop("sampler"))
            d["sample"] = sample
        return from_plain(cls, d, prefix="")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """``{"model.hidden_size": 128, ...}`` for MLflow params."""
        out: dict[str, Any] = {}
        for sec, vals in self.to_dict().items():
            for k, v in vals.items():
                out[f"{sec}.{k}"] = v
        return out

    def replace(self, **sections: Any) -> "XMDPTConfig":
        """Return a copy with some sections replaced, e.g. ``cfg.replace(train={"max_steps": 5})``."""
        d = self.to_dict()
        for name, upd in sections.items():
            if name not in d:
                raise ConfigError(f"{name}: unknown section; expected one of {sorted(d)}")
            if dataclasses.is_dataclass(upd):
                upd = to_plain(dataclasses.asdict(upd))
            d[name] = {**d[name], **upd}
        return XMDPTConfig.from_dict(d)


def load_config(path: str | Path = "params.yaml") -> XMDPTConfig:
    """Load and validate ``params.yaml`` (a missing file is a clear error)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    with p.open() as f:
        raw = yaml.safe_load(f) or {}
    try:
        return XMDPTConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


# Sections split in format 2 of the config: (old section, old key) -> (new section, new key).
_LEGACY_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    **{("data", f"synth_{k}"): ("synth", k) for k in ("identities", "seed", "test_fraction")},
    **{("data", f"pose_{k}"): ("poses", k) for k in ("model_path", "min_visibility", "num_actors", "cpus_per_actor")},
    ("encoders", "vae"): ("autoencoder", "vae"),
    ("encoders", "latent_scale"): ("autoencoder", "latent_scale"),
    ("encoders", "latent_channels"): ("autoencoder", "latent_channels"),
    **{("encoders", f"vae_{k}"): ("autoencoder", k) for k in (
        "pretrained_id", "block_channels", "train_steps", "lr", "batch_size", "kl_weight", "l1_weight",
        "finetune_decoder", "layers_per_block", "mid_attention", "seed", "ema_decay", "crop_size",
        "standardize_latents")},
    **{("encoders", k): ("features", k) for k in (
        "batch_size", "num_actors", "num_gpus_per_actor", "num_cpus_per_actor", "shard_images")},
}


def upgrade_legacy_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict written before the sections were split (model folders registered earlier keep
    their full config) with each moved key in its new place; any other dict is returned unchanged.
    Such a folder's top-level ``features`` and ``autoencoder`` entries were lineage records (now under
    ``lineage``) and are moved there."""
    legacy = any(isinstance(d.get(sec), dict) and key in d[sec] for sec, key in _LEGACY_KEYS)
    if not legacy:
        return d
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    out["lineage"] = {k: out.pop(k) for k in ("features", "autoencoder") if k in out}
    for (sec, key), (new_sec, new_key) in _LEGACY_KEYS.items():
        if isinstance(out.get(sec), dict) and key in out[sec]:
            out.setdefault(new_sec, {})[new_key] = out[sec].pop(key)
    return out
