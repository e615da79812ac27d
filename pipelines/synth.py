"""DVC stage ``synth``: a synthetic dataset in exactly the DeepFashion In-shop layout.

Writes ``data/synth`` (the default ``paths.dataset_root``; the folder is fixed because ``dvc.yaml``
declares it as this stage's output): 256x176 JPEGs under ``img/``, both public annotation layouts
(PATN/GFLA csv and PIDM/X-MDPT txt) and the train/test lists. Params: ``data.synth_*``.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.config import XMDPTConfig
from xmdpt.data.synth import write_synthetic_dataset

logger = logging.getLogger("pipelines.synth")

SYNTH_DIR = "data/synth"  # == dvc.yaml stages.synth.outs


def run(cfg: XMDPTConfig) -> dict:
    summary = write_synthetic_dataset(
        SYNTH_DIR,
        identities=cfg.data.synth_identities,
        seed=cfg.data.synth_seed,
        test_fraction=cfg.data.synth_test_fraction,
    )
    logger.info("synth: %s", summary)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("synth", run, argv)


if __name__ == "__main__":
    main()
