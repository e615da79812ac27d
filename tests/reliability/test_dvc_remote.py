"""A DVC S3 remote, end to end: `dvc add` -> `dvc push` to S3 -> the cache and the file are lost ->
`dvc pull` brings back the same bytes. S3 is a moto server on 127.0.0.1 (the `endpointurl` setting
of docs/cluster.md); DVC runs as the real CLI in a throwaway git + DVC repository."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the DVC CLI and a local S3

VENV_BIN = Path(sys.executable).parent
BUCKET = "xmdpt-dvc-test"


@pytest.fixture
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.mark.timeout(150)
def test_dvc_push_then_pull_through_an_s3_remote(tmp_path, s3_endpoint):
    import boto3

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(DVC_NO_ANALYTICS="1", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)

    repo = tmp_path / "repo"
    repo.mkdir()

    def run(*cmd: str) -> str:
        r = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        return r.stdout

    dvc = str(VENV_BIN / "dvc")
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    payload = os.urandom(200_000) + b"xmdpt"
    data = repo / "data" / "sample.bin"
    data.parent.mkdir()
    data.write_bytes(payload)
    run(dvc, "add", "-q", "data/sample.bin")
    # the commands docs/cluster.md gives (endpointurl only for an S3-compatible store)
    run(dvc, "remote", "add", "-d", "storage", f"s3://{BUCKET}/cache")
    run(dvc, "remote", "modify", "storage", "endpointurl", s3_endpoint)
    run(dvc, "push", "-q")

    md5 = hashlib.md5(payload).hexdigest()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert f"cache/files/md5/{md5[:2]}/{md5[2:]}" in keys

    shutil.rmtree(repo / ".dvc" / "cache")
    data.unlink()
    run(dvc, "pull", "-q")
    assert data.read_bytes() == payload
