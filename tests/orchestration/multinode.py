"""A Ray cluster of several nodes on this machine: one ``ray start --head`` and ``ray start --address``
worker nodes, each its own process group, temp dir and scratch dir (``TMPDIR``), all on 127.0.0.1.

The head has no CPUs (as on a real cluster, where the head only coordinates): every task, actor and
Train worker lands on a worker node. Each worker node carries a custom resource named after it
(``{"node_w1": 1}``) so that the test can tell node ids apart. Nodes are removed the way machines
disappear: SIGKILL of the node's whole process group (raylet, object store, workers); the head
notices through its health checks (shortened here to a few seconds).

Teardown signals each ``ray start --block`` and then kills any process left whose command line or
working directory names the cluster's temp dirs; ``ray stop`` is never called (it would stop every
Ray on the machine).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from local_servers import free_port, kill_all, pids_under

VENV_BIN = Path(sys.executable).parent

# the head declares a node dead after ~3 missed 1 s health checks (default: 5 x 3 s plus timeouts)
_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}


def _ports() -> list[str]:
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    scratch: Path  # the node's TMPDIR: its "local disk"
    log: Path
    node_id: Optional[str] = None


@dataclass
class LocalRayCluster:
    root: Path
    env: dict  # environment of every node (token, credentials, PATH)
    gcs_address: str = ""  # 127.0.0.1:port, what drivers join with RAY_ADDRESS
    dashboard: str = ""  # http://127.0.0.1:port, the Jobs API
    head: Optional[Node] = None
    workers: dict = field(default_factory=dict)
    _gone: list = field(default_factory=list)

    # ---- start / stop ---------------------------------------------------------------------------

    @classmethod
    def start(cls, workers: int = 2, cpus_per_worker: float = 2, env: Optional[dict] = None) -> "LocalRayCluster":
        root = Path(tempfile.mkdtemp(prefix="xmn", dir="/tmp"))  # short: Unix socket paths are limited
        token = secrets.token_hex(32)
        base = {
            **os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            base.pop(k, None)
        cluster = cls(root=root, env=base)
        port, dash = free_port(), free_port()
        cluster.gcs_address, cluster.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        cluster.head = cluster._launch("head", [
            "--head", "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
            "--include-dashboard", "true", "--num-cpus", "0"], extra_env=_HEALTH)
        try:
            cluster._wait(lambda: cluster._jobs_ready(), f"the Jobs API at {cluster.dashboard}", cluster.head)
            cluster.head.node_id = cluster._wait_node("head")
            for i in range(workers):
                cluster.add_worker(f"w{i + 1}", num_cpus=cpus_per_worker)
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    def add_worker(self, name: str, num_cpus: float = 2) -> Node:
        """Start worker node ``name`` and wait until the head lists it alive."""
        node = self._launch(name, ["--address", self.gcs_address, "--num-cpus", str(num_cpus),
                                   "--resources", json.dumps({f"node_{name}": 1})])
        self.workers[name] = node
        node.node_id = self._wait_node(name)
        return node

    def kill_worker(self, name: str) -> Node:
        """SIGKILL the node's process group (a machine gone), then wait until the head marks it dead."""
        node = self.workers.pop(name)
        os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)
        kill_all(pids_under(str(node.temp_dir)))  # workers outside the group (setsid) go too
        self._gone.append(node)
        self._wait(lambda: self.node_states().get(node.node_id) == "DEAD", f"node {name} marked dead", None,
                   timeout_s=60)
        return node

    def shutdown(self) -> None:
        nodes = [*self.workers.values(), *self._gone, *([self.head] if self.head else [])]
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
        kill_all(pids_under(str(self.root)))
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- what the head knows ---------------------------------------------------------------------

    def api(self, path: str, timeout: float = 10) -> object:
        req = urllib.request.Request(self.dashboard + path, headers={"authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        """``[{node_id, state, resources_total, ...}]`` from the state API."""
        return self.api("/api/v0/nodes?limit=1000&detail=true")["data"]["result"]["result"]

    def node_states(self) -> dict[str, str]:
        return {n["node_id"]: n["state"] for n in self.nodes()}

    def node_names(self) -> dict[str, str]:
        """node id -> node name (``head``, ``w1``, ...), dead nodes included."""
        return {n.node_id: name for name, n in [("head", self.head), *self.workers.items(),
                                                 *((n.name, n) for n in self._gone)] if n and n.node_id}

    def jobs(self) -> list[dict]:
        return [j for j in self.api("/api/jobs/") if j.get("submission_id")]

    def driver_env(self, **extra: str) -> dict:
        """Environment of a driver process that joins the cluster (``RAY_ADDRESS`` = the GCS)."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address, **extra}

    def submitter_env(self, **extra: str) -> dict:
        """Environment of a ``cluster.submit`` submitter (``RAY_ADDRESS`` = the Jobs API)."""
        return {**self.env, "RAY_ADDRESS": self.dashboard, **extra}

    # ---- internals --------------------------------------------------------------------------------

    def _launch(self, name: str, args: list[str], extra_env: Optional[dict] = None) -> Node:
        temp_dir = self.root / name
        scratch = self.root / f"{name}-scratch"
        scratch.mkdir(parents=True)
        log = self.root / f"{name}.log"
        env = {**self.env, **(extra_env or {}), "TMPDIR": str(scratch)}
        cmd = [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
               "--temp-dir", str(temp_dir), "--object-store-memory", str(200 * 1024 ** 2),
               "--min-worker-port", "0", "--max-worker-port", "0", *_ports(), *args]
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=scratch)
        return Node(name=name, proc=proc, temp_dir=temp_dir, scratch=scratch, log=log)

    def _jobs_ready(self) -> bool:
        try:
            self.api("/api/jobs/", timeout=5)
            return True
        except (OSError, ValueError):
            return False

    def _wait_node(self, name: str) -> str:
        """Node id of the alive node started as ``name`` (the head: the one without CPUs)."""
        def find() -> Optional[str]:
            try:
                nodes = self.nodes()
            except (OSError, ValueError, KeyError):
                return None
            for n in nodes:
                res = n.get("resources_total") or {}
                if n["state"] == "ALIVE" and ((name == "head" and n.get("is_head_node")) or f"node_{name}" in res):
                    return n["node_id"]
            return None

        node = self.head if name == "head" else self.workers[name]
        return self._wait(find, f"node {name} alive", node)

    def _wait(self, probe, what: str, node: Optional[Node], timeout_s: float = 120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node is not None and node.proc.poll() is not None:
                raise RuntimeError(f"ray start ({node.name}) exited with {node.proc.returncode}:\n"
                                   f"{node.log.read_text()[-3000:]}")
            value = probe()
            if value:
                return value
            time.sleep(0.5)
        tail = node.log.read_text()[-3000:] if node is not None else ""
        raise RuntimeError(f"timed out waiting for {what} after {timeout_s:.0f} s\n{tail}")
