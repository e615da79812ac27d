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

What the job is given (address, config, runtime_env, entrypoint, resources) is built by
:mod:`xmdpt.orchestration.job_env`; the outputs a stage declares and their upload from inside the job are
:mod:`xmdpt.orchestration.job_outputs`; this module submits, waits, and downloads the outputs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

import yaml

from xmdpt.core.config import XMDPTConfig
from xmdpt.orchestration.job_env import (
    build_runtime_env,
    entrypoint_command,
    entrypoint_resources,
    is_loopback,
    job_config,
    resolve_address,
)
from xmdpt.orchestration.job_outputs import stage_outputs
from xmdpt.core.storage import filesystem, is_url, join, store_folder

logger = logging.getLogger(__name__)

IGNORE_GITIGNORE = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"  # Ray: package git-ignored files of the working_dir too

__all__ = [
    "ClusterJobError",
    "JobResult",
    "JOBS_DIRNAME",
    "submit_stage",
    "download_outputs",
]

JOBS_DIRNAME = "_jobs"

_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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
# Submission
# --------------------------------------------------------------------------------------------


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


def _connect(stage: str, address: str) -> Any:
    """A Ray Jobs API client for ``address``; :class:`ClusterJobError` naming the address if it fails."""
    from ray.job_submission import JobSubmissionClient  # heavy to import: only when a stage is submitted

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, authentication, version: re-raised with the address
        raise ClusterJobError(f"stage {stage!r}: cannot reach the Ray Jobs API at {address}: "
                              f"{type(e).__name__}: {e}") from e


def _write_job_params(run_cfg: XMDPTConfig, job_dir: str) -> str:
    """Write the resolved params the job runs with to ``{job_dir}/params.yaml``; return that URI."""
    params_uri = join(job_dir, "params.yaml")
    fs, params_path = filesystem(params_uri)
    fs.makedirs(os.path.dirname(params_path), exist_ok=True)
    with fs.open(params_path, "w") as f:
        f.write(yaml.safe_dump(run_cfg.to_dict(), sort_keys=False))
    return params_uri


def _await_job(client: Any, stage: str, submission_id: str, address: str, cfg: XMDPTConfig, stream: TextIO,
               t0: float) -> str:
    """Stream the job's logs until it ends; return ``SUCCEEDED`` or raise :class:`ClusterJobError`.

    The job is stopped when it outlives ``cluster.timeout_s`` (counted from ``t0``) or on Ctrl-C.
    """
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
    return status


def _bring_outputs_back(stage: str, cfg: XMDPTConfig, dvc_yaml: Path, root: Path, submission_id: str,
                        job_dir: str) -> list[str]:
    """Download the job's outputs under ``root``; every local output the stage declares must then exist."""
    outputs = download_outputs(job_dir, root)
    store_folder(stage, root)  # data/store/<stage> is not transferred (see upload_outputs)
    missing = [p for p in stage_outputs(stage, cfg, dvc_yaml)
               if not is_url(p) and not (root / p).exists()]
    if missing:
        raise ClusterJobError(f"stage {stage!r}: Ray job {submission_id} SUCCEEDED but its DVC outputs {missing} "
                              f"are missing under {root} (see {join(job_dir, 'outputs.json')})")
    return outputs


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

    client = _connect(stage, address)
    submission_id = _new_submission_id(stage)
    job_dir = join(run_cfg.paths.storage_root, JOBS_DIRNAME, submission_id)
    params_uri = _write_job_params(run_cfg, job_dir)
    logger.info("submitting stage %r to %s as %s (job dir %s)", stage, address, submission_id, job_dir)
    # The job needs the upstream DVC outputs (manifests, resolved configs), which DVC git-ignores; Ray's
    # packaging drops git-ignored files unless told not to (the excludes keep data, caches and the venv out)
    previous = os.environ.get(IGNORE_GITIGNORE)
    os.environ[IGNORE_GITIGNORE] = "1"
    try:
        client.submit_job(
            entrypoint=entrypoint_command(module, params_uri, job_dir),
            submission_id=submission_id,
            runtime_env=build_runtime_env(cfg, root),
            metadata={"xmdpt_stage": stage},
            **entrypoint_resources(cfg, stage),
        )
    finally:
        if previous is None:
            os.environ.pop(IGNORE_GITIGNORE, None)
        else:
            os.environ[IGNORE_GITIGNORE] = previous
    status = _await_job(client, stage, submission_id, address, cfg, stream, t0)

    outputs = _bring_outputs_back(stage, cfg, dvc_yaml, root, submission_id, job_dir)
    wall = time.monotonic() - t0
    logger.info("stage %r finished on the cluster in %.1f s; outputs back: %s", stage, wall, outputs or "none")
    return JobResult(submission_id=submission_id, status=status, job_dir=job_dir, address=address,
                     outputs=outputs, wall_s=wall)


# --------------------------------------------------------------------------------------------
# Outputs through the job directory
# --------------------------------------------------------------------------------------------


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
