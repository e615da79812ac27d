"""Training metrics to MLflow from the Ray Train controller, once a checkpoint holds them.

Rank 0 attaches the history entries made since its last report (each with the time it was made)
to the metrics of ``ray.train.report`` under :data:`HISTORY_KEY`. The controller calls
:meth:`MLflowHistory.after_report` when every worker has reported and the checkpoint is
registered, so MLflow receives exactly the steps a resumed run keeps: when a worker or its node
is lost between two checkpoints, the steps after the last registered checkpoint were never sent,
and the restarted run logs them once. (Sending from the worker when ``report`` returns is not
enough: the controller may still lose that report with the node.)
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ray.train import UserCallback  # this module is imported only where Ray Train runs

from xmdpt.core import tracking

logger = logging.getLogger(__name__)

HISTORY_KEY = "xmdpt_history"  # [[ms since the epoch, {"step": s, metric: value, ...}], ...]


def send_history(uri: str, run_id: str, entries: list[tuple[int, dict[str, Any]]]) -> None:
    """Log ``(timestamp ms, entry)`` pairs; the same pair sent twice is kept once by MLflow."""
    for ms, entry in entries:
        tracking.log_metrics(uri, run_id, {k: v for k, v in entry.items() if k != "step"}, entry["step"],
                             timestamp_ms=ms)


class MLflowHistory(UserCallback):
    """Ray Train callback (runs in the controller) that sends rank 0's reported history to MLflow."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Optional[Any]) -> None:
        entries = next((m[HISTORY_KEY] for m in metrics if m and m.get(HISTORY_KEY)), None)
        if not entries:
            return
        try:
            send_history(self.tracking_uri, self.run_id, [(int(ms), dict(e)) for ms, e in entries])
        except Exception as e:  # noqa: BLE001 - a tracking outage must not stop training; the checkpoint has the history
            logger.warning("could not send %d metric entries to MLflow at %s: %s", len(entries), self.tracking_uri, e)
