"""A real local Ray head (dashboard + Jobs API) for the submission tests, and a throwaway project.

The head is started with ``ray start --head --block`` in its own session and temp dir, bound to
127.0.0.1, with token authentication (a random token shared with the submitter through
``RAY_AUTH_TOKEN``). Teardown signals that ``ray start`` process (which stops the processes it
started) and then ends any process left whose command line names our temp dir: never ``ray stop``,
which would stop every Ray on the machine, including the session's ``ray_local``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from local_servers import S3_CREDENTIALS, free_port, kill_all, make_project_copy, moto_s3, pids_under  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent




@dataclass
class RayHead:
    address: str  # dashboard URL, what RAY_ADDRESS is set to
    temp_dir: Path
    env: dict  # environment for submitters (token, PATH)

    def jobs(self) -> list[dict]:
        """``[{id, status, entrypoint, metadata, runtime_env}]`` from the Jobs REST API."""
        return [{"id": j["submission_id"], "status": j["status"], "entrypoint": j["entrypoint"],
                 "metadata": j.get("metadata") or {}, "runtime_env": j.get("runtime_env") or {}}
                for j in jobs_api(self.address, self.env["RAY_AUTH_TOKEN"]) if j.get("submission_id")]


@pytest.fixture(scope="session")
def ray_head():
    """``ray start --head`` on 127.0.0.1 with the dashboard; yields its address and env."""
    temp_dir = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))  # short: Unix socket paths are limited
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # the node advertises 127.0.0.1 instead of the machine's outward address
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # jobs run `python -m pipelines.<stage>`: the project's interpreter, as on a cluster image
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # the node's own S3 credentials (an instance profile on a real cluster), for the test S3
        **S3_CREDENTIALS,
    }
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
        "--num-cpus", "2", "--temp-dir", str(temp_dir),
    ]
    log = temp_dir.with_suffix(".log")
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    submitter_env = {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "PATH")}
    try:
        _wait_ready(proc, address, submitter_env, log)
        yield RayHead(address=address, temp_dir=temp_dir, env=submitter_env)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        kill_all(pids_under(str(temp_dir)))
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


def jobs_api(head_address: str, token: str, path: str = "/api/jobs/", timeout: float = 10) -> object:
    """GET a Jobs REST endpoint of the head with its token (no Ray import in this process)."""
    req = urllib.request.Request(head_address + path, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _wait_ready(proc: subprocess.Popen, address: str, env: dict, log: Path, timeout_s: float = 120) -> None:
    """Poll the Jobs API until it answers (it needs the dashboard and the head's agent)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            jobs_api(address, env["RAY_AUTH_TOKEN"], timeout=5)
            return
        except (OSError, ValueError):
            time.sleep(0.5)
    raise RuntimeError(f"Ray Jobs API at {address} not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def s3_store():
    """``(env, boto3 client)`` of an S3 API on 127.0.0.1 with the bucket ``xmdpt-store``."""
    with moto_s3() as store:
        yield store


@pytest.fixture
def make_project():
    """``make_project(root, {"data": {...}})``: a throwaway copy of the project to submit from."""
    return make_project_copy
