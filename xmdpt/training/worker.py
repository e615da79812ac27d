"""The Ray Train worker of the `train` stage: one per DDP rank (:func:`train_loop_per_worker`).

Each worker builds the model, its EMA and AdamW, resumes from the run's latest checkpoint (or
``train.init_from``), wraps the model for DDP and runs :class:`xmdpt.training.loop.TrainLoop` over
its shard of the training table. Rank 0 keeps the logged history (sent to MLflow by the controller,
:mod:`xmdpt.training.mlflow_callback`), the progress bar and the in-training sample grid; every rank
joins each checkpoint report. Ray-specific lines are marked ``# [ray]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch

from xmdpt.core.config import XMDPTConfig
from xmdpt.data.keypoints import render_skeleton
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.sampling import sample
from xmdpt.encoders.vae import LatentCodec
from xmdpt.model import XMDPT
from xmdpt.core import storage, tracking
from xmdpt.training.checkpoint import load_checkpoint, save_checkpoint
from xmdpt.training.data import Collate, FeatureSpec
from xmdpt.training.ema import EMA
from xmdpt.training.loop import TrainLoop, lr_schedule, unwrap
from xmdpt.training.step import LOSS_KEYS, autocast_dtype, denoiser_loss, make_optimizer, split_batch

logger = logging.getLogger(__name__)

__all__ = ["train_loop_per_worker", "worker_starts", "read_json", "write_json", "WORKERS_DIR", "CHECKPOINT_PREFIX"]

WORKERS_DIR = "workers"
CHECKPOINT_PREFIX = "checkpoint_step"


def read_json(uri: str) -> Optional[dict[str, Any]]:
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return None
    with fs.open(path) as f:
        return json.load(f)


def write_json(uri: str, obj: Mapping[str, Any]) -> None:
    fs, path = storage.filesystem(uri)
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)


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


def write_pid(run_dir: str, rank: int, node: str) -> None:
    """Record this worker's pid and Ray node (tests kill it; operators can find it): the latest in
    ``workers/rank_{r}.pid.json``, every start of a worker in ``workers/starts/``."""
    record = {"pid": os.getpid(), "rank": rank, "node_id": node, "time": time.time()}
    try:
        write_json(storage.join(run_dir, WORKERS_DIR, f"rank_{rank}.pid.json"), record)
        write_json(storage.join(run_dir, WORKERS_DIR, "starts", f"{time.time_ns()}-rank_{rank}.json"), record)
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


def _build(cfg: XMDPTConfig, device: torch.device) -> tuple[XMDPT, EMA, torch.optim.Optimizer]:
    """The model (identical initial weights on every rank), its EMA and AdamW."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = XMDPT(cfg.model).to(device)
    if cfg.model.mask_ratio == 0:  # no masked pass: MIPNet gets no gradient, and DDP must not wait for one
        model.mipnet.requires_grad_(False)
    ema = EMA(model, tc.ema_decay)
    opt = make_optimizer(model, tc)
    return model, ema, opt


def _resume(cfg: XMDPTConfig, meta: Mapping[str, Any], model: XMDPT, ema: EMA, opt: torch.optim.Optimizer,
            device: torch.device, rank: int) -> tuple[int, list[dict[str, Any]], list[int]]:
    """Load the run's latest checkpoint (a restart or relaunch), else ``train.init_from``; return
    ``(step, history, history_ms)`` (``0, [], []`` for a fresh start)."""
    import ray.train  # [ray]

    from xmdpt.training.mlflow_callback import send_history  # imports Ray: kept inside Ray's code

    opened, source = _initial_checkpoint(ray.train.get_checkpoint(), cfg.train.init_from)  # [ray]
    if opened is None:
        return 0, [], []
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
        send_history(meta["tracking_uri"], meta["run_id"],
                     _history_after(history, history_ms, step - cfg.train.checkpoint_every))
    return step, history, history_ms


class _Reporter:
    """What happens after each optimizer step: the averaged metrics every ``train.log_every`` steps
    (rank 0's history and progress bar), the sample grid to MLflow every ``train.sample_every``,
    and a checkpoint report, which every rank joins, every ``train.checkpoint_every``."""

    def __init__(self, cfg: XMDPTConfig, meta: Mapping[str, Any], *, model: torch.nn.Module, ema: EMA,
                 opt: torch.optim.Optimizer, loop: TrainLoop, device: torch.device, rank: int, world: int,
                 step: int, history: list[dict[str, Any]], history_ms: list[int]) -> None:
        self.cfg, self.tc, self.meta = cfg, cfg.train, meta
        self.model, self.ema, self.opt, self.loop = model, ema, opt, loop
        self.device, self.rank, self.world = device, rank, world
        self.step = self.start_step = self.sent_step = step  # history entries up to sent_step went with a report
        self.history, self.history_ms = history, history_ms
        self.rows_per_step = self.tc.batch_size_per_worker * self.tc.grad_accum_steps
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        self.grid: Optional[_SampleGrid] = None
        self.last: dict[str, float] = {}
        self._reset_window()
        self.bar = None
        if rank == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.tc.max_steps, initial=step, desc="train", unit="step", mininterval=5.0)

    def _reset_window(self) -> None:
        self.window = {k: 0.0 for k in LOSS_KEYS}
        self.window_steps, self.window_t0 = 0, time.perf_counter()

    def batches(self, shard_batches: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """The shard's batches on the device, without the keypoints (rank 0's grid takes its rows
        from the first batch)."""
        for batch in shard_batches:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            if self.rank == 0 and self.grid is None and self.tc.sample_every > 0:
                self.grid = _SampleGrid(self.cfg, self.meta, batch, self.device)
            yield {k: v for k, v in batch.items() if k != "keypoints"}

    def after_step(self, step: int, m: Mapping[str, float]) -> None:
        tc, self.step = self.tc, step
        for k in LOSS_KEYS:
            self.window[k] += m[k]
        self.window_steps += 1
        if step % tc.log_every == 0 or step == tc.max_steps:
            self._log(m)
        if self.bar is not None:
            self.bar.update(1)
        if self.grid is not None and (step % tc.sample_every == 0 or step == tc.max_steps):
            image = self.grid.render(self.ema, self.diffusion, step)
            tracking.log_image(self.meta["tracking_uri"], self.meta["run_id"], image, f"samples/step_{step:08d}.png")
        if step % tc.checkpoint_every == 0 or step == tc.max_steps:
            self.save_and_report()

    def _log(self, m: Mapping[str, float]) -> None:
        elapsed = time.perf_counter() - self.window_t0
        avg = _all_reduce_mean({k: v / self.window_steps for k, v in self.window.items()}, self.device)
        self.last = {**avg, "lr": m["lr"], "grad_norm": m["grad_norm"],
                     "samples_per_s": self.rows_per_step * self.world * self.window_steps / elapsed,
                     "step_time_s": elapsed / self.window_steps, "last_step_time_s": self.loop.last_step_time_s}
        if self.rank == 0:
            self.history.append({"step": self.step, **{k: round(v, 6) for k, v in self.last.items()}})
            self.history_ms.append(int(time.time() * 1000))
            self.bar.set_postfix(loss=f"{avg['loss']:.4f}", sps=f"{self.last['samples_per_s']:.1f}")
        self._reset_window()

    def save_and_report(self) -> None:
        """A checkpoint of this step (written by rank 0) and ``ray.train.report``, a barrier over all workers."""
        import ray.train  # [ray]

        from xmdpt.training.mlflow_callback import HISTORY_KEY  # imports Ray: kept inside Ray's code

        meta, step = self.meta, self.step
        metrics = {"step": step, "start_step": self.start_step, **self.last}
        if self.rank == 0:  # to MLflow from the controller once this checkpoint is registered (mlflow_callback)
            metrics[HISTORY_KEY] = _history_after(self.history, self.history_ms, self.sent_step)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                state = {"step": step, "data_hash": meta["data_hash"], "run_id": meta["run_id"],
                         "run_name": meta["run_name"], "history": self.history, "history_ms": self.history_ms,
                         "world_size": self.world}
                save_checkpoint(Path(tmp) / "ckpt", model=unwrap(self.model), ema=self.ema,
                                opt=self.opt, config=meta["model_config"], trainer_state=state)
                ckpt = ray.train.Checkpoint.from_directory(str(Path(tmp) / "ckpt"))  # [ray]
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{step:08d}")  # [ray]
        self.sent_step = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker: resume, train to ``train.max_steps``, checkpoint, log (rank 0)."""
    import ray.train  # [ray]
    import ray.train.torch  # [ray]

    cfg, meta = XMDPTConfig.from_dict(loop_config["config"]), loop_config["meta"]
    tc = cfg.train
    ctx = ray.train.get_context()  # [ray]
    rank, world = ctx.get_world_rank(), ctx.get_world_size()  # [ray]
    device = ray.train.torch.get_device()  # [ray]
    write_pid(meta["run_dir"], rank, ray.get_runtime_context().get_node_id())  # [ray]
    spec = FeatureSpec.from_dict(meta["spec"])
    if device.type == "cpu":  # one intra-op thread per reserved CPU unless set: oversubscribed OpenMP threads spin
        torch.set_num_threads(tc.threads_per_worker or max(1, round(tc.cpus_per_worker)))
    model, ema, opt = _build(cfg, device)
    step, history, history_ms = _resume(cfg, meta, model, ema, opt, device, rank)
    start_step = step
    model = ray.train.torch.prepare_model(model)  # [ray] DDP (gloo on CPU, NCCL on GPU)
    model.train()
    gen = torch.Generator(device=device).manual_seed(tc.seed * 100_003 + rank * 1_009 + start_step)
    loop = TrainLoop(model, opt, lr=lr_schedule(tc.lr, tc.warmup_steps), ema=ema, grad_clip_norm=tc.grad_clip_norm,
                     amp_dtype=autocast_dtype(tc.precision, device),
                     split=lambda b: split_batch(b, tc.grad_accum_steps))
    reporter = _Reporter(cfg, meta, model=model, ema=ema, opt=opt, loop=loop, device=device, rank=rank, world=world,
                         step=step, history=history, history_ms=history_ms)
    loss_fn = denoiser_loss(model, reporter.diffusion, latent_scale=spec.latent_scale,
                            cond_drop_prob=tc.cond_drop_prob, mask_ratio=cfg.model.mask_ratio, generator=gen,
                            min_snr_gamma=tc.min_snr_gamma, timestep_logit_normal=tc.timestep_logit_normal,
                            mse_space=tc.mse_space)
    shard = ray.train.get_dataset_shard("train")  # [ray]
    while step < tc.max_steps:
        batches = shard.iter_torch_batches(  # [ray] one pass over this worker's shard
            batch_size=reporter.rows_per_step, collate_fn=Collate(spec), drop_last=True,
            local_shuffle_buffer_size=tc.shuffle_buffer or None, local_shuffle_seed=tc.seed + step)
        done = loop.run(reporter.batches(batches), loss_fn, step=step, max_steps=tc.max_steps,
                        after_step=reporter.after_step)
        if done == step:
            raise RuntimeError(f"rank {rank}: the training shard yields no batch of {reporter.rows_per_step} rows "
                               f"(train.batch_size_per_worker x grad_accum_steps); the table has too few rows")
        step = done
    if start_step >= tc.max_steps:  # relaunched with max_steps <= the checkpoint's step
        reporter.save_and_report()
    reporter.close()
