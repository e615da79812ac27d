"""Run a DVC stage on a Ray cluster through the Ray Jobs API (``ray job submit`` semantics).

With ``cluster.submit: true`` the stage's entry point does not run the stage itself: it submits

    python -m pipelines.<stage> --params {job_dir}/params.yaml --no-submit --job-dir {job_dir}

to the cluster at ``$RAY_ADDRESS`` (the dashboard URL, ``http://head:8265``), with a runtime_env
whose ``working_dir`` is the repository *without* its data (``data/``, the DVC cache, ``.git``,
the venv, MLflow files: "shipped code excludes data"). It streams the job's logs, waits, fails
with the job's own error when the job fails, and finally makes the stage's DVC outputs exist
locally, so that DVC records them as if the stage had run here.

How outputs come back (the job directory)::

    {storage_root}/_jobs/{submission_id}/
        params.yaml      the resolved params the job ran with (written by the submitter)
        outputs.json     what the job uploaded: the stage's DVC outs/metrics/plots (written by the job)
        outputs/<path>   each uploaded output at its repo-relative path

``storage_root`` must be shared by the submitter and the cluster: an ``s3://`` URL on a real
cluster, or a local folder when the filesystem is shared (a head on this machine, NFS). Bulk data
never travels this way: stages write it under ``storage_root`` themselves; only the small outputs
DVC tracks (manifests, metrics, plots) come back through the job directory.

Local paths in the params (``paths.dataset_root``, ``paths.storage_root``, ``poses.model_path``,
the ``evaluate.*_weights`` files, the MLflow store) are made absolute for the job when the
filesystem is shared; otherwise a local ``dataset_root`` or ``storage_root`` is an error that
names the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

import yaml

from xmdpt.config import ConfigError, XMDPTConfig
from xmdpt.ops.ray_utils import local_stage_paths, loopback_host
from xmdpt.ops.storage import filesystem, is_url, join

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterJobError",
    "JobResult",
    "JOBS_DIRNAME",
    "DEFAULT_EXCLUDES",
    "FORWARDED_ENV",
    "NO_SUBMIT_ENV",
    "resolve_address",
    "is_loopback",
    "job_config",
    "stage_outputs",
    "working_dir_excludes",
    "build_runtime_env",
    "entrypoint_command",
    "submit_stage",
    "upload_outputs",
    "download_outputs",
]

JOBS_DIRNAME = "_jobs"
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
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_VAR = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


class ClusterJobError(RuntimeError):
    """A submitted stage failed, was stopped, timed out, or did not bring its outputs back."""


@dataclass(frozen=True)
class JobResult:
    """What :func:`submit_stage` observed."""

    submission_id: str
    status: str
    job_dir: str  # {storage_root}/_jobs/{submission_id}
    address: str
    outputs: list[str] = field(default_factory=list)  # repo-relative paths brought back
    wall_s: float = 0.0


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
# The stage's DVC outputs
# --------------------------------------------------------------------------------------------


def _lookup(params: dict[str, Any], dotted: str, where: str) -> str:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{where}: ${{{dotted}}} is not a params key")
        node = node[part]
    return str(node)


def stage_outputs(stage: str, cfg: XMDPTConfig, dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Paths the DVC stage declares as ``outs``, ``metrics`` and ``plots``, templated from ``cfg``.

    A stage missing from ``dvc.yaml`` (or no ``dvc.yaml``) falls back to ``{artifacts_dir}/{stage}``.
    """
    dvc_yaml = Path(dvc_yaml)
    fallback = [join(cfg.paths.artifacts_dir, stage)]
    if not dvc_yaml.is_file():
        return fallback
    doc = yaml.safe_load(dvc_yaml.read_text()) or {}
    spec = (doc.get("stages") or {}).get(stage)
    if spec is None:
        return fallback
    params = cfg.to_dict()
    out: list[str] = []
    for section in ("outs", "metrics", "plots"):
        for entry in spec.get(section) or []:
            raw = next(iter(entry)) if isinstance(entry, dict) else entry
            where = f"{dvc_yaml}: stages.{stage}.{section}"
            out.append(_VAR.sub(lambda m: _lookup(params, m.group(1), where), str(raw)))
    return out


# --------------------------------------------------------------------------------------------
# Submission
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


def _new_submission_id(stage: str) -> str:
    return f"xmdpt-{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


async def _tail(client: Any, submission_id: str, stream: TextIO) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        stream.write(chunk)
        stream.flush()


def _stream_logs(client: Any, submission_id: str, stream: TextIO, timeout_s: Optional[float]) -> None:
    """Follow the job's logs until it ends (raises ``TimeoutError`` after ``timeout_s``)."""
    try:
        asyncio.run(asyncio.wait_for(_tail(client, submission_id, stream), timeout=timeout_s))
    except (asyncio.TimeoutError, TimeoutError):
        raise TimeoutError from None
    except (RuntimeError, ConnectionError, OSError) as e:  # the log websocket dropped (aiohttp errors are
        # OSError/RuntimeError subclasses); the status polling that follows still decides the outcome
        logger.warning("log stream of job %s ended early (%s); waiting on its status", submission_id, e)


def _wait_terminal(client: Any, submission_id: str, deadline: Optional[float]) -> str:
    while True:
        status = str(client.get_job_status(submission_id))
        if status in _TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.5)


def _failure_message(info: Any, max_lines: int = 25) -> str:
    """Ray's message for a failed job, cut to the traceback's tail."""
    message = (getattr(info, "message", None) or "").strip()
    lines = message.splitlines()
    if len(lines) > max_lines + 1:
        lines = [lines[0], "  ...", *lines[-max_lines:]]
    return "\n".join(lines) or "no message"


def entrypoint_resources(cfg: XMDPTConfig, stage: str) -> dict[str, Optional[float]]:
    """``entrypoint_num_cpus`` / ``entrypoint_num_gpus`` of the stage's Ray job (None: nothing reserved).

    Stage drivers only orchestrate (their Ray Data / Train work asks for its own resources), except
    the autoencoder's, which fits the VAE in the driver: it gets ``cluster.autoencoder_num_gpus``.
    """
    gpus = cfg.cluster.autoencoder_num_gpus if stage == "autoencoder" and cfg.cluster.autoencoder_num_gpus \
        else cfg.cluster.entrypoint_num_gpus
    return {"entrypoint_num_cpus": cfg.cluster.entrypoint_num_cpus or None, "entrypoint_num_gpus": gpus or None}


def submit_stage(
    stage: str,
    cfg: XMDPTConfig,
    *,
    repo_root: str | Path = ".",
    module: Optional[str] = None,
    dvc_yaml: str | Path | None = None,
    stream: Optional[TextIO] = None,
) -> JobResult:
    """Run ``stage`` as a Ray job on ``$RAY_ADDRESS`` and bring its DVC outputs back.

    Args:
        stage: DVC stage name (``synth``, ``pairs``, ...).
        cfg: the loaded config (``cfg.cluster.submit`` is what led here; it is switched off in the job).
        repo_root: the repository shipped as ``working_dir``; outputs land under it.
        module: the entry module the job runs; default ``pipelines.<stage>``.
        dvc_yaml: where the stage's outputs are declared; default ``{repo_root}/dvc.yaml``.
        stream: where the job's logs are echoed (default ``sys.stderr``).

    Returns:
        A :class:`JobResult` for the SUCCEEDED job.

    Raises:
        ConfigError: no address, or paths the cluster cannot see.
        ClusterJobError: the job FAILED / was STOPPED / timed out (the job's own error is in the
            message), or a declared output is missing afterwards.
    """
    from ray.job_submission import JobSubmissionClient

    t0 = time.monotonic()
    root = Path(repo_root).resolve()
    dvc_yaml = Path(dvc_yaml) if dvc_yaml is not None else root / "dvc.yaml"
    stream = stream if stream is not None else sys.stderr
    module = module or f"pipelines.{stage}"
    address = resolve_address(cfg)
    shared = cfg.cluster.shared_filesystem
    if shared is None:  # not said: a head on this machine sees this machine's disk
        shared = is_loopback(address)
    run_cfg = job_config(cfg, root, shared_filesystem=shared)

    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # connection refused, authentication, version: re-raised with the address
        raise ClusterJobError(f"stage {stage!r}: cannot reach the Ray Jobs API at {address}: "
                              f"{type(e).__name__}: {e}") from e

    submission_id = _new_submission_id(stage)
    job_dir = join(run_cfg.paths.storage_root, JOBS_DIRNAME, submission_id)
    params_uri = join(job_dir, "params.yaml")
    fs, params_path = filesystem(params_uri)
    fs.makedirs(os.path.dirname(params_path), exist_ok=True)
    with fs.open(params_path, "w") as f:
        f.write(yaml.safe_dump(run_cfg.to_dict(), sort_keys=False))

    entrypoint = entrypoint_command(module, params_uri, job_dir)
    runtime_env = build_runtime_env(cfg, root)
    logger.info("submitting stage %r to %s as %s (job dir %s)", stage, address, submission_id, job_dir)
    client.submit_job(
        entrypoint=entrypoint,
        submission_id=submission_id,
        runtime_env=runtime_env,
        metadata={"xmdpt_stage": stage},
        **entrypoint_resources(cfg, stage),
    )
    timeout = cfg.cluster.timeout_s or None
    deadline = t0 + timeout if timeout else None
    try:
        _stream_logs(client, submission_id, stream, timeout)
        status = _wait_terminal(client, submission_id, deadline)
    except TimeoutError:
        client.stop_job(submission_id)
        raise ClusterJobError(f"stage {stage!r}: Ray job {submission_id} did not finish within "
                              f"cluster.timeout_s={cfg.cluster.timeout_s:g}s; stopped it") from None
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping Ray job %s", submission_id)
        client.stop_job(submission_id)
        raise
    if status != "SUCCEEDED":
        info = client.get_job_info(submission_id)
        raise ClusterJobError(f"stage {stage!r}: Ray job {submission_id} {status} on {address}:\n"
                              f"{_failure_message(info)}")

    outputs = download_outputs(job_dir, root)
    missing = [p for p in stage_outputs(stage, cfg, dvc_yaml)
               if not is_url(p) and not (root / p).exists()]
    if missing:
        raise ClusterJobError(f"stage {stage!r}: Ray job {submission_id} SUCCEEDED but its DVC outputs {missing} "
                              f"are missing under {root} (see {join(job_dir, 'outputs.json')})")
    wall = time.monotonic() - t0
    logger.info("stage %r finished on the cluster in %.1f s; outputs back: %s", stage, wall, outputs or "none")
    return JobResult(submission_id=submission_id, status=status, job_dir=job_dir, address=address,
                     outputs=outputs, wall_s=wall)


# --------------------------------------------------------------------------------------------
# Outputs through the job directory
# --------------------------------------------------------------------------------------------


def upload_outputs(stage: str, cfg: XMDPTConfig, job_dir: str, root: str | Path = ".",
                   dvc_yaml: str | Path | None = None) -> list[dict[str, Any]]:
    """Job side: copy the stage's repo-relative DVC outputs to ``{job_dir}/outputs/`` and list them
    in ``{job_dir}/outputs.json``.

    Outputs given as URLs or absolute paths are already where the submitter sees them and are
    skipped; declared outputs the stage did not write are recorded as missing.
    """
    root = Path(root).resolve()
    dvc_yaml = Path(dvc_yaml) if dvc_yaml is not None else root / "dvc.yaml"
    fs, base = filesystem(job_dir)
    record: list[dict[str, Any]] = []
    for out in stage_outputs(stage, cfg, dvc_yaml):
        if is_url(out) or os.path.isabs(out):
            record.append({"path": out, "kind": "shared"})
            continue
        src = root / out
        if not src.exists():
            logger.warning("stage %r declares output %s but did not write it under %s", stage, out, root)
            record.append({"path": out, "kind": "missing"})
            continue
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        rels = []
        for f in files:
            rel = f.relative_to(root).as_posix()
            dest = f"{base.rstrip('/')}/outputs/{rel}"
            fs.makedirs(os.path.dirname(dest), exist_ok=True)
            fs.put_file(str(f), dest)
            rels.append(rel)
        record.append({"path": Path(out).as_posix(), "kind": "file" if src.is_file() else "dir", "files": rels,
                       "bytes": sum(f.stat().st_size for f in files)})
    fs.makedirs(base, exist_ok=True)
    with fs.open(f"{base.rstrip('/')}/outputs.json", "w") as f:
        f.write(json.dumps({"stage": stage, "outputs": record}, indent=2) + "\n")
    logger.info("uploaded %d output(s) of stage %r to %s", sum(r["kind"] in ("file", "dir") for r in record),
                stage, job_dir)
    return record


def download_outputs(job_dir: str, root: str | Path = ".") -> list[str]:
    """Submitter side: replace each output listed in ``{job_dir}/outputs.json`` under ``root``.

    A directory output is replaced as a whole (files from an earlier run do not linger).
    Returns the repo-relative paths brought back.
    """
    root = Path(root).resolve()
    fs, base = filesystem(job_dir)
    listing = f"{base.rstrip('/')}/outputs.json"
    if not fs.exists(listing):
        raise ClusterJobError(f"{join(job_dir, 'outputs.json')}: not found; the job ended without uploading "
                              "its outputs (was it run with --job-dir?)")
    with fs.open(listing, "r") as f:
        record = json.load(f)["outputs"]
    brought: list[str] = []
    for item in record:
        if item["kind"] not in ("file", "dir"):
            continue
        dest = root / item["path"]
        staging = dest.with_name(dest.name + ".incoming")
        if staging.exists():
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
        for rel in item["files"]:
            inner = Path(rel).relative_to(item["path"]) if item["kind"] == "dir" else Path()
            target = staging / inner if item["kind"] == "dir" else staging
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{base.rstrip('/')}/outputs/{rel}", str(target))
        if item["kind"] == "dir":
            staging.mkdir(parents=True, exist_ok=True)  # an empty output folder is still an output
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        staging.replace(dest)
        brought.append(item["path"])
    return brought
