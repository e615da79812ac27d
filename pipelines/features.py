"""DVC stage ``features``: the fp16 feature cache (VAE posterior, image and pose tokens, x2 for the flip).

Resumable: an interrupted run redoes only the missing shards. The cache is checked with Great
Expectations at the end; a failure exits non-zero with the readable report.
Writes ``{artifacts_dir}/features/manifest.json``.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.features.validation import FeatureCacheError
from xmdpt.features.stage import build_feature_cache
from xmdpt.core.manifests import FeaturesManifest

logger = logging.getLogger("pipelines.features")


def run(cfg: XMDPTConfig) -> dict:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        manifest = build_feature_cache(cfg)
    except FeatureCacheError as e:
        logger.error("feature cache failed its checks:\n%s", e)
        raise SystemExit(1) from e
    manifest = FeaturesManifest.coerce(manifest).write(FeaturesManifest.path(cfg.paths.artifacts_dir))
    logger.info("features: %d rows (%d images quarantined), %.1f MB%s -> %s", manifest["tables"]["features"]["rows"],
                manifest["images"]["quarantined"], manifest["bytes"] / 1e6,
                " [STAND-IN token encoders]" if manifest["standin"] else "", manifest["uri"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("features", run, argv)


if __name__ == "__main__":
    main()
