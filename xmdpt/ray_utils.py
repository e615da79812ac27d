"""Starting or joining Ray, kept to loopback on a single machine.

``init_ray()`` joins ``$RAY_ADDRESS`` when set (a cluster), otherwise starts a local Ray bound to
127.0.0.1 with the dashboard off. Ray's dashboard probes the cloud-metadata address at start unless
``~/ray_bootstrap_config.yaml`` exists; ``make``/CI create a one-line ``provider: {type: local}``
file there (see the Makefile) so that nothing leaves the machine.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def init_ray(num_cpus: float | None = None, **kwargs: Any) -> None:
    """Initialise Ray once per process (no-op if already initialised)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True, **kwargs)
        return
    logger.info("starting a local Ray instance on 127.0.0.1 (num_cpus=%s)", num_cpus)
    ray.init(
        num_cpus=int(num_cpus) if num_cpus else None,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=True,
        logging_level=logging.WARNING,
        log_to_driver=True,
        **kwargs,
    )
    # Ray Data progress bars are noisy inside DVC logs; keep them but concise.
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.enable_operator_progress_bars = False
