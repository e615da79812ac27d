"""MLflow model registry: log a pipeline folder as a LoggedModel, register it, move the aliases.

Flavour: ``mlflow.pyfunc`` with the model defined *from code* (:mod:`xmdpt.sampling.mlflow_model`,
no pickled Python object) and the self-contained pipeline folder as the artifact ``model_dir``
(``config.json`` + ``model.safetensors`` with the EMA weights, the VAE folder, the token-encoder
specs and stand-in weights; see :mod:`xmdpt.core.pipeline_folder`). MLflow 3 keeps it as a LoggedModel
(``models:/m-…``) outside run artifacts; each registration is a version of ``register.model_name``.

Aliases: every new version gets ``@candidate``; ``@champion`` moves to it only if it beats the
current champion on ``register.metric`` (``register.higher_is_better``), or if there is none yet.
The metric values are stored as version tags (``metric.<name>``) so that the comparison does not
depend on where the evaluation ran.

Consumers resolve ``models:/name@alias``, ``models:/name/3``, ``runs:/…`` or ``models:/m-…`` with
:func:`xmdpt.core.model_resolver.resolve_model_dir`: the model is downloaded once to a cache folder
and the pipeline folder inside it is returned.

The tracking URI is resolved by :func:`xmdpt.core.tracking.resolve_tracking_uri` (configured value,
else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory), as training does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

from xmdpt.core.manifests import EvaluateManifest, FeaturesManifest, TrainManifest, ValidateManifest
from xmdpt.core.model_resolver import MODEL_DIR_ARTIFACT, default_cache_dir
from xmdpt.core.storage import filesystem, portable_json
from xmdpt.core.tracking import lineage_tags, resolve_tracking_uri
from xmdpt.core.pipeline_folder import check_pipeline_folder

logger = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
METRIC_TAG_PREFIX = "metric."
LOGGED_MODEL_NAME = "xmdpt"
MODEL_CODE = Path(__file__).resolve().parents[1] / "sampling" / "mlflow_model.py"

def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(  # images travel as base64 strings (see xmdpt/sampling/mlflow_model.py)
        inputs=Schema([ColSpec("string", "source_image"), ColSpec("string", "pose")]),
        outputs=Schema([ColSpec("string", "image")]),
        params=ParamSchema([ParamSpec("num_steps", "long", 50), ParamSpec("cfg_scale", "double", 2.0),
                            ParamSpec("seed", "long", 0), ParamSpec("square", "boolean", False),
                            ParamSpec("scheduler", "string", "")]),  # "": the model's sample.scheduler
    )


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "torchvision", "timm", "diffusers", "safetensors", "numpy", "pillow", "mediapipe",
                "opencv-contrib-python", "einops", "pyyaml"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


def _metric_value(metrics: Mapping[str, Any], key: str) -> float:
    if key not in metrics:
        raise KeyError(f"register.metric: {key!r} not in the evaluation metrics; available: {sorted(metrics)}")
    v = metrics[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(float(v)):
        raise ValueError(f"register.metric: {key!r} is {v!r}, not a finite number (see evaluate's metrics.json)")
    return float(v)


def is_better(value: float, incumbent: Optional[float], higher_is_better: bool) -> bool:
    """True when ``value`` strictly improves on ``incumbent`` (or there is no incumbent)."""
    if incumbent is None:
        return True
    return value > incumbent if higher_is_better else value < incumbent


def _champion(client, model_name: str, metric: str) -> tuple[Optional[str], Optional[float]]:
    """``(version, metric value)`` of the current ``@champion``; ``(None, None)`` when there is none yet."""
    from mlflow.exceptions import MlflowException

    incumbent_version, incumbent_value = None, None
    try:
        champ = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        incumbent_version = champ.version
        tag = champ.tags.get(METRIC_TAG_PREFIX + metric)
        incumbent_value = float(tag) if tag is not None else None
        if incumbent_value is None:
            logger.warning("champion %s v%s has no %s tag; the new version replaces it", model_name, champ.version,
                           METRIC_TAG_PREFIX + metric)
    except MlflowException:
        pass  # no registered model or no champion yet
    return incumbent_version, incumbent_value


def _move_aliases(client, model_name: str, version: str, *, metric: str, value: float, higher_is_better: bool,
                  incumbent_version: Optional[str], incumbent_value: Optional[float]) -> bool:
    """Set ``@candidate`` on ``version`` and ``@champion`` too when it beats the incumbent; True if promoted."""
    client.set_registered_model_alias(model_name, CANDIDATE_ALIAS, version)
    promoted = is_better(value, incumbent_value, higher_is_better)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
        logger.info("%s v%s is the new @%s (%s=%.6g, was %s)", model_name, version, CHAMPION_ALIAS, metric, value,
                    incumbent_value)
    else:
        logger.info("%s v%s stays @%s only (%s=%.6g does not beat champion v%s's %.6g)", model_name, version,
                    CANDIDATE_ALIAS, metric, value, incumbent_version, incumbent_value)
    return promoted


def log_and_register(
    model_dir: str | Path,
    *,
    model_name: str,
    metric: str,
    higher_is_better: bool,
    metrics: Mapping[str, Any],
    tracking_uri: str,
    lineage: Optional[Mapping[str, str]] = None,
    run_id: Optional[str] = None,
    experiment_name: str = "xmdpt",
) -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc LoggedModel, register a version, set ``@candidate``, maybe ``@champion``.

    Args:
        model_dir: the pipeline folder (see :func:`xmdpt.core.pipeline_folder.check_pipeline_folder`).
        model_name: registered model name (``register.model_name``).
        metric: key of ``metrics`` that decides promotion (``register.metric``).
        higher_is_better: direction of ``metric``.
        metrics: evaluation metrics (numbers and nulls; non-numbers are not logged).
        tracking_uri: MLflow tracking (and registry) URI.
        lineage: tags (git commit, manifest URIs, train run id) put on the LoggedModel and the version.
        run_id: log under this run (the training run) if it exists in the store; else a new run.
        experiment_name: experiment of the new run.

    Returns:
        The ``registered.json`` record: name, version, aliases, model URIs, metric values, promotion.
    """
    import mlflow
    from mlflow import MlflowClient

    model_dir = Path(model_dir)

    check_pipeline_folder(model_dir)
    value = _metric_value(metrics, metric)
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    lineage = {k: str(v) for k, v in (lineage or {}).items()}

    info, run = log_pipeline_model(model_dir, tracking_uri=tracking_uri, tags=lineage, run_id=run_id,
                                   experiment_name=experiment_name, params={"metric": metric}, metrics=numeric)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    incumbent_version, incumbent_value = _champion(client, model_name, metric)  # read before any alias moves

    version_tags = {**lineage, **{METRIC_TAG_PREFIX + k: str(v) for k, v in numeric.items()},
                    "model_id": info.model_id, "register.metric": metric}
    mv = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
    promoted = _move_aliases(client, model_name, mv.version, metric=metric, value=value,
                             higher_is_better=higher_is_better, incumbent_version=incumbent_version,
                             incumbent_value=incumbent_value)
    aliases = sorted(client.get_model_version(model_name, mv.version).aliases)
    return {"name": model_name, "version": int(mv.version), "aliases": aliases,
            "model_uri": f"models:/{model_name}/{mv.version}", "logged_model_uri": info.model_uri,
            "model_id": info.model_id, "run_id": run, "tracking_uri": tracking_uri,
            "metric": {"name": metric, "value": value, "higher_is_better": higher_is_better,
                       "champion_before": {"version": int(incumbent_version) if incumbent_version else None,
                                           "value": incumbent_value},
                       "promoted": promoted},
            "metrics": dict(metrics), "lineage": lineage}


def log_pipeline_model(model_dir: str | Path, *, tracking_uri: str, tags: Mapping[str, str],
                       run_id: Optional[str] = None, experiment_name: str = "xmdpt", run_name: str = "register",
                       params: Optional[Mapping[str, Any]] = None, metrics: Optional[Mapping[str, float]] = None):
    """Log a pipeline folder as a pyfunc LoggedModel (artifact ``model_dir``); returns ``(ModelInfo, run id)``.

    Logged under ``run_id`` when that run exists in the store, else under a new run of ``experiment_name``.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_pipeline_folder(model_dir)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_kwargs: dict[str, Any] = {}
    if run_id:
        try:
            client.get_run(run_id)
            run_kwargs = {"run_id": run_id}
        except MlflowException:
            logger.warning("run %s not found in %s; logging the model under a new run", run_id, tracking_uri)
    if not run_kwargs:
        mlflow.set_experiment(experiment_name)
        run_kwargs = {"run_name": run_name}
    with mlflow.start_run(**run_kwargs) as run:
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME,
            python_model=str(MODEL_CODE),
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            signature=_signature(),
            pip_requirements=_pip_requirements(),
            tags=dict(tags),
            params=dict(params or {}),
        )
        if metrics:
            mlflow.log_metrics(dict(metrics), model_id=info.model_id)
    logger.info("logged model %s (%s) in run %s", info.model_id, info.model_uri, run.info.run_id)
    return info, run.info.run_id


def register_pipeline_folder(model_dir: str | Path, name: str, *, alias: Optional[str] = None,
                             tags: Optional[Mapping[str, Any]] = None, tracking_uri: Optional[str] = None,
                             experiment_name: str = "xmdpt-imports") -> dict[str, Any]:
    """Log a pipeline folder (e.g. an imported checkpoint's) and register it as a new version of ``name``.

    Args:
        alias: set on the new version (moved if another version had it).
        tags: put on the LoggedModel and the version (e.g. source=official, preset, checkpoint sha256, decoder).
        tracking_uri: default ``$MLFLOW_TRACKING_URI`` (or ``sqlite:///mlflow.db``); an ``http://`` server works.

    Returns:
        ``{"name", "version", "aliases", "model_uri", "logged_model_uri", "run_id", "tracking_uri", "tags"}``.
    """
    import mlflow
    from mlflow import MlflowClient

    tracking_uri = resolve_tracking_uri(tracking_uri or "")
    tags = {k: str(v) for k, v in (tags or {}).items()}
    info, run_id = log_pipeline_model(model_dir, tracking_uri=tracking_uri, tags=tags,
                                      experiment_name=experiment_name, run_name=f"import {name}")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = mlflow.register_model(info.model_uri, name, tags={**tags, "model_id": info.model_id})
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    aliases = sorted(client.get_model_version(name, mv.version).aliases)
    logger.info("registered %s v%s%s", name, mv.version, f" @{alias}" if alias else "")
    return {"name": name, "version": int(mv.version), "aliases": aliases, "model_uri": f"models:/{name}/{mv.version}",
            "alias_uri": f"models:/{name}@{alias}" if alias else None, "logged_model_uri": info.model_uri,
            "run_id": run_id, "tracking_uri": tracking_uri, "tags": tags}


# ------------------------------------------------------------------------------------------------
# The DVC stage
# ------------------------------------------------------------------------------------------------


def register_stage(cfg) -> dict[str, Any]:
    """Run the `register` stage: log + register the evaluated pipeline folder; write ``registered.json``.

    Args:
        cfg: ``XMDPTConfig`` (``register`` section, ``paths``).

    Returns:
        The ``registered.json`` record.
    """

    art = Path(cfg.paths.artifacts_dir)
    ev = EvaluateManifest.load(art)
    metrics_path = art / "evaluate" / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: evaluation metrics not found; run `dvc repro evaluate`")
    metrics = json.loads(metrics_path.read_text())
    model_dir = ev.pipeline_local
    if not model_dir or not Path(model_dir).is_dir():  # evaluated elsewhere (cluster job): fetch the folder

        fs, path = filesystem(ev.pipeline_uri)
        model_dir = default_cache_dir() / "pipelines" / hashlib.sha256(ev.pipeline_uri.encode()).hexdigest()[:16]
        shutil.rmtree(model_dir, ignore_errors=True)
        fs.get(path.rstrip("/") + "/", str(model_dir) + "/", recursive=True)
    kinds = (ValidateManifest, FeaturesManifest, TrainManifest, EvaluateManifest)
    manifest_paths = {m.STAGE: str(m.path(art)) for m in kinds}
    manifests = {m.STAGE: m.read(m.path(art)) for m in kinds if m.path(art).is_file()}
    train = manifests.get("train")
    tracking_uri = resolve_tracking_uri(cfg.paths.mlflow_tracking_uri)
    lineage = lineage_tags(manifests, manifest_paths, extra={
        "train_run_id": (train.run_id if train else None) or ev.lineage.train_run_id or "",
        "train_model_uri": train.model_uri if train else "",
        "standin_encoders": ev.standin_encoders,
    })
    record = log_and_register(
        model_dir,
        model_name=cfg.register.model_name,
        metric=cfg.register.metric,
        higher_is_better=cfg.register.higher_is_better,
        metrics={k: v for k, v in metrics.items() if not isinstance(v, (dict, list))},
        tracking_uri=tracking_uri,
        lineage=lineage,
        run_id=(train.run_id if train else None) or None,
    )
    out = art / "register" / "registered.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable_json(record))  # paths under the project folder as ./relative
    logger.info("registered %s v%s aliases=%s -> %s", record["name"], record["version"], record["aliases"], out)
    return record
