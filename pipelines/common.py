"""The shared entry of every DVC stage: ``python -m pipelines.<stage> [--params FILE]``.

Each ``pipelines/<stage>.py`` ends with::

    def main(argv=None):
        stage_main("pairs", run, argv)   # run(cfg) calls one library function and writes the outputs

    if __name__ == "__main__":
        main()

:func:`stage_main` parses ``--params`` (default ``params.yaml``), loads the config, configures
logging once, and then either calls ``run(cfg)`` here, or, with ``cluster.submit: true``, submits
the same stage to the Ray cluster at ``$RAY_ADDRESS`` and brings its DVC outputs back
(``xmdpt.orchestration.cluster``; ``docs/cluster.md``). Inside the job the stage runs with ``--no-submit`` and
``--job-dir``, and uploads its outputs when ``run`` returns.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from xmdpt.core.config import ConfigError, XMDPTConfig, load_config
from xmdpt.orchestration.cluster import ClusterJobError, submit_stage
from xmdpt.core.contracts import ManifestError
from xmdpt.orchestration.job_outputs import upload_outputs
from xmdpt.orchestration.preflight import PreflightError, preflight
from xmdpt.core.storage import filesystem, store_folder

logger = logging.getLogger("pipelines")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once per process (a second call changes nothing)."""
    root = logging.getLogger()
    if getattr(root, "_xmdpt_configured", False):
        return
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    root.setLevel(level)
    root._xmdpt_configured = True  # type: ignore[attr-defined]


def load_params(params: str) -> XMDPTConfig:
    """Load a params file from a local path or an fsspec URL (jobs read theirs from the job dir)."""
    if "://" not in params:
        return load_config(params)

    fs, path = filesystem(params)
    if not fs.exists(path):
        raise ConfigError(f"{params}: params file not found")
    with fs.open(path, "r") as f:
        raw = yaml.safe_load(f) or {}
    try:
        return XMDPTConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{params}: {e}") from None


def parse_args(stage: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{stage}", description=f"DVC stage {stage!r}.")
    parser.add_argument("--params", default="params.yaml", help="params file or URL (default: params.yaml)")
    parser.add_argument("--no-submit", action="store_true",
                        help="run here even if cluster.submit is true (set inside cluster jobs)")
    parser.add_argument("--job-dir", default=None,
                        help="cluster jobs only: upload the stage's DVC outputs to this folder/URL when done")
    return parser.parse_args(argv)


def stage_main(
    stage: str,
    run: Callable[[XMDPTConfig], Any],
    argv: Optional[Sequence[str]] = None,
    *,
    module: Optional[str] = None,
) -> Any:
    """Run one DVC stage here, or on the Ray cluster when ``cluster.submit`` is true.

    Args:
        stage: the DVC stage name (``synth``, ``pairs``, ...), also the name of its outputs folder.
        run: ``run(cfg)`` does the stage's work and writes its outputs; its return value is returned.
        argv: command-line arguments (default ``sys.argv[1:]``).
        module: the entry module a cluster job runs (default ``pipelines.<stage>``).

    Returns:
        ``run(cfg)``'s result, or the :class:`xmdpt.orchestration.cluster.JobResult` of a submitted job.
    """
    args = parse_args(stage, argv)
    configure_logging()
    try:
        cfg = load_params(args.params)
    except ConfigError as e:
        logger.error("%s", e)
        raise SystemExit(2) from None

    submit = cfg.cluster.submit and not args.no_submit and os.environ.get("XMDPT_NO_SUBMIT", "") in ("", "0")
    if submit:
        try:
            return submit_stage(stage, cfg, repo_root=Path.cwd(), module=module)
        except (ConfigError, ClusterJobError) as e:
            logger.error("%s", e)
            raise SystemExit(1) from None

    try:  # everything the stage (and the DAG after it) needs to finish, in seconds, before any compute
        preflight(cfg, stage)
    except PreflightError as e:
        logger.error("%s", e)
        raise SystemExit(1) from None
    logger.info("stage %r: running here with %s", stage, args.params)
    try:
        result = run(cfg)
        store_folder(stage)  # data/store/<stage>, the DVC output of the bulk outputs
    except ManifestError as e:  # an upstream output that is missing or unreadable: what to do, no traceback
        logger.error("%s", e)
        raise SystemExit(1) from None
    if args.job_dir:
        upload_outputs(stage, cfg, args.job_dir, root=Path.cwd())
    return result
