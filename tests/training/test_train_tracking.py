"""MLflow tracking: fail fast on an unreachable server; runs reopened on resume."""

from __future__ import annotations

import socket
import time

import pytest

from xmdpt.core import tracking
from xmdpt.training.trainer import run_train_stage


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_unreachable_tracking_server_fails_in_seconds(fixture_cache, make_config):
    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = make_config(fixture_cache["root"]).replace(paths={"mlflow_tracking_uri": uri})
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailableError, match=uri.replace(".", r"\.")):
        run_train_stage(cfg)
    assert time.monotonic() - t0 < 10


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert tracking.resolve_tracking_uri("") == "sqlite:////elsewhere/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri("") == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_run_is_reopened_not_duplicated(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.check_tracking_server(uri)
    run_id = tracking.start_run(uri, "xmdpt-test", run_name="r", params={"train.lr": 1e-3, "model.depth": 2},
                                tags={"git_commit": "abc"})
    tracking.log_metrics(uri, run_id, {"loss": 1.5, "note": "skipped"}, step=3)
    tracking.end_run(uri, run_id, status="FAILED")
    again = tracking.start_run(uri, "xmdpt-test", run_id=run_id, run_name="r", params={"train.lr": 1e-3})
    assert again == run_id
    tracking.log_metrics(uri, run_id, {"loss": 1.0}, step=6)
    info = tracking.run_info(uri, run_id)
    assert info["status"] == "RUNNING" and info["params"]["train.lr"] == "0.001"
    assert tracking.metric_history(uri, run_id, "loss") == [(3, 1.5), (6, 1.0)]
