"""MLflow tracking for training: runs, params, metrics, images, lineage tags.

Every MLflow call of the training code goes through this module (the library returns metrics;
this module sends them). Calls take an explicit ``tracking_uri`` and ``run_id`` (the client API,
no global active run), so the Ray driver creates the run and the rank-0 worker logs into it.

Tracking URI: ``paths.mlflow_tracking_uri`` if set, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<cwd>/mlflow.db`` (the repository root under DVC; the same rule as
:func:`xmdpt.core.tracking.resolve_tracking_uri`). MLflow 3's default store is SQLite; a plain
``file:`` store is rejected by MLflow itself. A remote server is probed first with a short timeout
(:func:`check_tracking_server`), because the MLflow client retries HTTP for minutes by default.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["TrackingUnavailableError", "resolve_tracking_uri", "check_tracking_server", "start_run",
           "log_metrics", "log_image", "log_dict", "set_tags", "end_run", "metric_history", "run_info",
           "lineage_tags", "git_commit", "dvc_stage_hashes"]

_MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
_MAX_PARAM_LEN = 6000


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server cannot be reached; the message names the URI."""


def resolve_tracking_uri(configured: str = "") -> str:
    """``configured`` if set, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast if ``uri`` cannot be used.

    HTTP(S) servers are probed with one ``GET {uri}/health`` of ``timeout_s`` seconds (any HTTP
    answer below 500 counts as reachable). SQLite stores get their parent folder created.

    Raises:
        TrackingUnavailableError: naming ``uri`` and the reason.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http(s) only)
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, or set "
                "paths.mlflow_tracking_uri / $MLFLOW_TRACKING_URI to a reachable server or sqlite:///path/mlflow.db"
            ) from None
        if status >= 500:
            raise TrackingUnavailableError(f"MLflow tracking server {uri} answered HTTP {status} on /health")
    elif uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


@functools.lru_cache(maxsize=8)
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> Optional[str]:
    """Artifacts of a SQLite-tracked experiment go next to the database (``mlartifacts/``)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def _param_str(v: Any) -> str:
    s = str(v)
    return s if len(s) <= _MAX_PARAM_LEN else s[: _MAX_PARAM_LEN - 3] + "..."


def start_run(uri: str, experiment: str, *, run_id: Optional[str] = None, run_name: str = "",
              params: Optional[Mapping[str, Any]] = None, tags: Optional[Mapping[str, str]] = None) -> str:
    """Create a run (or reopen ``run_id`` if it exists) and return its id.

    A new run gets ``params`` (flattened config) and ``tags``; a reopened run gets only the tags
    (MLflow params are immutable) and is set back to RUNNING.
    """
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            logger.warning("MLflow run %s not found at %s; starting a new run", run_id, uri)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
            set_tags(uri, run.info.run_id, tags or {})
            logger.info("resuming MLflow run %s (%s)", run.info.run_id, uri)
            return run.info.run_id
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment,
                                                                     artifact_location=_artifact_location(uri))
    run = client.create_run(exp_id, run_name=run_name or None, tags=dict(tags or {}))
    items = [Param(k, _param_str(v)) for k, v in sorted((params or {}).items())]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=items[i:i + _MAX_PARAMS_PER_BATCH])
    logger.info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, uri)
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int,
                timestamp_ms: Optional[int] = None) -> None:
    """Log scalar metrics at ``step`` (non-numeric values are skipped).

    With ``timestamp_ms`` given, logging the same values again adds nothing (MLflow keeps one copy
    of an identical key, value, timestamp and step).
    """
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
             if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)]
    if items:
        _client(uri).log_batch(run_id, metrics=items)


def log_image(uri: str, run_id: str, image: np.ndarray, artifact_file: str) -> None:
    """Log an ``uint8 (H, W, 3)`` image as a PNG artifact."""
    _client(uri).log_image(run_id, image, artifact_file=artifact_file)


def log_dict(uri: str, run_id: str, d: Mapping[str, Any], artifact_file: str) -> None:
    """Log a dict as a JSON/YAML artifact (by extension)."""
    _client(uri).log_dict(run_id, dict(d), artifact_file)


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, _param_str(v)) for k, v in tags.items() if v is not None]
    if items:
        _client(uri).log_batch(run_id, tags=items)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, sorted by step."""
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))


def run_info(uri: str, run_id: str) -> dict[str, Any]:
    """Status, params, tags, latest metrics and artifact paths of a run (for reports and tests)."""
    client = _client(uri)
    run = client.get_run(run_id)

    def walk(path: Optional[str] = None) -> Iterable[str]:
        for f in client.list_artifacts(run_id, path):
            if f.is_dir:
                yield from walk(f.path)
            else:
                yield f.path

    return {"status": run.info.status, "params": dict(run.data.params), "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics), "artifacts": sorted(walk())}


# ---------------------------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------------------------


def git_commit(cwd: str | Path = ".") -> str:
    """``HEAD`` commit (with ``+dirty`` if the work tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def dvc_stage_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """``{stage: short hash}`` of each stage's recorded deps/params/outs in ``dvc.lock`` ({} if absent)."""
    import hashlib
    import json

    import yaml

    p = Path(lock_path)
    if not p.is_file():
        return {}
    lock = yaml.safe_load(p.read_text()) or {}
    out = {}
    for name, stage in (lock.get("stages") or {}).items():
        blob = json.dumps(stage, sort_keys=True, default=str).encode()
        out[name] = hashlib.sha256(blob).hexdigest()[:12]
    return out


def lineage_tags(manifests: Mapping[str, Any], manifest_paths: Mapping[str, str],
                 extra: Optional[Mapping[str, Any]] = None, repo: str | Path = ".") -> dict[str, str]:
    """Tags: git commit, DVC stage hashes, upstream manifest paths and URIs (+ ``extra``).

    ``manifests``: stage -> its typed manifest (:mod:`xmdpt.core.manifests`; each has a ``uri``).
    """
    tags = {"git_commit": git_commit(repo)}
    for stage, h in dvc_stage_hashes(Path(repo) / "dvc.lock").items():
        tags[f"dvc.stage.{stage}"] = h
    for name, m in manifests.items():
        tags[f"manifest.{name}.path"] = str(manifest_paths.get(name, ""))
        if m.uri:
            tags[f"manifest.{name}.uri"] = str(m.uri)
    for k, v in (extra or {}).items():
        tags[k] = str(v)
    return tags

