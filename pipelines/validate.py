"""DVC stage ``validate``: the Great Expectations suites of ``data_specs/`` over pairs and poses.

Bad rows are quarantined with their reason and the rest go on; a table-level failure (schema,
counts, an identity in both splits, an empty split) exits non-zero after writing the readable
report ``{artifacts_dir}/validate/report.md`` and the metrics ``report.json``. On success,
``{artifacts_dir}/validate/manifest.json`` points to the clean tables downstream stages read.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.data.validation import DataValidationError, validate_dataset

logger = logging.getLogger("pipelines.validate")


def run(cfg: XMDPTConfig) -> dict:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter drowns the report
    try:
        manifest, _ = validate_dataset(cfg)
    except DataValidationError as e:
        logger.error("validation failed; see %s/validate/report.md", cfg.paths.artifacts_dir)
        raise SystemExit(1) from e
    logger.info("validate: %s -> %s", manifest["counts"], manifest["uri"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("validate", run, argv)


if __name__ == "__main__":
    main()
