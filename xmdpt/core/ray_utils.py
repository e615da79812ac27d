"""Starting or joining Ray, kept to loopback on a single machine, and the checks a cluster needs.

``init_ray()`` joins ``$RAY_ADDRESS`` when set (a cluster), otherwise starts a local Ray bound to
127.0.0.1 with the dashboard off. Ray's dashboard probes the cloud-metadata address at start unless
``~/ray_bootstrap_config.yaml`` exists; ``make``/CI create a one-line ``provider: {type: local}``
file there (see the Makefile) so that nothing leaves the machine.

Given the stage's config, ``init_ray(cfg=...)`` also refuses, before any work, a local
``paths.storage_root`` / ``paths.dataset_root`` on a cluster of several nodes (nodes share only
object storage) unless ``cluster.shared_filesystem: true``; :func:`check_resources` refuses a
request no node of the cluster can hold, naming the resources, instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from xmdpt.core.config import ConfigError, XMDPTConfig
from xmdpt.core.storage import is_url

logger = logging.getLogger(__name__)

__all__ = ["init_ray", "alive_nodes", "check_shared_storage", "check_resources", "node_id", "loopback_host",
           "local_stage_paths"]


def loopback_host(address: str) -> bool:
    """True when the host of ``address`` (``host:port`` or a URL) is this machine's loopback."""
    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    return host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")


def local_stage_paths(cfg: XMDPTConfig) -> list[tuple[str, str]]:
    """``(key, value)`` of ``paths.dataset_root`` / ``paths.storage_root`` that are local paths, not URLs."""
    return [(key, value) for key in ("dataset_root", "storage_root")
            if not is_url(value := getattr(cfg.paths, key))]


def init_ray(num_cpus: float | None = None, *, cfg: Optional[XMDPTConfig] = None, **kwargs: Any) -> None:
    """Initialise Ray once per process (no-op if already initialised).

    Args:
        num_cpus: logical CPUs of a local Ray (ignored when joining ``$RAY_ADDRESS``).
        cfg: the stage's config: checked against the cluster joined (:func:`check_shared_storage`).
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            logger.info("joining Ray cluster at %s", address)
            if loopback_host(address):  # a head on this machine: the driver advertises loopback too
                kwargs.setdefault("_node_ip_address", "127.0.0.1")
            ray.init(address=address, log_to_driver=True, **kwargs)
        else:
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
    if cfg is not None:
        check_shared_storage(cfg)


def node_id() -> str:
    """The Ray node id of the calling process (driver, task, actor or Train worker)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` entries of the nodes alive now."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_shared_storage(cfg: XMDPTConfig, nodes: Optional[list[Mapping[str, Any]]] = None) -> None:
    """Refuse local stage-data paths on a cluster of several nodes.

    Nodes of a cluster share nothing but object storage: a stage that writes Parquet shards or
    checkpoints to a local ``storage_root`` on one node leaves them where the others cannot read
    them. Allowed with ``cluster.shared_filesystem: true`` (NFS, or nodes on one machine).

    Raises:
        ConfigError: naming the setting, its value and the node count.
    """
    nodes = alive_nodes() if nodes is None else nodes
    if len(nodes) <= 1 or cfg.cluster.shared_filesystem:
        return
    local = local_stage_paths(cfg)
    if local:
        key, value = local[0]
        raise ConfigError(
            f"paths.{key}: {value!r} is a local path, but this Ray cluster has {len(nodes)} nodes that share only "
            f"object storage: use a URL every node reads (s3://bucket/prefix, gs://…), or set "
            f"cluster.shared_filesystem: true if every node mounts that path")


def check_resources(request: Mapping[str, float], count: int, what: str, cfg: XMDPTConfig,
                    nodes: Optional[list[Mapping[str, Any]]] = None, spread: bool = False) -> None:
    """Refuse ``count`` bundles of ``request`` (``{"CPU": 1, "GPU": 1}``) the cluster cannot place.

    Each bundle must fit on one node's total resources; all of them on the cluster's total
    (on distinct nodes when ``spread``). Skipped when ``cluster.autoscaling`` is true: the
    autoscaler may add the nodes.

    Raises:
        ConfigError: naming ``what`` (the settings that made the request), the request and what
            the cluster has.
    """
    if cfg.cluster.autoscaling:
        return
    nodes = alive_nodes() if nodes is None else nodes
    request = {k: float(v) for k, v in request.items() if v}
    totals = [{k: float(v) for k, v in (n.get("Resources") or {}).items()} for n in nodes]
    fits = [t for t in totals if all(t.get(k, 0.0) >= v for k, v in request.items())]
    have = {k: sum(t.get(k, 0.0) for t in totals) for k in request}
    need = {k: v * count for k, v in request.items()}
    short = (not fits or (spread and len(fits) < count)
             or any(have[k] < need[k] - 1e-9 for k in request))
    if short:
        per_node = ", ".join("{" + ", ".join(f"{k}: {t.get(k, 0.0):g}" for k in request) + "}" for t in totals)
        raise ConfigError(
            f"{what}: {count} x {dict(request)} ({', '.join(f'{v:g} {k}' for k, v in need.items())} in all"
            f"{', one per node' if spread else ''}) cannot be placed on this Ray cluster: it has "
            f"{', '.join(f'{v:g} {k}' for k, v in have.items())} over {len(totals)} node(s) [{per_node}]; "
            f"{len(fits)} node(s) can hold one. Lower the request, add nodes, or set cluster.autoscaling: true "
            f"if the cluster adds nodes on demand")
