"""DVC stage ``config``: the config each stage reads, every default filled in.

Writes ``{artifacts_dir}/config/<stage>.yaml`` for every other stage (``xmdpt.core.stage_config``); each
stage depends on its file, so a changed value reruns the stages that read it, whether it is written
in ``params.yaml`` or a default of ``xmdpt/core/config.py``. Always runs here (never as a cluster job)
and needs nothing but the params file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from xmdpt.core.config import ConfigError, load_config
from xmdpt.core.stage_config import write_stage_configs

logger = logging.getLogger("pipelines.config")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m pipelines.config", description="DVC stage 'config'.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        cfg = load_config(args.params)
    except ConfigError as e:
        logger.error("%s", e)
        raise SystemExit(2) from None
    written = write_stage_configs(cfg, Path(cfg.paths.artifacts_dir) / "config")
    logger.info("config: %d stage configs -> %s", len(written), Path(cfg.paths.artifacts_dir) / "config")
    return written


if __name__ == "__main__":
    main()
