"""DVC stage ``train``: Ray Train (V2) DDP training from the feature cache, tracked in MLflow.

Reads ``{artifacts_dir}/{validate,features,autoencoder}/manifest.json``; writes the checkpoints and
the final EMA model folder under ``{storage_root}/train/runs/<run name>/`` and, for DVC,
``{artifacts_dir}/train/manifest.json`` (model folder URI, run id, tracking URI, data hash),
``metrics.json`` and the loss curve ``loss.csv``. Relaunching resumes from the latest checkpoint;
relaunching a finished run returns it without training.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.core.tracking import TrackingUnavailableError
from xmdpt.training.trainer import run_train_stage

logger = logging.getLogger("pipelines.train")


def run(cfg: XMDPTConfig) -> dict:
    try:
        manifest = run_train_stage(cfg)
    except TrackingUnavailableError as e:
        logger.error("%s", e)
        raise SystemExit(1) from None
    logger.info("train: %d steps (%s), final loss %s -> %s; MLflow run %s at %s", manifest["steps"],
                "reused" if manifest["reused"] else f"from step {manifest['start_step']}",
                manifest["final"].get("loss"), manifest["model_uri"], manifest["run_id"], manifest["tracking_uri"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("train", run, argv)


if __name__ == "__main__":
    main()
