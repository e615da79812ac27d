"""Shared test setup: offline, loopback-only, small.

- No network: HF hub offline, MLflow/DVC telemetry off, Ray usage stats off (set before imports).
- Ray: one local instance per session (``ray_local`` fixture), bound to 127.0.0.1, with logical
  CPUs above the core count so actor pools and train workers never deadlock on 2 cores.
- The stage fixtures (``tests/stage_fixtures.py``: DeepFashion trees, a local S3, an MLflow server,
  a tiny pipeline folder) are a plugin, so that every folder's tests can use them.

The folders under ``tests/`` follow the packages of ``xmdpt/`` (docs/architecture.md); ``reliability/``
holds the DAG-level tests (DVC, failures, hand-offs) and ``docs/`` the README's commands.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["stage_fixtures"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# botocore looks for credentials at the cloud-metadata address when none are configured: never from tests
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

# Ray's dashboard probes the cloud-metadata address unless this file exists.
_bootstrap = Path.home() / "ray_bootstrap_config.yaml"
if not _bootstrap.exists():
    _bootstrap.write_text("provider: {type: local}\n")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The MediaPipe PoseLandmarker bundle shipped in the repo (assets/models/README.md); XMDPT_POSE_TASK overrides.
POSE_TASK = Path(os.environ.get("XMDPT_POSE_TASK", REPO_ROOT / "assets" / "models" / "pose_landmarker_full.task"))


@pytest.fixture(scope="session")
def pose_task_path() -> Path:
    if not POSE_TASK.is_file():
        pytest.skip(f"pose model not found at {POSE_TASK} (set XMDPT_POSE_TASK)")
    return POSE_TASK


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance shared by the whole session (8 logical CPUs on any machine)."""
    import ray

    from xmdpt.core.ray_utils import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=8)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """A test that starts Ray takes seconds: ``ray`` implies ``slow`` (``make test-fast`` leaves both out)."""
    for item in items:
        if item.get_closest_marker("ray") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
