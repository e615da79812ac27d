"""The training loop both trained networks share: the denoiser (in each Ray Train worker) and the
autoencoder (fitted, or its decoder fine-tuned, in the `autoencoder` stage).

One optimizer step is, for either: set the step's learning rate from the schedule; for each
micro-batch, the caller's loss under autocast and its backward (a DDP model syncs gradients on the
last micro-batch only); the global gradient norm, clipped if asked; a refusal of a non-finite loss;
the AdamW step; the EMA update. :class:`TrainLoop` runs such steps over the caller's batches until
``max_steps``, calling ``after_step`` after each (logging, sample grids, checkpoints). What differs
between the two networks is the caller's: batches, loss, schedule and hooks.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

__all__ = ["lr_schedule", "optimizer_step", "TrainLoop", "unwrap"]

LossFn = Callable[[Any], Mapping[str, torch.Tensor]]


def lr_schedule(base_lr: float, warmup_steps: int, *, total_steps: Optional[int] = None,
                decay: str = "constant") -> Callable[[int], float]:
    """The learning rate of optimizer step ``s`` (0-based).

    ``constant``: linear warm-up from 0 over ``warmup_steps``, then ``base_lr``. ``cosine``: the
    warm-up factor times a half cosine from 1 at step 0 to 0 at ``total_steps``.
    """
    if decay == "constant":
        return lambda s: base_lr * (s + 1) / warmup_steps if warmup_steps > 0 and s < warmup_steps else base_lr
    if decay == "cosine":
        if not total_steps:
            raise ValueError("a cosine schedule needs total_steps")
        warm = max(1, warmup_steps)
        return lambda s: base_lr * (min(1.0, (s + 1) / warm) * 0.5
                                    * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    raise ValueError(f"unknown decay {decay!r}; expected one of ['constant', 'cosine']")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, micro_batches: Sequence[Any], loss_fn: LossFn, *,
                   lr: Optional[float] = None, ema: Any = None, grad_clip_norm: Optional[float] = None,
                   amp_dtype: Optional[torch.dtype] = None, device_type: str = "cpu") -> dict[str, float]:
    """One optimizer step over ``micro_batches`` (gradients accumulated, the loss averaged).

    Args:
        model: the module being trained (or its DDP wrapper), in train mode.
        opt: its optimizer; ``lr`` (if given) is written into every param group first.
        micro_batches: what ``loss_fn`` takes, one per forward/backward.
        loss_fn: micro-batch -> scalar tensors; ``"loss"`` is minimised, every entry is reported.
        ema: an :class:`xmdpt.training.ema.EMA` of the unwrapped model, updated after the step.
        grad_clip_norm: clip the global gradient norm to this (None: no clipping).
        amp_dtype: autocast dtype (``torch.bfloat16``) or None for fp32.

    Returns:
        Floats: each loss entry averaged over the micro-batches, ``grad_norm`` (before clipping), ``lr``.

    Raises:
        FloatingPointError: the loss is not finite (nothing is stepped).
    """
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    n = len(micro_batches)
    totals: dict[str, float] = {}
    for i, mb in enumerate(micro_batches):
        sync = contextlib.nullcontext() if i == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            amp = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
            with amp:
                losses = loss_fn(mb)
            (losses["loss"] / n).backward()
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach()) / n
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    if grad_clip_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip_norm))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))) \
            if params else 0.0
    if not math.isfinite(totals["loss"]):
        opt.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite training loss {totals['loss']} (lr={opt.param_groups[0]['lr']})")
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(unwrap(model))
    return {**totals, "grad_norm": grad_norm, "lr": float(opt.param_groups[0]["lr"])}


class TrainLoop:
    """Optimizer steps from ``step`` to ``max_steps`` over the caller's batches.

    Args:
        model: the module being trained (or its DDP wrapper).
        opt: its optimizer (AdamW for both networks).
        lr: the schedule, optimizer step -> learning rate (:func:`lr_schedule`).
        ema: EMA of the unwrapped model, or None.
        grad_clip_norm / amp_dtype: as :func:`optimizer_step`.
        split: batch -> its micro-batches (default: the batch is one).
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, *, lr: Callable[[int], float], ema: Any = None,
                 grad_clip_norm: Optional[float] = None, amp_dtype: Optional[torch.dtype] = None,
                 split: Callable[[Any], Sequence[Any]] = lambda b: [b]) -> None:
        self.model, self.opt, self.lr, self.ema = model, opt, lr, ema
        self.grad_clip_norm, self.amp_dtype, self.split = grad_clip_norm, amp_dtype, split
        self.device_type = next(unwrap(model).parameters()).device.type
        self.last_step_time_s = 0.0

    def step(self, step: int, batch: Any, loss_fn: LossFn) -> dict[str, float]:
        """Optimizer step number ``step`` (0-based) on ``batch``."""
        t0 = time.perf_counter()
        out = optimizer_step(self.model, self.opt, self.split(batch), loss_fn, lr=self.lr(step), ema=self.ema,
                             grad_clip_norm=self.grad_clip_norm, amp_dtype=self.amp_dtype,
                             device_type=self.device_type)
        self.last_step_time_s = time.perf_counter() - t0
        return out

    def run(self, batches: Iterable[Any], loss_fn: LossFn, *, step: int, max_steps: int,
            after_step: Optional[Callable[[int, dict[str, float]], None]] = None) -> int:
        """Step through ``batches`` until they end or ``max_steps``; ``after_step(step, metrics)`` gets
        the number of steps done and the step's metrics. Returns the number of steps done."""
        if step >= max_steps:
            return step
        for batch in batches:
            metrics = self.step(step, batch, loss_fn)
            step += 1
            if after_step is not None:
                after_step(step, metrics)
            if step >= max_steps:
                break
        return step
