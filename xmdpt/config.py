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

from xmdpt.typed_config import ConfigError, check, from_plain, section_hash, to_plain

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
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsConfig:
    """Where data comes from and where every stage writes.

    ``dataset_root`` and ``storage_root`` may be local folders or any fsspec URL (``s3://…``).
    Bulk outputs go to ``{storage_root}/{stage}/{content hash}/``; small DVC-tracked outputs
    (manifests, metrics, plots) go under ``artifacts_dir``.
    """

    dataset_root: str = "data/synth"  # a DeepFashion root in either public layout (or `xmdpt synth` output)
    storage_root: str = "data/store"  # bulk, content-addressed outputs (Parquet shards, checkpoints)
    artifacts_dir: str = "artifacts"  # manifests, metrics, plots tracked by DVC
    data_specs_dir: str = "data_specs"  # Great Expectations suites (relative: to the cwd, else to the repo)
    mlflow_tracking_uri: str = ""  # "" -> $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the repo
    # the folder of model files the stages read (pose estimator, metric backbones): a DVC dep of the
    # stages that read them, so a changed file reruns them; the configured files must lie inside it
    models_dir: str = "assets/models"


@dataclass(frozen=True)
class DataConfig:
    """The dataset: its layout, the model's image size, the split and Ray Data's decoding tasks
    (the `pairs` and `validate` stages; every later stage reads ``image_size``)."""

    layout: str = "auto"  # auto | gfla (PATN/GFLA csv) | pidm (PIDM/X-MDPT txt) | inshop (raw tree)
    image_size: int = 256  # square side the model sees: 256x176 photos squashed to 256x256, as the authors
    num_cpus_per_task: float = 1.0  # Ray Data CPUs per read/transform task
    split_test_fraction: float = 0.2  # raw In-shop tree without train.lst/test.lst: identities held out (by hash)

    def __post_init__(self) -> None:
        check(0.0 < self.split_test_fraction < 1.0, "data.split_test_fraction", "must be in (0, 1)")
        check(self.layout in ("auto", "gfla", "pidm", "inshop"), "data.layout",
               f"unknown layout {self.layout!r}; expected one of ['auto', 'gfla', 'inshop', 'pidm']")
        check(self.image_size % 8 == 0 and self.image_size > 0, "data.image_size", "must be a positive multiple of 8")


@dataclass(frozen=True)
class SynthConfig:
    """The `synth` stage: the synthetic dataset of rendered figures (offline stand-in for DeepFashion)."""

    identities: int = 40  # identities written (5 views each)
    seed: int = 0
    test_fraction: float = 0.2  # share of identities held out (disjoint from train)

    def __post_init__(self) -> None:
        check(0.0 < self.test_fraction < 1.0, "synth.test_fraction", "must be in (0, 1)")
        check(self.identities >= 2, "synth.identities", "need at least 2 identities (train and test)")


@dataclass(frozen=True)
class PosesConfig:
    """The `poses` stage: keypoints of images without a pose annotation (MediaPipe PoseLandmarker)."""

    model_path: str = "assets/models/pose_landmarker_full.task"  # MediaPipe PoseLandmarker .task
    min_visibility: float = 0.5  # landmarks below this visibility are reported missing
    num_actors: int = 8  # estimator actor pool size (one MediaPipe graph per actor)
    cpus_per_actor: float = 1.0

    def __post_init__(self) -> None:
        check(self.num_actors >= 1, "poses.num_actors", "must be >= 1")
        check(self.cpus_per_actor > 0, "poses.cpus_per_actor", "must be > 0")
        check(0.0 <= self.min_visibility <= 1.0, "poses.min_visibility", "must be in [0, 1]")


@dataclass(frozen=True)
class AutoencoderConfig:
    """The `autoencoder` stage: the latent codec (diffusers ``AutoencoderKL``).

    ``vae: pretrained`` is the paper's: the SD VAE (``pretrained_id``, needs a model hub or a local
    folder), encoder frozen, decoder fine-tuned here. ``vae: fitted`` trains a small one from scratch
    (the offline embedded default); the ``block_channels`` / ``layers_per_block`` / ``mid_attention``
    / ``standardize_latents`` fields apply to it only.
    """

    vae: str = "pretrained"  # pretrained (diffusers hub id or folder below) | fitted (small AutoencoderKL trained here)
    pretrained_id: str = "stabilityai/sd-vae-ft-mse"  # a hub id or a local diffusers AutoencoderKL folder
    latent_scale: Optional[float] = 0.18215  # None -> computed from data (1 / std of latents)
    latent_channels: int = 4
    finetune_decoder: bool = True  # pretrained only: fine-tune the decoder, encoder stays frozen
    train_steps: int = 20000  # fitting (or decoder fine-tuning) steps
    lr: float = 1e-5  # AdamW peak (5% warm-up, cosine decay)
    batch_size: int = 16
    kl_weight: float = 1e-6
    l1_weight: float = 0.0  # loss = MSE + l1_weight * L1 + kl_weight * KL
    seed: int = 0  # init, batch order and posterior noise of the fit
    ema_decay: float = 0.999  # > 0: the saved weights are this EMA of the fit's (0: the last step's weights)
    crop_size: Optional[int] = None  # fit on random square crops of this side (aligned to the downsampling); None: whole images
    block_channels: tuple[int, ...] = (32, 64, 64)  # fitted: len-1 downsamplings of 2
    layers_per_block: int = 1  # fitted: ResNet blocks per resolution (diffusers `layers_per_block`)
    mid_attention: bool = False  # fitted: self-attention in the mid block (costly on CPU)
    standardize_latents: bool = True  # fitted: fold per-channel mean/std of the latents into its 1x1 convs (exact)

    def __post_init__(self) -> None:
        check(self.vae in ("fitted", "pretrained"), "autoencoder.vae",
               f"unknown vae {self.vae!r}; expected one of ['fitted', 'pretrained']")
        check(self.latent_scale is None or self.latent_scale > 0, "autoencoder.latent_scale", "must be > 0 or null")
        check(len(self.block_channels) >= 1, "autoencoder.block_channels", "needs at least one block")
        check(self.layers_per_block >= 1, "autoencoder.layers_per_block", "must be >= 1")
        check(self.l1_weight >= 0 and self.kl_weight >= 0, "autoencoder.l1_weight", "loss weights must be >= 0")
        check(0.0 <= self.ema_decay < 1.0, "autoencoder.ema_decay", "must be in [0, 1)")
        check(self.crop_size is None or self.crop_size >= 1, "autoencoder.crop_size", "must be >= 1 or null")


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

    def __post_init__(self) -> None:
        check(self.token_input_size % 14 == 0, "encoders.token_input_size", "must be a multiple of the patch size 14")


@dataclass(frozen=True)
class FeaturesConfig:
    """The `features` stage: the cached latents and tokens, computed by a Ray Data actor pool."""

    batch_size: int = 64  # images per encoder batch
    num_actors: int = 4
    num_gpus_per_actor: float = 1.0  # 0 on CPU-only clusters
    num_cpus_per_actor: float = 4.0
    shard_images: int = 1024  # images per cache shard (x2 rows with the flip); the unit of resumption

    def __post_init__(self) -> None:
        check(self.shard_images >= 1, "features.shard_images", "must be >= 1")
        check(self.batch_size >= 1, "features.batch_size", "must be >= 1")
        check(self.num_actors >= 1, "features.num_actors", "must be >= 1")


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


@dataclass(frozen=True)
class DiffusionConfig:
    """Gaussian diffusion: linear beta schedule, eps prediction, learned-range variance (IDDPM)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        check(0 < self.beta_start < self.beta_end < 1, "diffusion.beta_start", "need 0 < beta_start < beta_end < 1")


@dataclass(frozen=True)
class TrainConfig:
    """Training (Ray Train TorchTrainer around a plain-PyTorch step)."""

    num_workers: int = 4  # DDP workers; global batch = num_workers x batch_size_per_worker x grad_accum_steps
    use_gpu: bool = True
    cpus_per_worker: float = 4.0  # Ray's logical CPUs per worker (fractional: Ray Data keeps CPUs for its tasks)
    threads_per_worker: Optional[int] = None  # intra-op threads of a CPU worker (null: cpus_per_worker rounded, >= 1)
    batch_size_per_worker: int = 8  # rows per worker and micro-batch (x grad_accum_steps per optimizer step)
    grad_accum_steps: int = 1
    max_steps: int = 300000  # the released checkpoints (the paper trains 800k steps at 256 px)
    lr: float = 1e-4  # AdamW, constant after warm-up
    warmup_steps: int = 0  # linear LR warm-up from 0
    weight_decay: float = 0.0
    grad_clip_norm: Optional[float] = None  # null: no clipping
    min_snr_gamma: Optional[float] = None  # null: unweighted eps-MSE; gamma: Min-SNR-gamma weighting
    timestep_logit_normal: Optional[tuple[float, float]] = None  # null: t uniform; (m, s): t = T * sigmoid(m + s * n), n ~ N(0, 1)
    ema_decay: float = 0.9999
    cond_drop_prob: float = 0.1  # CFG dropout: share of samples trained with the null (zero) condition
    swap_prob: float = 0.5  # > 0: reversed pairs are rows of the training table (see xmdpt.training.data)
    precision: str = "bf16"  # auto (bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32) | fp32 | bf16
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 10000
    keep_checkpoints: int = 3
    sample_every: int = 10000  # sample grid to MLflow every K steps (0: never)
    sample_steps: int = 50  # DDIM steps of the in-training sample grid (cfg.sample for everything else)
    sample_rows: int = 8  # examples in the in-training sample grid
    shuffle_buffer: int = 4096  # rows in each worker's local shuffle buffer
    max_failures: int = 3  # worker-group restarts (a lost worker or node) from the latest checkpoint
    placement_strategy: str = "PACK"  # Ray placement of the DDP workers: PACK | SPREAD (one per node where possible) | STRICT_*
    init_from: str = ""  # a checkpoint folder (checkpoint_step*/, local or URL) a new run starts from: weights, EMA, optimizer, step
    mlflow_experiment: str = "xmdpt"

    def __post_init__(self) -> None:
        check(self.precision in ("auto", "fp32", "bf16"), "train.precision",
               f"unknown precision {self.precision!r}; expected one of ['auto', 'bf16', 'fp32']")
        check(0.0 <= self.cond_drop_prob < 1.0, "train.cond_drop_prob", "must be in [0, 1)")
        check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")
        check(self.num_workers >= 1, "train.num_workers", "must be >= 1")
        check(self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
               "train.placement_strategy", f"unknown strategy {self.placement_strategy!r}; expected one of "
               "['PACK', 'SPREAD', 'STRICT_PACK', 'STRICT_SPREAD']")
        check(self.threads_per_worker is None or self.threads_per_worker >= 1, "train.threads_per_worker",
               "must be >= 1 or null")
        check(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        check(self.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1")
        check(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        check(self.grad_clip_norm is None or self.grad_clip_norm > 0, "train.grad_clip_norm", "must be > 0 or null")
        check(self.min_snr_gamma is None or self.min_snr_gamma > 0, "train.min_snr_gamma", "must be > 0 or null")
        if self.timestep_logit_normal is not None:
            check(len(self.timestep_logit_normal) == 2 and self.timestep_logit_normal[1] > 0,
                   "train.timestep_logit_normal", f"expected [mean, std > 0] or null, got {self.timestep_logit_normal}")


@dataclass(frozen=True)
class SampleConfig:
    """Sampling: DDIM with classifier-free guidance on the power-cosine schedule."""

    sampler: str = "ddim"
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
        check(self.sampler in ("ddim",), "sample.sampler", f"unknown sampler {self.sampler!r}; expected one of ['ddim']")
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
class EvaluateConfig:
    """Evaluation (PIDM protocol where backbone weights exist, synthetic-benchmark metrics otherwise)."""

    max_pairs: Optional[int] = None  # evenly spaced over the sorted test pairs; None: every test pair
    batch_size: int = 64
    num_actors: int = 4
    eval_size: tuple[int, int] = (256, 176)  # H, W the outputs are resized to before metrics
    inception_weights: str = ""  # path to torchvision inception_v3 weights (.pth/.safetensors); "" -> unavailable
    lpips_weights: str = ""  # path to AlexNet-LPIPS weights; "" -> unavailable
    grid_rows: int = 8
    alexnet_weights: str = ""  # torchvision alexnet ImageNet weights (LPIPS backbone); "" -> LPIPS unavailable
    max_real_images: Optional[int] = None  # FID real set (training images); None: all of them
    unguided_pairs: int = 8  # test pairs also generated with cfg_scale 1 (conditional only) and 0 (null condition)
    num_gpus_per_actor: Optional[float] = 1.0  # generation actors; None: 1 if the Ray cluster has a GPU, else 0
    num_cpus_per_actor: float = 4.0
    # pidm | cfld: the test-pair rule, resize path, SSIM_256 settings and FID real set of the peers'
    # code, as one unit (xmdpt/metrics/protocol.py); metrics.json records which
    protocol: str = "pidm"

    def __post_init__(self) -> None:
        check(self.protocol in ("pidm", "cfld"), "evaluate.protocol",
               f"unknown protocol {self.protocol!r}; expected one of ['cfld', 'pidm']")
        check(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        check(self.num_actors >= 1, "evaluate.num_actors", "must be >= 1")
        check(self.unguided_pairs >= 0, "evaluate.unguided_pairs", "must be >= 0")
        check(self.max_pairs is None or self.max_pairs >= 1, "evaluate.max_pairs", "must be >= 1 or null")


@dataclass(frozen=True)
class RegisterConfig:
    """MLflow model registry."""

    model_name: str = "xmdpt"
    metric: str = "fid"  # metric from evaluate's metrics.json used to pick the champion
    higher_is_better: bool = False


@dataclass(frozen=True)
class ClusterConfig:
    """Where stages run: locally, or submitted with `ray job submit` to $RAY_ADDRESS.

    With ``submit: true`` every ``python -m pipelines.<stage>`` ships the repository (code, params,
    small artifacts; never data) to the Ray cluster as a job and brings the stage's DVC outputs back
    (see ``xmdpt.ops.cluster`` and ``docs/cluster.md``).
    """

    submit: bool = False
    address: str = ""  # "" -> $RAY_ADDRESS; the dashboard URL, e.g. http://head:8265
    # every node sees the same local paths (NFS, or one machine): true allows a local storage_root on a
    # cluster of several nodes; null: assumed only for a head on this machine when submitting
    shared_filesystem: Optional[bool] = None
    autoscaling: bool = False  # the cluster adds nodes on demand: a request above what it has now is not refused
    entrypoint_num_cpus: float = 0.0  # reserved for the stage's driver process (its Ray tasks ask for their own)
    entrypoint_num_gpus: float = 0.0
    autoencoder_num_gpus: float = 0.0  # the autoencoder stage's driver fits the VAE itself: GPUs for it (else entrypoint_num_gpus)
    excludes: tuple[str, ...] = ()  # extra gitignore-style patterns kept out of the shipped working_dir
    timeout_s: float = 0.0  # give up (and stop the job) after this long; 0 waits forever

    def __post_init__(self) -> None:
        check(self.entrypoint_num_cpus >= 0, "cluster.entrypoint_num_cpus", "must be >= 0")
        check(self.entrypoint_num_gpus >= 0, "cluster.entrypoint_num_gpus", "must be >= 0")
        check(self.autoencoder_num_gpus >= 0, "cluster.autoencoder_num_gpus", "must be >= 0")
        check(self.timeout_s >= 0, "cluster.timeout_s", "must be >= 0 (0 waits forever)")


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
