"""Model URIs to local pipeline folders: what consumers of the registry (generate, serve, batch) call.

Consumers resolve ``models:/name@alias``, ``models:/name/3``, ``runs:/…`` or ``models:/m-…`` with
:func:`resolve_model_dir`: an alias is pinned to its current version first (an alias can move), the
model is downloaded once to a cache folder and the pipeline folder inside it (the pyfunc artifact
``model_dir``, see :mod:`xmdpt.registry.register`) is returned. A local folder is checked and returned
as it is.

The tracking URI is resolved by :func:`xmdpt.core.tracking.resolve_tracking_uri` (configured value,
else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from xmdpt.core.tracking import resolve_tracking_uri
from xmdpt.core.pipeline_folder import is_pipeline_folder, not_a_pipeline_folder_reason

logger = logging.getLogger(__name__)

MODEL_DIR_ARTIFACT = "model_dir"
MODEL_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file://")


class ModelNotFoundError(LookupError):
    """A model URI does not name an existing model; the message says which part is unknown."""


def _registry_hint(tracking_uri: str) -> str:
    """What to do when a local registry lacks the model: it may live in a teammate's tracking server."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return ""
    return (f". {tracking_uri} is a registry on this machine only (the default when MLFLOW_TRACKING_URI is "
            "unset); a model registered elsewhere is in that team's tracking server: set "
            "MLFLOW_TRACKING_URI=http://HOST:PORT (or pass --tracking-uri) to use it, see docs/team.md")


def is_model_uri(s: str) -> bool:
    return any(str(s).startswith(p) for p in MODEL_URI_SCHEMES)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XMDPT_CACHE_DIR") or Path.home() / ".cache" / "xmdpt" / "models")


def pin_model_uri(uri: str, tracking_uri: str) -> tuple[str, str]:
    """``(download URI, cache key)``; aliases are resolved to a version first (an alias can move)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return uri, uri
    rest = uri[len("models:/"):].strip("/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.partition("/")
            if not version:
                raise ModelNotFoundError(f"model URI {uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ModelNotFoundError(f"unknown model URI {uri!r} (tracking URI {tracking_uri}): {e.message}"
                                 f"{_registry_hint(tracking_uri)}") from None
    pinned = f"models:/{mv.name}/{mv.version}"
    return pinned, f"{pinned}|{mv.source}"


def _find_pipeline_folder(root: Path) -> Path:
    """The pipeline folder inside a downloaded pyfunc model (or ``root`` itself)."""

    if is_pipeline_folder(root):
        return root
    reason = not_a_pipeline_folder_reason(root)
    if reason:
        raise ModelNotFoundError(reason)
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        import yaml

        meta = yaml.safe_load(mlmodel.read_text())
        arts = (meta.get("flavors", {}).get("python_function", {}).get("artifacts") or {})
        rel = (arts.get(MODEL_DIR_ARTIFACT) or {}).get("path")
        if rel and is_pipeline_folder(root / rel):
            return root / rel
    hits = [p.parent for p in root.rglob("config.json") if is_pipeline_folder(p.parent)]
    if len(hits) == 1:
        return hits[0]
    raise ModelNotFoundError(f"{root}: no xmdpt pipeline folder inside the downloaded model "
                             f"(looked for the pyfunc artifact {MODEL_DIR_ARTIFACT!r})")


def _download(uri: str, pinned: str, dest: Path, tracking_uri: str) -> None:
    """Download ``pinned`` into ``dest`` through a temporary sibling, marked ``.complete`` once whole."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        mlflow.set_registry_uri(tracking_uri)
        mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(tmp), tracking_uri=tracking_uri)
    except MlflowException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelNotFoundError(f"unknown model URI {uri!r} (tracking URI {tracking_uri}): {e.message}") from None
    (tmp / ".complete").write_text(json.dumps({"uri": uri, "pinned": pinned}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    logger.info("downloaded %s (%s) to %s", uri, pinned, dest)


def resolve_model_dir(uri_or_dir: str | Path, *, tracking_uri: Optional[str] = None,
                      cache_dir: Optional[str | Path] = None) -> Path:
    """A local pipeline folder for a folder path or an MLflow model URI.

    Args:
        uri_or_dir: a local pipeline folder, or ``models:/name@alias``, ``models:/name/3``,
            ``models:/m-<id>``, ``runs:/<run id>/<path>`` (resolved against ``tracking_uri``).
        tracking_uri: default: ``$MLFLOW_TRACKING_URI`` (see :func:`resolve_tracking_uri`).
        cache_dir: where downloads are kept (default ``$XMDPT_CACHE_DIR`` or ``~/.cache/xmdpt/models``).

    Raises:
        ModelNotFoundError: the folder does not exist / is not a pipeline folder, or the URI names no model.
    """
    s = str(uri_or_dir)
    if not is_model_uri(s):
        p = Path(s)
        if not p.exists():
            raise ModelNotFoundError(f"model {s!r}: no such folder, and not a model URI "
                                     f"(expected a folder or one of {', '.join(MODEL_URI_SCHEMES)}…)")
        return _find_pipeline_folder(p)
    tracking_uri = resolve_tracking_uri(tracking_uri or "")
    pinned, key = pin_model_uri(s, tracking_uri)
    dest = Path(cache_dir or default_cache_dir()) / hashlib.sha256(f"{tracking_uri}|{key}".encode()).hexdigest()[:16]
    if not (dest / ".complete").is_file():
        _download(s, pinned, dest, tracking_uri)
    return _find_pipeline_folder(dest)
