"""Preflight: what each stage needs to finish, checked in seconds before any compute.

Every DVC stage runs its own checks and the DAG-wide ones (the metric weights and whether
``register.metric`` can be computed) before it starts, so a run that cannot finish stops at its
first stage instead of after hours of training. ``xmdpt check --params FILE`` runs every stage's
checks and prints a table of what is ready and what is not.

A check never downloads anything and never loads a large model: it looks for files, cache entries,
devices, a writable storage prefix and a reachable tracking server.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from xmdpt.core.config import XMDPTConfig
from xmdpt.encoders.dino_backbone import check_hub_reachable, hf_cache_dir, hub_offline
from xmdpt.encoders.vae import check_diffusers_vae_folder
from xmdpt.core.storage import filesystem, join
from xmdpt.core.tracking import TrackingUnavailableError, check_tracking_server, resolve_tracking_uri

__all__ = ["Check", "PreflightError", "STAGES", "run_checks", "preflight", "format_table"]

STAGES = ("synth", "pairs", "poses", "validate", "autoencoder", "features", "train", "evaluate", "register")

# Where each metric backbone comes from (docs/deepfashion.md): the command that fetches it.
FETCH = {
    "evaluate.inception_weights": "curl -LO https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    "evaluate.alexnet_weights": "curl -LO https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "evaluate.lpips_weights": ("curl -L -o lpips_alex_v0.1.pth https://github.com/richzhang/PerceptualSimilarity/"
                               "raw/master/lpips/weights/v0.1/alex.pth"),
    "poses.model_path": ("curl -LO https://storage.googleapis.com/mediapipe-models/pose_landmarker/"
                             "pose_landmarker_full/float16/latest/pose_landmarker_full.task"),
}
METRIC_WEIGHTS = {"fid": ("evaluate.inception_weights",),
                  "lpips": ("evaluate.alexnet_weights", "evaluate.lpips_weights")}


@dataclass(frozen=True)
class Check:
    stage: str
    name: str
    ok: bool
    detail: str


class PreflightError(RuntimeError):
    """Some checks failed; the message lists each with what to do."""


def _setting(cfg: XMDPTConfig, key: str) -> str:
    section, field = key.split(".")
    return str(getattr(getattr(cfg, section), field) or "")


def _file_check(stage: str, cfg: XMDPTConfig, key: str) -> Check:
    path = _setting(cfg, key)
    if not path:
        return Check(stage, key, True, "not configured (the metric is reported unavailable)")
    if not Path(path).is_file():
        fetch = FETCH.get(key)
        return Check(stage, key, False, f"{path} not found" + (f"; fetch it with: {fetch}" if fetch else ""))
    models = Path(cfg.paths.models_dir).resolve()
    if models not in Path(path).resolve().parents:
        return Check(stage, key, False, f"{path} lies outside paths.models_dir ({cfg.paths.models_dir}), the folder "
                     "dvc.yaml tracks for the stages that read it: move it there (or point paths.models_dir at "
                     "its folder)")
    return Check(stage, key, True, path)


def check_metric_weights(stage: str, cfg: XMDPTConfig) -> list[Check]:
    return [_file_check(stage, cfg, k) for k in ("evaluate.inception_weights", "evaluate.alexnet_weights",
                                                 "evaluate.lpips_weights")]


def check_register_metric(stage: str, cfg: XMDPTConfig) -> list[Check]:
    metric = cfg.register.metric
    needs = METRIC_WEIGHTS.get(metric, ())
    missing = [k for k in needs if not _setting(cfg, k) or not Path(_setting(cfg, k)).is_file()]
    if missing:
        return [Check(stage, "register.metric", False,
                      f"register.metric is {metric!r}, which needs {' and '.join(needs)}; "
                      f"{', '.join(missing)} is not set or not a file. Configure the weights or pick a metric "
                      "computable without them (e.g. ssim)")]
    return [Check(stage, "register.metric", True, metric)]


def check_pose_model(stage: str, cfg: XMDPTConfig) -> list[Check]:
    return [_file_check(stage, cfg, "poses.model_path") if cfg.poses.model_path
            else Check(stage, "poses.model_path", True, "not configured")]


def check_dataset(stage: str, cfg: XMDPTConfig) -> list[Check]:
    root = cfg.paths.dataset_root
    try:
        fs, path = filesystem(root)
        ok = fs.exists(path)
    except Exception as e:  # a bad URL, missing credentials
        return [Check(stage, "paths.dataset_root", False, f"{root}: {type(e).__name__}: {e}")]
    return [Check(stage, "paths.dataset_root", ok, root if ok else f"{root} not found (the synth stage writes the "
                  "synthetic set there; DeepFashion is downloaded as docs/deepfashion.md says)")]


def check_storage(stage: str, cfg: XMDPTConfig) -> list[Check]:
    root = cfg.paths.storage_root
    probe = join(root, f".preflight-{uuid.uuid4().hex[:8]}")
    try:
        fs, path = filesystem(probe)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(b"ok")
        fs.rm(path)
    except Exception as e:  # permission, credentials, endpoint
        return [Check(stage, "paths.storage_root", False, f"{root} is not writable ({type(e).__name__}: {e})")]
    return [Check(stage, "paths.storage_root", True, f"{root} writable")]


def check_tracking(stage: str, cfg: XMDPTConfig) -> list[Check]:
    uri = resolve_tracking_uri(cfg.paths.mlflow_tracking_uri)
    try:
        check_tracking_server(uri)
    except TrackingUnavailableError as e:
        return [Check(stage, "paths.mlflow_tracking_uri", False, str(e))]
    return [Check(stage, "paths.mlflow_tracking_uri", True, uri)]


def _hub_cached(model_id: str, role: str) -> Optional[str]:
    """None when the hub weights can be had (online, or cached offline); else the reason."""

    try:
        check_hub_reachable(model_id, role)
    except RuntimeError as e:
        return str(e)
    return None


def check_token_encoders(stage: str, cfg: XMDPTConfig) -> list[Check]:
    enc = cfg.encoders
    if not enc.pretrained:
        return [Check(stage, "encoders.pretrained", True, "seeded random-feature stand-ins (no weights needed)")]
    out = []
    for role, model_id, local in (("image", enc.image_encoder, enc.image_encoder_weights),
                                  ("pose", enc.pose_encoder, enc.pose_encoder_weights)):
        key = f"encoders.{role}_encoder_weights"
        if local:
            out.append(Check(stage, key, Path(local).is_file(), local if Path(local).is_file() else f"{local} not found"))
            continue
        reason = _hub_cached(model_id, role)
        out.append(Check(stage, f"encoders.{role}_encoder", reason is None, reason or f"{model_id} (hub or cache)"))
    return out


def check_vae(stage: str, cfg: XMDPTConfig) -> list[Check]:
    ae = cfg.autoencoder
    if ae.vae != "pretrained":
        return [Check(stage, "autoencoder.vae", True, "fitted here (no weights needed)")]
    vid = ae.pretrained_id
    if Path(vid).is_dir():
        try:
            check_diffusers_vae_folder(vid)
        except FileNotFoundError as e:
            return [Check(stage, "autoencoder.pretrained_id", False, str(e))]
        return [Check(stage, "autoencoder.pretrained_id", True, vid)]

    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not any(isinstance(try_to_load_from_cache(vid, f), str)
                   for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")):
            return [Check(stage, "autoencoder.pretrained_id", False,
                          f"{vid}: HF_HUB_OFFLINE is set and it is not in the Hugging Face cache {hf_cache_dir()}; "
                          "point autoencoder.pretrained_id at a local diffusers AutoencoderKL folder")]
    return [Check(stage, "autoencoder.pretrained_id", True, f"{vid} (hub or cache)")]


def check_devices(stage: str, cfg: XMDPTConfig) -> list[Check]:
    if cfg.cluster.submit:
        return [Check(stage, "devices", True, "checked on the cluster (cluster.submit)")]
    import torch

    asked = []
    if stage == "train" and cfg.train.use_gpu:
        asked.append("train.use_gpu")
    if stage == "features" and cfg.features.num_gpus_per_actor > 0:
        asked.append("features.num_gpus_per_actor")
    if stage == "evaluate" and (cfg.evaluate.num_gpus_per_actor or 0) > 0:
        asked.append("evaluate.num_gpus_per_actor")
    if asked and not torch.cuda.is_available():
        return [Check(stage, "devices", False, f"{', '.join(asked)} asks for a GPU and this machine has none "
                      "(set it to 0/false, or set cluster.submit to run on a cluster with GPUs)")]
    return [Check(stage, "devices", True, "GPU" if torch.cuda.is_available() else "CPU")]


CheckFn = Callable[[str, XMDPTConfig], list[Check]]
# What each stage needs itself; every stage also runs the DAG-wide checks (see ``preflight``).
STAGE_CHECKS: dict[str, tuple[CheckFn, ...]] = {
    "synth": (),
    "pairs": (check_dataset, check_storage),
    "poses": (check_dataset, check_storage, check_pose_model),
    "validate": (check_storage,),
    "autoencoder": (check_storage, check_vae),
    "features": (check_storage, check_token_encoders, check_devices),
    "train": (check_storage, check_tracking, check_devices),
    "evaluate": (check_storage, check_devices, check_metric_weights),
    "register": (check_tracking, check_register_metric),
}
DAG_CHECKS: tuple[CheckFn, ...] = (check_metric_weights, check_register_metric)


def run_checks(cfg: XMDPTConfig, stages: Sequence[str] = STAGES) -> list[Check]:
    """Every check of ``stages`` (in DAG order), the DAG-wide ones once, under the stage ``dag``."""
    out = [c for fn in DAG_CHECKS for c in fn("dag", cfg)]
    for stage in stages:
        if stage not in STAGE_CHECKS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
        for c in (c for fn in STAGE_CHECKS[stage] for c in fn(stage, cfg)):
            if not c.ok and c.name == "paths.dataset_root" and "synth" in stages and _synth_writes_it(cfg):
                c = Check(c.stage, c.name, True, f"{cfg.paths.dataset_root} (written by the synth stage first)")
            out.append(c)
    return out


def _synth_writes_it(cfg: XMDPTConfig) -> bool:
    """The synth stage writes the synthetic set to ``paths.dataset_root`` when the layout is not forced."""
    return not str(cfg.paths.dataset_root).startswith(("s3://", "gs://"))


def preflight(cfg: XMDPTConfig, stage: str) -> list[Check]:
    """The checks a stage runs at start: its own and the DAG-wide ones. Raises :class:`PreflightError`."""
    checks = run_checks(cfg, [stage] if stage in STAGE_CHECKS else [])  # another entry point: the DAG-wide checks
    failed = [c for c in checks if not c.ok]
    if failed:
        lines = "\n".join(f"  - {c.name}: {c.detail}" for c in failed)
        raise PreflightError(f"stage {stage!r} cannot finish with this configuration (nothing was computed):\n{lines}")
    return checks


def format_table(checks: Sequence[Check]) -> str:
    rows = [("stage", "setting", "status", "detail")] + [(c.stage, c.name, "ok" if c.ok else "FAIL", c.detail)
                                                        for c in checks]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" for r in rows)
