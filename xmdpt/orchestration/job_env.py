"""What a Ray job running a DVC stage is given: the cluster address, the config it runs with, the
``runtime_env`` (the repository without its data, plus forwarded settings), its command and resources.

Local paths in the params (``paths.dataset_root``, ``paths.storage_root``, ``poses.model_path``,
the ``evaluate.*_weights`` files, the MLflow store) are made absolute for the job when the
filesystem is shared; otherwise a local ``dataset_root`` or ``storage_root`` is an error that
names the key. :mod:`xmdpt.orchestration.cluster` submits the job.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Any, Optional

from xmdpt.core.config import ConfigError, XMDPTConfig
from xmdpt.core.ray_utils import local_stage_paths, loopback_host
from xmdpt.core.storage import is_url

logger = logging.getLogger(__name__)

NO_SUBMIT_ENV = "XMDPT_NO_SUBMIT"  # set in every job: a stage inside a job never submits again

# Kept out of the shipped working_dir (gitignore patterns, relative to the repo root). Ray also
# drops whatever .gitignore / .rayignore list.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "/.git", "/.venv", "/venv", "/data", "/.dvc/cache", "/.dvc/tmp", "/mlflow.db", "/mlartifacts",
    "/mlruns", "/outputs", "__pycache__", "*.egg-info", "/.pytest_cache", "/.ruff_cache",
)

# Non-secret settings copied from the submitter's environment into the job's. Credentials are not
# forwarded: cluster nodes carry their own (instance profile / IRSA / mounted secret).
FORWARDED_ENV: tuple[str, ...] = (
    "MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION", "AWS_REGION", "HF_HUB_OFFLINE", "DVC_NO_ANALYTICS", "RAY_USAGE_STATS_ENABLED",
    "TQDM_DISABLE", "XMDPT_POSE_TASK",
)

_WEIGHT_KEYS = ("inception_weights", "alexnet_weights", "lpips_weights")  # evaluate.* local files


# --------------------------------------------------------------------------------------------
# Address and params for the job
# --------------------------------------------------------------------------------------------


def resolve_address(cfg: XMDPTConfig) -> str:
    """The cluster to submit to: ``$RAY_API_SERVER_ADDRESS``, ``$RAY_ADDRESS``, then ``cluster.address``.

    The environment wins, as it does for Ray's own ``JobSubmissionClient``.
    """
    address = (os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
               or cfg.cluster.address)
    if not address:
        raise ConfigError("cluster.submit: true but neither $RAY_ADDRESS nor cluster.address is set; "
                          "export RAY_ADDRESS=http://<head>:8265 (the Ray dashboard)")
    return address


def is_loopback(address: str) -> bool:
    """True when ``address`` names a Ray head on this machine (so the filesystem is shared)."""
    return address == "auto" or loopback_host(address)


def _absolute(path: str, root: Path) -> str:
    if is_url(path) or os.path.isabs(path):
        return path
    return str((root / path).resolve())


def _local_store(uri: str) -> Optional[tuple[str, str]]:
    """``(prefix, path)`` of an MLflow tracking URI that names a local store, else None."""
    for prefix in ("sqlite:///", "file://", "file:"):
        if uri.startswith(prefix):
            return prefix, uri[len(prefix):]
    return ("", uri) if "://" not in uri else None


def job_config(cfg: XMDPTConfig, repo_root: str | Path, shared_filesystem: bool) -> XMDPTConfig:
    """The config the job runs with: ``cluster.submit`` off, local paths made valid on the cluster.

    Args:
        cfg: the submitter's config.
        repo_root: the repository the relative paths in ``cfg`` are relative to.
        shared_filesystem: the cluster sees this machine's paths (local head, NFS).

    Raises:
        ConfigError: a local ``paths.dataset_root``/``paths.storage_root``, or an absolute
            ``paths.artifacts_dir``, with a cluster that cannot see this machine's disk.
    """
    root = Path(repo_root).resolve()
    paths = cfg.paths
    if shared_filesystem:
        tracking = paths.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or "sqlite:///mlflow.db"
        local = _local_store(tracking)
        if local is not None and not os.path.isabs(local[1]):
            tracking = f"{local[0]}{root / local[1]}"
        return cfg.replace(
            paths={"dataset_root": _absolute(paths.dataset_root, root),
                   "storage_root": _absolute(paths.storage_root, root),
                   "mlflow_tracking_uri": tracking},
            poses={"model_path": _absolute(cfg.poses.model_path, root)},
            evaluate={k: _absolute(getattr(cfg.evaluate, k), root) if getattr(cfg.evaluate, k) else ""
                      for k in _WEIGHT_KEYS},
            cluster={"submit": False, "shared_filesystem": True},
        )
    local = local_stage_paths(cfg)
    if local:
        key, value = local[0]
        raise ConfigError(f"paths.{key}: {value!r} is a local path that the Ray cluster cannot see; use a "
                          "shared URL (s3://bucket/prefix) or set cluster.shared_filesystem: true")
    if os.path.isabs(paths.artifacts_dir):
        raise ConfigError(f"paths.artifacts_dir: {paths.artifacts_dir!r} is absolute; on a cluster without a shared "
                          "filesystem it must be relative to the repository (outputs come back through the job dir)")
    pose_model = cfg.poses.model_path
    if not is_url(pose_model) and not os.path.isabs(pose_model):
        inside = (root / pose_model).resolve()
        if not str(inside).startswith(str(root) + os.sep):
            logger.warning("poses.model_path %r is outside the repository and is not shipped; the poses stage "
                           "needs it on the cluster's nodes (an absolute path in the image, or a URL)", pose_model)
    tracking = paths.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking or _local_store(tracking) is not None:
        logger.warning("MLflow tracking URI %r is local: runs made on the cluster stay on the cluster's disk; "
                       "set paths.mlflow_tracking_uri or $MLFLOW_TRACKING_URI to an MLflow server",
                       tracking or "(unset)")
    return cfg.replace(cluster={"submit": False, "shared_filesystem": False})


# --------------------------------------------------------------------------------------------
# What the job ships and runs
# --------------------------------------------------------------------------------------------


def working_dir_excludes(cfg: XMDPTConfig, repo_root: str | Path) -> list[str]:
    """gitignore-style patterns kept out of the shipped repository (data, caches, venv, VCS)."""
    root = Path(repo_root).resolve()
    excludes = list(DEFAULT_EXCLUDES)
    for value in (cfg.paths.dataset_root, cfg.paths.storage_root):
        if is_url(value):
            continue
        p = (root / value).resolve()
        if str(p).startswith(str(root) + os.sep):
            excludes.append("/" + p.relative_to(root).as_posix())
    excludes.extend(cfg.cluster.excludes)
    return list(dict.fromkeys(excludes))


def build_runtime_env(cfg: XMDPTConfig, repo_root: str | Path) -> dict[str, Any]:
    """``runtime_env`` of the job: the repository as ``working_dir`` minus data, and forwarded env."""
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env_vars[NO_SUBMIT_ENV] = "1"
    return {
        "working_dir": str(Path(repo_root).resolve()),
        "excludes": working_dir_excludes(cfg, repo_root),
        "env_vars": env_vars,
    }


def entrypoint_command(module: str, params_uri: str, job_dir: str) -> str:
    """The shell command the job runs."""
    return " ".join(["python", "-m", shlex.quote(module), "--params", shlex.quote(params_uri), "--no-submit",
                     "--job-dir", shlex.quote(job_dir)])


def entrypoint_resources(cfg: XMDPTConfig, stage: str) -> dict[str, Optional[float]]:
    """``entrypoint_num_cpus`` / ``entrypoint_num_gpus`` of the stage's Ray job (None: nothing reserved).

    Stage drivers only orchestrate (their Ray Data / Train work asks for its own resources), except
    the autoencoder's, which fits the VAE in the driver: it gets ``cluster.autoencoder_num_gpus``.
    """
    gpus = cfg.cluster.autoencoder_num_gpus if stage == "autoencoder" and cfg.cluster.autoencoder_num_gpus \
        else cfg.cluster.entrypoint_num_gpus
    return {"entrypoint_num_cpus": cfg.cluster.entrypoint_num_cpus or None, "entrypoint_num_gpus": gpus or None}
