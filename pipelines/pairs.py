"""DVC stage ``pairs``: the (target, source) pair table of ``paths.dataset_root``.

Reads either public DeepFashion layout (or a raw ``img/`` tree), checks with Ray Data that every
referenced image exists and decodes, and writes the pair table, the image sizes and the quarantined
rows under ``{storage_root}/pairs/<hash>/`` plus ``{artifacts_dir}/pairs/manifest.json``.
Params: ``paths.*``, ``data.layout``, ``data.split_test_fraction``, ``data.num_cpus_per_task``.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.data.pairs import build_pairs

logger = logging.getLogger("pipelines.pairs")


def run(cfg: XMDPTConfig) -> dict:
    manifest = build_pairs(cfg)
    logger.info("pairs: %s -> %s", manifest["counts"], manifest["uri"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("pairs", run, argv)


if __name__ == "__main__":
    main()
