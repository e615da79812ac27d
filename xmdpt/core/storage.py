"""Content-addressed stage outputs and manifests, through fsspec.

A stage writes its bulk data under ``{storage_root}/{stage}/{key}/`` where ``key`` hashes the
stage's params and its upstream manifests, so reruns with the same inputs land in the same place
(idempotent) and different experiments never mix. It then writes a small local
``manifest.json`` (URIs, row counts, schema, sizes) that DVC tracks; downstream stages depend on
the manifest, never on the bulk folder.

``storage_root`` is a local folder or any fsspec URL (``s3://bucket/prefix``, ``gs://…``).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from pathlib import Path
from typing import Any

import fsspec

from xmdpt.core.config import section_hash

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a local file, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_url(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """A local path made absolute (Ray workers and actors do not share the driver's working
    directory); URLs and MLflow URIs are returned as given."""
    path = str(path)
    if is_url(path) or path.startswith(("models:/", "runs:/")):
        return path
    return os.path.abspath(path)


def join(root: str, *parts: str) -> str:
    """Join path parts under a local folder or URL (always ``/``)."""
    root = str(root)
    if is_url(root):
        return posixpath.join(root.rstrip("/"), *parts)
    return os.path.join(root, *parts)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a local path or URL. S3 endpoints come from the usual AWS env vars
    (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``)."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def stage_prefix(storage_root: str, stage: str, *inputs: Any) -> str:
    """``{storage_root}/{stage}/{hash(inputs)}`` — the content-addressed home of a stage's output.

    A local ``storage_root`` is made absolute, so the URIs recorded in manifests resolve from any
    process (Ray workers, actors, a later stage) whatever its working directory.
    """
    return join(absolute(storage_root), stage, section_hash(*inputs))


HERE = "./"  # a path under the project folder, as a manifest records it
_LOCAL_SCHEMES = ("", "sqlite:///", "file://")
LOCAL_STORE = "data/store"  # the default storage_root; dvc.yaml declares data/store/<stage> as DVC outputs


STORE_STAGES = ("pairs", "poses", "validate", "autoencoder", "features", "train", "evaluate")


def store_folder(stage: str, root: str | Path = ".") -> None:
    """``{root}/data/store/<stage>``, the stage's DVC output for its bulk outputs: they are there with
    the default local ``storage_root`` (so ``dvc push`` carries them); with another storage_root it
    holds only this note. Written with the same bytes every time (it does not change the hash)."""
    if stage not in STORE_STAGES:
        return
    folder = Path(root) / LOCAL_STORE / stage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.txt").write_text(
        f"Bulk outputs of the `{stage}` stage, one folder per content hash, when paths.storage_root is the\n"
        "default data/store (DVC caches this folder: dvc push / dvc pull carry it). With another\n"
        "storage_root (s3://...) they live there and this folder holds only this note.\n")


def _map_strings(value: Any, fn) -> Any:
    """``value`` (nested dicts and lists) with ``fn`` applied to every string in it."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, fn) for v in value]
    return value


def portable(value: Any) -> Any:
    """``value`` (a manifest, nested) with every path under the project folder (the working directory:
    stages run at the project root) written ``./relative``, so that a manifest names no folder of the
    machine that wrote it and reads the same after ``git clone`` + ``dvc pull`` in another folder."""
    root = os.getcwd().rstrip("/") + "/"

    def rel(s: str) -> str:
        for scheme in _LOCAL_SCHEMES:  # a path, or a URI of a local file (the default sqlite:///…/mlflow.db)
            if s.startswith(scheme + root):
                return scheme + HERE + s[len(scheme + root):]
        return s

    return _map_strings(value, rel)


def localized(value: Any) -> Any:
    """The inverse of :func:`portable` in this project folder: ``./relative`` -> an absolute path."""

    def absolute_here(s: str) -> str:
        for scheme in _LOCAL_SCHEMES:
            if s.startswith(scheme + HERE):
                return scheme + os.path.join(os.getcwd(), s[len(scheme + HERE):])
        return s

    return _map_strings(value, absolute_here)


def portable_json(value: Any) -> str:
    """The JSON text of a DVC output (a manifest, metrics, a registry record): :func:`portable` paths,
    sorted keys, values JSON cannot hold written as strings."""
    return json.dumps(portable(json.loads(json.dumps(value, default=str))), indent=2, sort_keys=True) + "\n"


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write a manifest (local JSON, tracked by DVC) atomically; paths under the project folder are
    written ``./relative`` (:func:`portable`) and read back absolute (:func:`read_manifest`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"manifest_version": MANIFEST_VERSION, **manifest}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(portable_json(manifest))
    tmp.replace(path)
    logger.info("wrote manifest %s", path)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run the upstream stage first (dvc repro)")
    with path.open() as f:
        return localized(json.load(f))


def manifest_key(manifest: Any) -> str:
    """Identity of an upstream output (its JSON dict, or a typed manifest of
    :mod:`xmdpt.core.manifests`), for hashing into downstream prefixes."""
    if hasattr(manifest, "identity"):  # a typed manifest: without the fields that record how the run went
        manifest = manifest.identity()
    elif hasattr(manifest, "to_dict"):
        manifest = manifest.to_dict()
    return section_hash(portable(manifest))  # the same on every machine that holds the run
