"""DVC stage ``poses``: 18 COCO keypoints for every image of the pair table.

Annotated images take their (converted) annotation; the rest go through the MediaPipe pose
estimator (``poses.model_path``) in a Ray Data actor pool. Writes the keypoint table and the
quarantined images under ``{storage_root}/poses/<hash>/`` plus ``{artifacts_dir}/poses/manifest.json``.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.data.poses import extract_poses

logger = logging.getLogger("pipelines.poses")


def run(cfg: XMDPTConfig) -> dict:
    manifest = extract_poses(cfg)
    logger.info("poses: %s -> %s", manifest["counts"], manifest["uri"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("poses", run, argv)


if __name__ == "__main__":
    main()
