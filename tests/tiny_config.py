"""The small config the unit tests build on.

The config's defaults are the paper's setting (256 px, X-MDPT-S/2, the SD VAE, DINOv2 from the hub);
tests run on two CPU cores and offline, so they start from this tiny profile instead: 64 px images,
a small fitted autoencoder, random-init stand-in token encoders and `xmdpt-tiny/2`. Unlike
``params.yaml`` (the embedded experiment) it never changes to tune a run.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

from xmdpt.core.config import XMDPTConfig

TINY: dict[str, dict[str, Any]] = {
    "data": {"image_size": 64, "num_cpus_per_task": 0.5},
    "poses": {"num_actors": 1, "cpus_per_actor": 0.5},
    "autoencoder": {"vae": "fitted", "latent_scale": None, "train_steps": 400, "lr": 2e-3, "batch_size": 8,
                    "l1_weight": 1.0, "ema_decay": 0.0},
    "encoders": {"pretrained": False, "token_input_size": 112},
    "features": {"batch_size": 16, "num_actors": 1, "num_gpus_per_actor": 0.0, "num_cpus_per_actor": 1.0,
                 "shard_images": 64},
    "model": {"preset": "xmdpt-tiny/2"},
    "train": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 0.5, "batch_size_per_worker": 16,
              "max_steps": 400, "lr": 5e-4, "warmup_steps": 50, "grad_clip_norm": 1.0, "ema_decay": 0.995,
              "precision": "auto", "log_every": 10, "checkpoint_every": 100, "keep_checkpoints": 2,
              "sample_every": 100, "sample_steps": 10, "sample_rows": 4, "shuffle_buffer": 256, "max_failures": 2},
    "sample": {"source_latent": "mean"},
    "evaluate": {"batch_size": 16, "num_actors": 1, "num_gpus_per_actor": None, "num_cpus_per_actor": 1.0},
    "register": {"metric": "synthetic_pose_iou", "higher_is_better": True},
}


def tiny_dict(overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> dict[str, dict[str, Any]]:
    """``TINY`` with ``overrides`` merged in, section by section (a model preset replaces the tiny one)."""
    d = copy.deepcopy(TINY)
    for sec, vals in (overrides or {}).items():
        d[sec] = {**d.get(sec, {}), **dict(vals)}
    return d


def tiny_config(overrides: Optional[Mapping[str, Mapping[str, Any]]] = None, **sections: Mapping[str, Any]) -> XMDPTConfig:
    """The tiny test config, with ``overrides`` / keyword sections merged in."""
    return XMDPTConfig.from_dict(tiny_dict({**dict(overrides or {}), **sections}))
