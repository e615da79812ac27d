"""DVC stage ``synth``: a synthetic dataset in exactly the DeepFashion In-shop layout.

Writes ``data/synth`` (the default ``paths.dataset_root``; the folder is fixed because ``dvc.yaml``
declares it as this stage's output): 256x176 JPEGs under ``img/``, both public annotation layouts
(PATN/GFLA csv and PIDM/X-MDPT txt) and the train/test lists. Params: ``synth.*``.

When ``paths.dataset_root`` is a URL (``s3://…``: a cluster whose nodes share only object storage),
the dataset is also published there, replacing what was there, so that the stages after it read
exactly what this stage wrote.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.synth import write_synthetic_dataset
from xmdpt.core.storage import filesystem, is_url

logger = logging.getLogger("pipelines.synth")

SYNTH_DIR = "data/synth"  # == dvc.yaml stages.synth.outs


def run(cfg: XMDPTConfig) -> dict:
    summary = write_synthetic_dataset(
        SYNTH_DIR,
        identities=cfg.synth.identities,
        seed=cfg.synth.seed,
        test_fraction=cfg.synth.test_fraction,
    )
    logger.info("synth: %s", summary)
    if is_url(cfg.paths.dataset_root):
        publish(SYNTH_DIR, cfg.paths.dataset_root)
    return summary


def publish(local_dir: str, url: str) -> int:
    """Replace the dataset at ``url`` with the files of ``local_dir``; return the file count."""
    from pathlib import Path

    fs, base = filesystem(url)
    base = base.rstrip("/")
    if fs.exists(base):
        fs.rm(base, recursive=True)
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    for f in files:
        fs.put_file(str(f), f"{base}/{f.relative_to(local_dir).as_posix()}")
    logger.info("synth: published %d files to %s", len(files), url)
    return len(files)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("synth", run, argv)


if __name__ == "__main__":
    main()
