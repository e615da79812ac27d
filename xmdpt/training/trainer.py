"""The `train` stage's driver: Ray Train (V2) ``TorchTrainer`` around the workers of
:mod:`xmdpt.training.worker`.

Driver (:func:`train`):

1. resolve and probe the MLflow tracking URI (fails in seconds, naming the URI);
2. build (or reuse) the training table — pairs joined with the cached features (Ray Data);
3. derive a deterministic run name from the training-relevant params and the data hash; a
   finished run with that name is returned as is (no retraining);
4. create or reopen the MLflow run (its id is stored beside the checkpoints);
5. ``TorchTrainer(...).fit()`` with ``RunConfig(storage_path={storage_root}/train/runs, name=<run
   name>)``. Ray Train V2 has no ``restore``: relaunching with the same storage path and name makes
   ``ray.train.get_checkpoint()`` return the latest reported checkpoint (the controller reloads its
   checkpoint-manager snapshot from the run folder), and ``FailureConfig(max_failures)`` restarts a
   failed worker group from the latest checkpoint the same way;
6. copy the final EMA model folder next to the run and return the summary (history, metrics).

Worker (:func:`xmdpt.training.worker.train_loop_per_worker`): model, EMA, AdamW, resume, DDP, the
shared training loop (:mod:`xmdpt.training.loop`), rank-0 logging and checkpoints.

Storage layout under ``{storage_root}/train/``::

    data/{data hash}/                 the training table (Parquet) + _SUCCESS.json
    runs/{run name}/                  Ray Train's run folder: checkpoint_step*/ (model folders)
    runs/{run name}/xmdpt_run.json    MLflow tracking URI + run id (reused on resume)
    runs/{run name}/workers/          rank_{r}.pid.json: pid of each live training worker
    runs/{run name}/final/            the final EMA model folder (config.json + model.safetensors)
    runs/{run name}/result.json       written last: the run is complete
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from xmdpt.core.config import XMDPTConfig, section_hash
from xmdpt.core import storage, tracking
from xmdpt.core.contracts import StageManifest
from xmdpt.core.manifests import AutoencoderManifest, FeaturesManifest, TrainManifest, ValidateManifest, WorkerStart
from xmdpt.core.ray_utils import check_resources, init_ray
from xmdpt.core.stage_config import source_fingerprint_text
from xmdpt.training.checkpoint import read_trainer_state
from xmdpt.training.data import FeatureSpec, build_train_table, read_train_table
from xmdpt.training.worker import CHECKPOINT_PREFIX, WORKERS_DIR, read_json, train_loop_per_worker, worker_starts, write_json

logger = logging.getLogger(__name__)

__all__ = ["train", "run_train_stage", "run_name_for", "write_stage_outputs", "CHECKPOINT_PREFIX", "WORKERS_DIR"]

RUN_FILE = "xmdpt_run.json"
RESULT_FILE = "result.json"
FINAL_DIR = "final"

# train.* fields that do not change the trained weights (left out of the run name). max_steps is part
# of the name: an experiment with another step count is its own run, trained for exactly its steps
# (a relaunch of the same experiment resumes its own interrupted run, never another's finished one).
_NON_RESULT_TRAIN_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "sample_every", "sample_steps",
                          "sample_rows", "max_failures", "mlflow_experiment")


# files of those packages that training the denoiser never runs: the autoencoder stage's fit
# (training/autoencoder.py) and the release checkpoint import, which lived in model/ as official.py
# before it moved to xmdpt/release/ (named so that the fingerprint, and every finished run with it,
# stayed as it was across the move)
_NOT_TRAINING_CODE = frozenset({"official.py", "autoencoder.py"})


def code_fingerprint() -> str:
    """Hash of the source that defines what training computes (model, diffusion, training step),
    so a code change starts a new run instead of reusing a finished one. Docstrings, comments and
    import statements are left out: moving a module or rewording its documentation retrains nothing."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("model", "diffusion", "training"):
        for f in sorted((root / sub).glob("*.py")):
            if f.name not in _NOT_TRAINING_CODE:
                h.update(f.name.encode() + b"\0" + source_fingerprint_text(f.read_text()).encode())
    return h.hexdigest()[:16]


def run_name_for(cfg: XMDPTConfig, data_hash: str) -> str:
    """Deterministic run name: hash of the model/diffusion/training params, the data hash and the
    training code; a relaunch of the same experiment resumes (or reuses) the same run."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _NON_RESULT_TRAIN_KEYS}
    return f"xmdpt-{section_hash(cfg.model, cfg.diffusion, train, data_hash, code_fingerprint())}"



# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _read_manifests(cfg: XMDPTConfig) -> tuple[dict[str, StageManifest], dict[str, str]]:
    art = Path(cfg.paths.artifacts_dir)
    kinds = (FeaturesManifest, ValidateManifest, AutoencoderManifest)
    paths = {m.STAGE: str(m.path(art)) for m in kinds}
    manifests: dict[str, StageManifest] = {m.STAGE: m.load(art) for m in (FeaturesManifest, ValidateManifest)}
    if Path(paths["autoencoder"]).is_file():
        manifests["autoencoder"] = AutoencoderManifest.load(art)
    else:
        logger.warning("%s not found: sample grids show raw latent channels instead of decoded images",
                       paths["autoencoder"])
    return manifests, paths


def _model_config(cfg: XMDPTConfig, manifests: Mapping[str, StageManifest], spec: FeatureSpec,
                  data_hash: str, paths: Mapping[str, str]) -> dict[str, Any]:
    """``config.json`` of checkpoints and the final model: the full config + what decoding needs."""
    feats = manifests["features"]
    assert isinstance(feats, FeaturesManifest)
    ae = manifests.get("autoencoder")
    return {
        **cfg.to_dict(),
        "latent_scale": spec.latent_scale,
        "lineage": {
            "features": {
                "manifest": paths["features"], "uri": feats.uri, "vae_uri": feats.vae_uri,
                "image_size": feats.image_size, "standin": feats.standin,
                "encoders": feats.to_dict()["encoders"], "tensors": spec.to_dict()["shapes"],
            },
            "autoencoder": {"manifest": paths["autoencoder"], "uri": ae.uri if ae else None},
        },
        "data_hash": data_hash,
    }


_MATERIALIZE_MAX_BYTES = 2 << 30


def _train_dataset(table: Mapping[str, Any], spec: FeatureSpec):
    """The training table as a Ray Dataset; held in the object store when small.

    Re-reading Parquet every epoch costs seconds of task start-up per epoch on a small machine,
    so a table under 2 GiB is materialised once; larger tables stream from storage each epoch.
    """
    ds = read_train_table(table["uri"])
    row_bytes = sum(int(np.prod(s)) * np.dtype(spec.dtypes[t]).itemsize for t, s in spec.shapes.items())
    if table["rows"] * row_bytes * 1.5 < _MATERIALIZE_MAX_BYTES:  # 1.5: target and source halves
        return ds.materialize()
    logger.info("training table of %d rows streams from %s each epoch", table["rows"], table["uri"])
    return ds


def _final_result(run_dir: str) -> Optional[dict[str, Any]]:
    return read_json(storage.join(run_dir, RESULT_FILE))


def _mlflow_run(cfg: XMDPTConfig, uri: str, run_dir: str, run_name: str, manifests: Mapping[str, StageManifest],
                paths: Mapping[str, str], table: Mapping[str, Any]) -> str:
    """The run's MLflow run id: the one recorded beside its checkpoints (a relaunch continues it),
    else a new run with the params, the lineage tags and the config."""
    run_file = storage.join(run_dir, RUN_FILE)
    prev = read_json(run_file) or {}
    lineage = tracking.lineage_tags(manifests, paths, extra={"data_hash": table["data_hash"], "run_name": run_name,
                                                             "train_table": table["uri"]})
    run_id = tracking.start_run(uri, cfg.train.mlflow_experiment, run_id=prev.get("run_id") if
                                prev.get("tracking_uri") == uri else None,
                                run_name=run_name, params=cfg.flat(), tags=lineage)
    write_json(run_file, {"tracking_uri": uri, "run_id": run_id, "run_name": run_name})
    if not prev:
        tracking.log_dict(uri, run_id, cfg.to_dict(), "config/params.yaml")
    return run_id


def _copy_final(checkpoint: Any, run_dir: str) -> tuple[dict[str, Any], str]:
    """Copy the last checkpoint's model folder to ``{run_dir}/final``; return its trainer state and URI."""
    with checkpoint.as_directory() as d:  # [ray]
        state = read_trainer_state(d)
        final_uri = storage.join(run_dir, FINAL_DIR)
        fs, final_path = storage.filesystem(final_uri)
        if fs.exists(final_path):
            fs.rm(final_path, recursive=True)
        fs.makedirs(final_path, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            fs.put_file(os.path.join(d, name), f"{final_path.rstrip('/')}/{name}")
    return state, final_uri


def _worker_meta(cfg: XMDPTConfig, manifests: Mapping[str, StageManifest], paths: Mapping[str, str],
                 table: Mapping[str, Any]) -> dict[str, Any]:
    """What every worker needs besides the config: the data's hash and tensor spec, the frames the
    sample grid draws in, the autoencoder to decode it, the config saved with checkpoints."""
    feats, ae, spec = manifests["features"], manifests.get("autoencoder"), table["spec"]
    assert isinstance(feats, FeaturesManifest)
    return {
        "data_hash": table["data_hash"], "spec": spec.to_dict(), "latent_scale": spec.latent_scale,
        "image_size": int(feats.image_size or cfg.data.image_size),
        "keypoint_hw": list(feats.keypoints_frame),  # (H, W) the keypoints are in
        "autoencoder_manifest": ae.to_dict() if ae else None,
        "model_config": _model_config(cfg, manifests, spec, table["data_hash"], paths),
    }


def _torch_trainer(cfg: XMDPTConfig, meta: Mapping[str, Any], worker: Mapping[str, float], runs_root: str, dataset):
    """Ray Train's ``TorchTrainer`` of the run: its workers, checkpoints, restarts and MLflow callback."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # [ray]
    from ray.train.torch import TorchTrainer  # [ray]

    from xmdpt.training.mlflow_callback import MLflowHistory  # imports Ray: kept inside Ray's code

    tc = cfg.train
    return TorchTrainer(  # [ray]
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "meta": dict(meta)},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=dict(worker),
                                     placement_strategy=tc.placement_strategy),
        run_config=RunConfig(storage_path=runs_root, name=meta["run_name"],
                             checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             callbacks=[MLflowHistory(meta["tracking_uri"], meta["run_id"])]),
        datasets={"train": dataset},
    )


def train(cfg: XMDPTConfig) -> dict[str, Any]:
    """Train (or resume, or reuse) the experiment described by ``cfg``; return its summary.

    Returns:
        ``{"run_name", "run_dir", "run_id", "tracking_uri", "model_uri", "steps", "data",
        "history", "final", "reused", "start_step"}`` — ``history`` is the list of logged
        ``{"step", "loss", "loss_masked", "vb", ...}``; ``final`` the last logged metrics.
    """
    t0 = time.time()
    uri = tracking.resolve_tracking_uri(cfg.paths.mlflow_tracking_uri)
    tracking.check_tracking_server(uri)
    manifests, paths = _read_manifests(cfg)
    init_ray(num_cpus=max(4, os.cpu_count() or 1), cfg=cfg)  # logical CPUs above the cores: workers + Ray Data
    tc = cfg.train
    worker = {"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})}
    check_resources(worker, tc.num_workers, f"train.num_workers={tc.num_workers} x (train.cpus_per_worker="
                    f"{tc.cpus_per_worker:g}{', train.use_gpu' if tc.use_gpu else ''})", cfg,
                    spread=tc.placement_strategy == "STRICT_SPREAD")
    table = build_train_table(cfg, manifests["features"], manifests["validate"])
    spec: FeatureSpec = table["spec"]
    run_name = run_name_for(cfg, table["data_hash"])
    runs_root = storage.join(storage.absolute(cfg.paths.storage_root), "train", "runs")
    run_dir = storage.join(runs_root, run_name)
    data_info = {k: table[k] for k in ("uri", "rows", "pairs", "dropped", "data_hash")}

    done = _final_result(run_dir)
    if done is not None and done["steps"] == cfg.train.max_steps:
        logger.info("run %s already finished (%d steps): reusing %s", run_name, done["steps"], done["model_uri"])
        return {**done, "reused": True, "tracking_uri": uri}

    run_id = _mlflow_run(cfg, uri, run_dir, run_name, manifests, paths, table)
    meta = {"run_dir": run_dir, "run_name": run_name, "run_id": run_id, "tracking_uri": uri,
            **_worker_meta(cfg, manifests, paths, table)}
    trainer = _torch_trainer(cfg, meta, worker, runs_root, _train_dataset(table, spec))
    logger.info("training %s: %d workers x %d rows/step, %d steps -> %s", run_name, tc.num_workers,
                tc.batch_size_per_worker * tc.grad_accum_steps, tc.max_steps, run_dir)
    try:
        result = trainer.fit()  # [ray]
    except BaseException:
        tracking.end_run(uri, run_id, status="FAILED")
        raise

    state, final_uri = _copy_final(result.checkpoint, run_dir)
    history = state.get("history", [])
    final = dict(history[-1]) if history else {}
    summary = {
        "run_name": run_name, "run_dir": run_dir, "run_id": run_id, "tracking_uri": uri, "model_uri": final_uri,
        "steps": int(state["step"]), "start_step": int(result.metrics.get("start_step", 0)),
        "data": data_info, "history": history, "final": final, "wall_s": round(time.time() - t0, 1),
        "world_size": tc.num_workers, "worker_starts": worker_starts(run_dir),
    }
    tracking.log_metrics(uri, run_id, {f"final_{k}": v for k, v in final.items() if k != "step"}, summary["steps"])
    tracking.end_run(uri, run_id)
    write_json(storage.join(run_dir, RESULT_FILE), summary)
    logger.info("trained %s: %d steps in %.0f s, final loss %s", run_name, summary["steps"], summary["wall_s"],
                final.get("loss"))
    return {**summary, "reused": False}


def write_stage_outputs(summary: Mapping[str, Any], artifacts_dir: str | Path) -> dict[str, Any]:
    """Write ``{artifacts_dir}/train/{manifest.json, metrics.json, loss.csv}``; return the manifest."""
    out = Path(artifacts_dir) / "train"
    out.mkdir(parents=True, exist_ok=True)
    history = summary.get("history", [])
    with (out / "loss.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "loss_masked", "vb"])
        for h in history:
            w.writerow([h["step"], h["loss"], h["loss_masked"], h["vb"]])
    final = summary.get("final", {})
    first = history[0] if history else {}
    metrics = {"steps": summary["steps"], "loss": final.get("loss"), "loss_unmasked": final.get("loss_unmasked"),
               "loss_masked": final.get("loss_masked"), "mse": final.get("mse"), "vb": final.get("vb"),
               "first_loss": first.get("loss"), "samples_per_s": final.get("samples_per_s"),
               "train_rows": summary["data"]["rows"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return TrainManifest(
        model_uri=summary["model_uri"], uri=summary["run_dir"], steps=summary["steps"],
        run_name=summary["run_name"], run_id=summary["run_id"], tracking_uri=summary["tracking_uri"],
        data_hash=summary["data"]["data_hash"], train_table=summary["data"]["uri"],
        train_rows=summary["data"]["rows"], dropped_examples=summary["data"]["dropped"],
        world_size=summary.get("world_size"), start_step=summary.get("start_step", 0),
        worker_starts=tuple(WorkerStart(**{k: w[k] for k in ("rank", "node_id", "time")})
                            for w in summary.get("worker_starts", [])),
    ).write(TrainManifest.path(artifacts_dir))


def run_train_stage(cfg: XMDPTConfig) -> dict[str, Any]:
    """The DVC `train` stage: :func:`train`, then the DVC outputs under ``{artifacts_dir}/train``."""
    summary = train(cfg)
    manifest = write_stage_outputs(summary, cfg.paths.artifacts_dir)
    return {**manifest, "reused": summary["reused"], "final": summary["final"], "start_step": summary.get("start_step")}
