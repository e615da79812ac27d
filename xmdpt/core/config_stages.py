"""The sections of the config tree that say where things are and what each stage does: ``paths``,
``data``, and the sections of the `synth`, `poses`, `autoencoder`, `features`, `train`, `evaluate`
and `register` stages, plus ``cluster`` (where stages run). :mod:`xmdpt.core.config` assembles them with
the model's sections into :class:`~xmdpt.core.config.XMDPTConfig`; as there, every default is the paper's
setting and every check names its dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from xmdpt.core.typed_config import check

__all__ = ["PathsConfig", "DataConfig", "SynthConfig", "PosesConfig", "AutoencoderConfig", "FeaturesConfig",
           "TrainConfig", "EvaluateConfig", "RegisterConfig", "ClusterConfig"]


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


# what the training MSE measures (TrainConfig.mse_space)
MSE_SPACES = ("prediction", "x0")


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
    # AdamW weight decay of CANet's parameters alone (null: weight_decay). Trained alone on few identities,
    # CANet learns a code per training person and decay makes it generalise; in the full model it has not
    # helped so far (docs/experiments.md)
    canet_weight_decay: Optional[float] = None
    grad_clip_norm: Optional[float] = None  # null: no clipping
    min_snr_gamma: Optional[float] = None  # null: unweighted eps-MSE; gamma: Min-SNR-gamma weighting
    # prediction: the MSE of what the model predicts (eps, or v; the paper) | x0: the MSE of the x_0 it
    # implies, every timestep alike (diffusion.prediction v only)
    mse_space: str = "prediction"
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
        check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        check(self.canet_weight_decay is None or self.canet_weight_decay >= 0, "train.canet_weight_decay",
              "must be >= 0 or null")
        check(self.grad_clip_norm is None or self.grad_clip_norm > 0, "train.grad_clip_norm", "must be > 0 or null")
        check(self.min_snr_gamma is None or self.min_snr_gamma > 0, "train.min_snr_gamma", "must be > 0 or null")
        check(self.mse_space in MSE_SPACES, "train.mse_space",
              f"unknown mse_space {self.mse_space!r}; expected one of {list(MSE_SPACES)}")
        if self.timestep_logit_normal is not None:
            check(len(self.timestep_logit_normal) == 2 and self.timestep_logit_normal[1] > 0,
                   "train.timestep_logit_normal", f"expected [mean, std > 0] or null, got {self.timestep_logit_normal}")


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
    (see ``xmdpt.orchestration.cluster`` and ``docs/cluster.md``).
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
