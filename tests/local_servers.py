"""Processes the tests start on 127.0.0.1 (free ports, servers with a health path, an S3 API, cleanup of
whatever a test's processes left behind) and throwaway copies of the project to run DVC in."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
S3_BUCKET = "xmdpt-store"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A server process on 127.0.0.1 with its output in a log file; ``wait()`` polls its health path."""

    def __init__(self, cmd: list[str], log: Path, port: int, health: str, env: dict | None = None) -> None:
        self.url, self.health, self.log_path = f"http://127.0.0.1:{port}", health, log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})})

    def wait(self, timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}{self.health}", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{self.proc.args[:3]} did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def mlflow_server_cmd(bin_dir: Path, root: Path, port: int) -> list[str]:
    """``mlflow server`` on 127.0.0.1 with an SQLite store and proxied artifacts under ``root``."""
    return [str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]


def pids_under(marker: str) -> list[int]:
    """Pids (not this one) whose command line names ``marker`` or whose working dir is under it."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if marker in cmd or cwd.startswith(marker):
            pids.append(int(p.name))
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def moto_s3():
    """An S3 API (moto) on 127.0.0.1 with the bucket ``xmdpt-store``; yields the env that reaches it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=S3_BUCKET)
    try:
        yield env, client
    finally:
        server.stop()


# The embedded DAG at a size that runs on this machine's local Ray in about two minutes (params updates
# for make_project_copy): DVC-level tests of whole runs.
TINY_LOCAL_DAG = {
    "data": {"num_cpus_per_task": 0.5},
    "synth": {"identities": 4, "test_fraction": 0.5},
    "poses": {"num_actors": 1, "cpus_per_actor": 0.5},
    "autoencoder": {"train_steps": 10, "batch_size": 8},
    "features": {"num_actors": 1, "num_cpus_per_actor": 0.5, "batch_size": 8, "shard_images": 16},
    "train": {"num_workers": 1, "cpus_per_worker": 0.5, "threads_per_worker": 1, "batch_size_per_worker": 4,
              "max_steps": 6, "checkpoint_every": 3, "log_every": 1, "sample_every": 0},
    "sample": {"num_steps": 2},
    "evaluate": {"max_pairs": 2, "unguided_pairs": 0, "batch_size": 2, "num_actors": 1, "num_cpus_per_actor": 0.5,
                 "grid_rows": 2},
}


def make_project_copy(root: Path, params_update: dict, assets: bool = False) -> Path:
    """Copy the code, data specs, dvc.yaml and params.yaml (updated section by section) under ``root``
    (and ``assets/``, the pose model, for DAGs that reach the poses stage)."""
    root.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("xmdpt", "pipelines", "data_specs", *(("assets",) if assets else ())):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=ignore)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO_ROOT / ".gitignore", root / ".gitignore")  # what a clone of the project ignores (mlflow.db, data/)
    # every key written out: DVC wants each `params:` entry of dvc.yaml present in params.yaml
    from xmdpt.core.config import load_config

    params = load_config(REPO_ROOT / "params.yaml").to_dict()
    for section, values in params_update.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root
