"""The `train` stage: Ray Train (V2) ``TorchTrainer`` around the plain-PyTorch :func:`train_step`.

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

Worker (:func:`train_loop_per_worker`): model, EMA, AdamW, resume, DDP, the step loop, rank-0
logging (MLflow via :mod:`xmdpt.ops.tracking`, tqdm) and checkpoints. Ray-specific lines are marked
``# [ray]``.

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
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from xmdpt.ops import storage, tracking
from xmdpt.config import XMDPTConfig, section_hash
from xmdpt.ops.manifests import (AutoencoderManifest, FeaturesManifest, StageManifest, TrainManifest, ValidateManifest,
                             WorkerStart)
from xmdpt.training.data import Collate, FeatureSpec, build_train_table, read_train_table
from xmdpt.training.step import LOSS_KEYS, autocast_dtype, lr_at, train_step
from xmdpt.data.keypoints import render_skeleton
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.sampling import sample
from xmdpt.encoders.vae import LatentCodec
from xmdpt.model import XMDPT
from xmdpt.ops.ray_utils import check_resources, init_ray
from xmdpt.training.checkpoint import load_checkpoint, read_trainer_state, save_checkpoint
from xmdpt.training.ema import EMA

logger = logging.getLogger(__name__)

__all__ = ["train", "run_train_stage", "train_loop_per_worker", "run_name_for", "write_stage_outputs"]

RUN_FILE = "xmdpt_run.json"
RESULT_FILE = "result.json"
FINAL_DIR = "final"
WORKERS_DIR = "workers"
CHECKPOINT_PREFIX = "checkpoint_step"

# train.* fields that do not change the trained weights (left out of the run name). max_steps is
# left out so that raising it continues the same run from its latest checkpoint.
_NON_RESULT_TRAIN_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "sample_every", "sample_steps",
                          "sample_rows", "max_failures", "mlflow_experiment", "max_steps")


def code_fingerprint() -> str:
    """Hash of the source that defines what training computes (model, diffusion, training step),
    so a code change starts a new run instead of reusing a finished one."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("model", "diffusion", "training"):
        for f in sorted((root / sub).glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def run_name_for(cfg: XMDPTConfig, data_hash: str) -> str:
    """Deterministic run name: hash of the model/diffusion/training params, the data hash and the
    training code; a relaunch of the same experiment resumes (or reuses) the same run."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _NON_RESULT_TRAIN_KEYS}
    return f"xmdpt-{section_hash(cfg.model, cfg.diffusion, train, data_hash, code_fingerprint())}"



def _read_json(uri: str) -> Optional[dict[str, Any]]:
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return None
    with fs.open(path) as f:
        return json.load(f)


def _write_json(uri: str, obj: Mapping[str, Any]) -> None:
    fs, path = storage.filesystem(uri)
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------------


def _all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of scalar metrics over the DDP process group (identity without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist()))


def _history_after(history: list[dict[str, Any]], history_ms: list[int], step: int) -> list[list[Any]]:
    """``[[ms, entry], ...]`` of the history entries after ``step``."""
    return [[ms, entry] for entry, ms in zip(history, history_ms) if entry["step"] > step]


def _grid_image(rows: list[np.ndarray]) -> np.ndarray:
    """Stack ``uint8 (h, W, 3)`` rows into one image with 2-px white separators."""
    sep = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    out = []
    for r in rows:
        out += [r, sep]
    return np.concatenate(out[:-1], axis=0)


class _SampleGrid:
    """Rank 0's in-training sample grid: source | target skeleton | generated | ground truth.

    Sources and ground truths are decoded from the cached posterior means with the VAE of the
    `autoencoder` stage; the generated column is a short DDIM run of the EMA model
    (``train.sample_steps`` steps, ``sample.*`` guidance settings).
    """

    def __init__(self, cfg: XMDPTConfig, meta: Mapping[str, Any], batch: Mapping[str, torch.Tensor],
                 device: torch.device):

        n = min(cfg.train.sample_rows, batch["x0_mean"].shape[0])
        self.batch = {k: v[:n].to(device) for k, v in batch.items()}
        self.cfg = cfg
        self.latent_scale = float(meta["latent_scale"])
        self.image_size = int(meta["image_size"])
        self.keypoint_hw = tuple(meta.get("keypoint_hw") or (self.image_size, self.image_size))
        self.codec = None
        if meta.get("autoencoder_manifest"):
            self.codec = LatentCodec.from_manifest(dict(meta["autoencoder_manifest"]), device=device)
        self.model = XMDPT(cfg.model).to(device).eval()

    def _decode(self, z: torch.Tensor) -> np.ndarray:
        """Unscaled latents (n, C, H, W) -> uint8 (n, S, S, 3)."""
        if self.codec is not None:
            img = self.codec.decode(z)  # (n, 3, S, S) in [-1, 1]
        else:  # no autoencoder (unit tests): show the first three latent channels
            img = torch.nn.functional.interpolate(z[:, :3] / (z.abs().amax() + 1e-6), size=self.image_size)
        img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.permute(0, 2, 3, 1).cpu().numpy()

    def _skeletons(self) -> np.ndarray:
        kps = self.batch["keypoints"].cpu().numpy()  # (n, 18, 2)
        return np.stack([render_skeleton(k, self.keypoint_hw, (self.image_size, self.image_size)) for k in kps])

    @torch.no_grad()
    def render(self, ema: Any, diffusion: Any, step: int) -> np.ndarray:
        ema.copy_to(self.model)
        b = self.batch
        cond = {"pose_tokens": b["pose_tokens"], "ref_tokens": b["ref_tokens"],
                "ref_latent": b["ref_mean"] * self.latent_scale}
        scfg = dataclasses.replace(self.cfg.sample, num_steps=self.cfg.train.sample_steps)
        gen = torch.Generator(device=b["ref_mean"].device).manual_seed(self.cfg.sample.seed)
        x_0 = sample(self.model, diffusion, cond, scfg, generator=gen, progress=False)  # (n, C, H, W) scaled
        cols = [self._decode(b["ref_mean"]), self._skeletons(), self._decode(x_0 / self.latent_scale),
                self._decode(b["x0_mean"])]
        rows = [np.concatenate([c[i] for c in cols], axis=1) for i in range(len(cols[0]))]
        return _grid_image(rows)


def _write_pid(run_dir: str, rank: int, node: str) -> None:
    """Record this worker's pid and Ray node (tests kill it; operators can find it): the latest in
    ``workers/rank_{r}.pid.json``, every start of a worker in ``workers/starts/``."""
    record = {"pid": os.getpid(), "rank": rank, "node_id": node, "time": time.time()}
    try:
        _write_json(storage.join(run_dir, WORKERS_DIR, f"rank_{rank}.pid.json"), record)
        _write_json(storage.join(run_dir, WORKERS_DIR, "starts", f"{time.time_ns()}-rank_{rank}.json"), record)
    except OSError as e:  # best effort: a read-only or remote store must not stop training
        logger.warning("could not write the worker pid file under %s: %s", run_dir, e)


def worker_starts(run_dir: str) -> list[dict[str, Any]]:
    """Every start of a training worker of the run, oldest first (``pid, rank, node_id, time``)."""
    fs, path = storage.filesystem(storage.join(run_dir, WORKERS_DIR, "starts"))
    if not fs.exists(path):
        return []
    starts = []
    for f in sorted(fs.ls(path, detail=False)):
        with fs.open(f) as fh:
            starts.append(json.load(fh))
    return sorted(starts, key=lambda r: r["time"])


def _initial_checkpoint(ray_checkpoint: Any, init_from: str) -> tuple[Any, Optional[str]]:
    """``(context manager giving a local checkpoint folder, its name)``: the run's own latest
    checkpoint, else ``train.init_from`` (local or URL), else ``(None, None)``."""
    import contextlib

    if ray_checkpoint:
        return ray_checkpoint.as_directory(), ray_checkpoint.path  # [ray]
    if not init_from:
        return None, None

    @contextlib.contextmanager
    def fetched():
        fs, path = storage.filesystem(init_from)
        if not fs.exists(f"{path.rstrip('/')}/trainer_state.json"):
            raise FileNotFoundError(f"train.init_from: {init_from!r} is not a checkpoint folder (no trainer_state.json)")
        if not storage.is_url(init_from):
            yield init_from
            return
        with tempfile.TemporaryDirectory() as tmp:
            fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
            yield tmp

    return fetched(), init_from


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker: resume, train to ``train.max_steps``, checkpoint, log (rank 0)."""
    cfg = XMDPTConfig.from_dict(loop_config["config"])
    import ray.train  # [ray]
    import ray.train.torch  # [ray]
    from tqdm.auto import tqdm

    from xmdpt.training.mlflow_callback import HISTORY_KEY, send_history  # imports Ray: kept inside Ray's code

    meta = loop_config["meta"]
    tc = cfg.train
    ctx = ray.train.get_context()  # [ray]
    rank, world = ctx.get_world_rank(), ctx.get_world_size()  # [ray]
    device = ray.train.torch.get_device()  # [ray]
    _write_pid(meta["run_dir"], rank, ray.get_runtime_context().get_node_id())  # [ray]
    spec = FeatureSpec.from_dict(meta["spec"])
    uri, run_id = meta["tracking_uri"], meta["run_id"]

    if device.type == "cpu":  # one intra-op thread per reserved CPU unless set: oversubscribed OpenMP threads spin
        torch.set_num_threads(tc.threads_per_worker or max(1, round(tc.cpus_per_worker)))
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = XMDPT(cfg.model).to(device)
    if cfg.model.mask_ratio == 0:  # no masked pass: MIPNet gets no gradient, and DDP must not wait for one
        model.mipnet.requires_grad_(False)
    ema = EMA(model, tc.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    step, history, history_ms = 0, [], []  # logged metrics, and when each entry was made (ms since the epoch)
    # [ray] the latest reported checkpoint, on restart or relaunch; else train.init_from for a new run
    opened, source = _initial_checkpoint(ray.train.get_checkpoint(), tc.init_from)
    if opened is not None:
        with opened as d:
            state = load_checkpoint(d, model=model, ema=ema, opt=opt, device=device)
        if state.get("data_hash") != meta["data_hash"]:
            raise RuntimeError(f"checkpoint {source} was trained on data {state.get('data_hash')}, "
                               f"this run uses {meta['data_hash']}")
        step, history = int(state["step"]), list(state.get("history", []))
        history_ms = list(state.get("history_ms", []))[:len(history)]
        ema.num_updates = step  # one EMA update per optimizer step: the warm-up resumes where it was
        logger.info("rank %d resumed from step %d (%s)", rank, step, source)
        if rank == 0 and ray.train.get_checkpoint():  # [ray] the last checkpoint's entries may not have reached
            # MLflow (a driver lost after the checkpoint): sent again with their own timestamps, kept once
            send_history(uri, run_id, _history_after(history, history_ms, step - tc.checkpoint_every))
    start_step = step
    model = ray.train.torch.prepare_model(model)  # [ray] DDP (gloo on CPU, NCCL on GPU)
    model.train()
    amp_dtype = autocast_dtype(tc.precision, device)
    gen = torch.Generator(device=device).manual_seed(tc.seed * 100_003 + rank * 1_009 + start_step)
    shard = ray.train.get_dataset_shard("train")  # [ray]
    rows_per_step = tc.batch_size_per_worker * tc.grad_accum_steps

    grid = None
    bar = tqdm(total=tc.max_steps, initial=step, desc="train", unit="step", mininterval=5.0) if rank == 0 else None
    window: dict[str, float] = {k: 0.0 for k in LOSS_KEYS}
    window_steps, window_t0 = 0, time.perf_counter()
    last: dict[str, float] = {}

    sent_step = step  # history entries up to here went with an earlier report

    def save_and_report(extra: Mapping[str, float]) -> None:
        nonlocal sent_step
        metrics = {"step": step, "start_step": start_step, **last, **extra}
        if rank == 0:  # to MLflow from the controller once this checkpoint is registered (mlflow_callback)
            metrics[HISTORY_KEY] = _history_after(history, history_ms, sent_step)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                state = {"step": step, "data_hash": meta["data_hash"], "run_id": run_id, "run_name": meta["run_name"],
                         "history": history, "history_ms": history_ms, "world_size": world}
                save_checkpoint(Path(tmp) / "ckpt", model=getattr(model, "module", model), ema=ema, opt=opt,
                                config=meta["model_config"], trainer_state=state)
                ckpt = ray.train.Checkpoint.from_directory(str(Path(tmp) / "ckpt"))  # [ray]
            ray.train.report(metrics, checkpoint=ckpt,  # [ray] a barrier over all workers
                             checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{step:08d}")
        sent_step = step

    while step < tc.max_steps:
        batches = shard.iter_torch_batches(  # [ray] one pass over this worker's shard
            batch_size=rows_per_step, collate_fn=Collate(spec), drop_last=True,
            local_shuffle_buffer_size=tc.shuffle_buffer or None, local_shuffle_seed=tc.seed + step)
        seen = 0
        for batch in batches:
            seen += 1
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if rank == 0 and grid is None and tc.sample_every > 0:
                grid = _SampleGrid(cfg, meta, batch, device)
            t0 = time.perf_counter()
            m = train_step(model, ema, opt, {k: v for k, v in batch.items() if k != "keypoints"},
                           diffusion=diffusion, latent_scale=spec.latent_scale, cond_drop_prob=tc.cond_drop_prob,
                           mask_ratio=cfg.model.mask_ratio, accum_steps=tc.grad_accum_steps,
                           grad_clip_norm=tc.grad_clip_norm, lr=lr_at(step, tc.lr, tc.warmup_steps),
                           amp_dtype=amp_dtype, generator=gen, min_snr_gamma=tc.min_snr_gamma,
                           timestep_logit_normal=tc.timestep_logit_normal)
            step += 1
            for k in LOSS_KEYS:
                window[k] += m[k]
            window_steps += 1
            if step % tc.log_every == 0 or step == tc.max_steps:
                elapsed = time.perf_counter() - window_t0
                avg = _all_reduce_mean({k: v / window_steps for k, v in window.items()}, device)
                last = {**avg, "lr": m["lr"], "grad_norm": m["grad_norm"],
                        "samples_per_s": rows_per_step * world * window_steps / elapsed,
                        "step_time_s": elapsed / window_steps, "last_step_time_s": time.perf_counter() - t0}
                if rank == 0:
                    history.append({"step": step, **{k: round(v, 6) for k, v in last.items()}})
                    history_ms.append(int(time.time() * 1000))
                    bar.set_postfix(loss=f"{avg['loss']:.4f}", sps=f"{last['samples_per_s']:.1f}")
                window = {k: 0.0 for k in LOSS_KEYS}
                window_steps, window_t0 = 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            if rank == 0 and grid is not None and (step % tc.sample_every == 0 or step == tc.max_steps):
                image = grid.render(ema, diffusion, step)
                tracking.log_image(uri, run_id, image, f"samples/step_{step:08d}.png")
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                save_and_report({})
            if step >= tc.max_steps:
                break
        if seen == 0:
            raise RuntimeError(f"rank {rank}: the training shard yields no batch of {rows_per_step} rows "
                               f"(train.batch_size_per_worker x grad_accum_steps); the table has too few rows")
    if start_step >= tc.max_steps:  # relaunched with max_steps <= the checkpoint's step
        save_and_report({})
    if bar is not None:
        bar.close()


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
    return _read_json(storage.join(run_dir, RESULT_FILE))


def train(cfg: XMDPTConfig) -> dict[str, Any]:
    """Train (or resume, or reuse) the experiment described by ``cfg``; return its summary.

    Returns:
        ``{"run_name", "run_dir", "run_id", "tracking_uri", "model_uri", "steps", "data",
        "history", "final", "reused", "start_step"}`` — ``history`` is the list of logged
        ``{"step", "loss", "loss_masked", "vb", ...}``; ``final`` the last logged metrics.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # [ray]
    from ray.train.torch import TorchTrainer  # [ray]

    from xmdpt.training.mlflow_callback import MLflowHistory  # imports Ray: kept inside Ray's code

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

    run_file = storage.join(run_dir, RUN_FILE)
    prev = _read_json(run_file) or {}
    lineage = tracking.lineage_tags(manifests, paths, extra={"data_hash": table["data_hash"], "run_name": run_name,
                                                             "train_table": table["uri"]})
    run_id = tracking.start_run(uri, cfg.train.mlflow_experiment, run_id=prev.get("run_id") if
                                prev.get("tracking_uri") == uri else None,
                                run_name=run_name, params=cfg.flat(), tags=lineage)
    _write_json(run_file, {"tracking_uri": uri, "run_id": run_id, "run_name": run_name})
    if not prev:
        tracking.log_dict(uri, run_id, cfg.to_dict(), "config/params.yaml")

    feats, ae = manifests["features"], manifests.get("autoencoder")
    assert isinstance(feats, FeaturesManifest)
    meta = {
        "run_dir": run_dir, "run_name": run_name, "run_id": run_id, "tracking_uri": uri,
        "data_hash": table["data_hash"], "spec": spec.to_dict(), "latent_scale": spec.latent_scale,
        "image_size": int(feats.image_size or cfg.data.image_size),
        "keypoint_hw": list(feats.keypoints_frame),  # (H, W) the keypoints are in
        "autoencoder_manifest": ae.to_dict() if ae else None,
        "model_config": _model_config(cfg, manifests, spec, table["data_hash"], paths),
    }
    trainer = TorchTrainer(  # [ray]
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "meta": meta},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=worker,
                                     placement_strategy=tc.placement_strategy),
        run_config=RunConfig(storage_path=runs_root, name=run_name,
                             checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             callbacks=[MLflowHistory(uri, run_id)]),
        datasets={"train": _train_dataset(table, spec)},
    )
    logger.info("training %s: %d workers x %d rows/step, %d steps -> %s", run_name, tc.num_workers,
                tc.batch_size_per_worker * tc.grad_accum_steps, tc.max_steps, run_dir)
    try:
        result = trainer.fit()  # [ray]
    except BaseException:
        tracking.end_run(uri, run_id, status="FAILED")
        raise

    with result.checkpoint.as_directory() as d:  # [ray]
        state = read_trainer_state(d)
        final_uri = storage.join(run_dir, FINAL_DIR)
        fs, final_path = storage.filesystem(final_uri)
        if fs.exists(final_path):
            fs.rm(final_path, recursive=True)
        fs.makedirs(final_path, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            fs.put_file(os.path.join(d, name), f"{final_path.rstrip('/')}/{name}")
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
    _write_json(storage.join(run_dir, RESULT_FILE), summary)
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
