"""`python -m pipelines.train`: the stage entry fails fast and clearly without a tracking server."""

from __future__ import annotations

import pytest

import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tiny_config import tiny_dict

pytestmark = pytest.mark.slow  # the train stage in a subprocess

REPO = Path(__file__).resolve().parents[2]


def test_train_entry_exits_in_seconds_naming_the_unreachable_tracking_uri(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_dict({"paths": {"storage_root": str(tmp_path / "store"),
                                                          "artifacts_dir": str(tmp_path / "artifacts"),
                                                          "mlflow_tracking_uri": uri}})))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipelines.train", "--params", str(params)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"MLflow tracking server {uri} is unreachable" in proc.stderr
    assert time.monotonic() - t0 < 60  # interpreter + imports; the probe itself takes ~0 s on a closed port
    assert not (tmp_path / "artifacts" / "train").exists()
