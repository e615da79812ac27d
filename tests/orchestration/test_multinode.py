"""Scale-out on a Ray cluster of three nodes on this machine that share nothing but object storage.

The cluster (``multinode.LocalRayCluster``): a head without CPUs (Jobs API, the drivers) and two
worker nodes with 2 logical CPUs each, every node with its own Ray temp dir and its own scratch dir
(``TMPDIR``). Stage data lives only on S3 (moto on 127.0.0.1): ``paths.dataset_root`` and
``paths.storage_root`` are ``s3://`` URLs and ``cluster.shared_filesystem`` is false, so no stage
can read a file another node wrote locally — the test also checks that no local path of the
submitting project appears in any manifest or job params. Runs, metrics and the registry go to a
real ``mlflow server`` on 127.0.0.1.

1. ``dvc repro`` of the whole embedded DAG (tiny settings) with ``cluster.submit: true``: every
   stage is a Ray job; the DVC outputs come back; the feature actors ran on both worker nodes; the
   two DDP workers ran on two different nodes with their checkpoints on S3.
2. Node loss: a worker node is SIGKILLed after the first registered checkpoint of a 2-worker
   training run, a replacement node joins, and ``FailureConfig(max_failures)`` restarts the worker
   group from the latest checkpoint on S3; steps in ``loss.csv`` and in MLflow are continuous with no
   duplicates; the final weights equal a run started from that same checkpoint without any failure
   (``train.init_from``) to the tolerance stated in the test.
3. The run handed to a teammate (the team setup of docs/team.md: the s3:// store, an S3 DVC remote,
   the shared MLflow server; ``tests/handoff.py``): A commits and pushes, A's folder is moved away,
   B clones and pulls: ``dvc status`` clean, ``dvc repro`` runs nothing, A's metrics and manifests,
   A's pixels from A's pipeline folder and from ``models:/xmdpt@champion``; ``dvc exp run -S
   train.max_steps=3`` on B runs config, train, evaluate and register only (as cluster jobs),
   reusing A's features from the shared store.
4. Clear errors: a local ``storage_root`` on this cluster, and a Train request larger than the
   cluster, fail in seconds naming the setting.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import handoff
from local_servers import S3_BUCKET, LocalServer, free_port, make_project_copy, mlflow_server_cmd, moto_s3
from multinode import LocalRayCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
DATASET = f"s3://{S3_BUCKET}/mn/dataset"
STORE = f"s3://{S3_BUCKET}/mn/store"
DAG_STAGES = ("synth", "pairs", "poses", "validate", "autoencoder", "features", "train", "evaluate", "register")

# The embedded DAG at a size that runs in minutes on 2 cores shared by three nodes.
TINY = {
    "data": {"num_cpus_per_task": 0.5},
    "synth": {"identities": 6, "test_fraction": 0.34},
    "autoencoder": {"train_steps": 30, "batch_size": 8},
    "features": {"num_actors": 2, "num_cpus_per_actor": 1.0, "batch_size": 8, "shard_images": 16},
    "train": {"num_workers": 2, "cpus_per_worker": 1.0, "threads_per_worker": 1, "batch_size_per_worker": 4,
              "max_steps": 6, "checkpoint_every": 3, "log_every": 1, "sample_every": 0, "keep_checkpoints": 10,
              "placement_strategy": "SPREAD", "max_failures": 2},
    "sample": {"num_steps": 4},
    "evaluate": {"max_pairs": 4, "unguided_pairs": 2, "batch_size": 2, "num_actors": 2, "num_cpus_per_actor": 0.5,
                 "grid_rows": 2},
    "cluster": {"submit": True, "shared_filesystem": False, "timeout_s": 600.0},
}


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as store:
        yield store


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-mn")
    port = free_port()
    server = LocalServer(mlflow_server_cmd(VENV_BIN, root, port), root / "server.log", port, "/health")
    try:
        yield server.wait()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(s3, mlflow_url):
    s3_env, _ = s3
    # the nodes' own S3 credentials and endpoint (an instance profile and a VPC endpoint on a real cluster)
    c = LocalRayCluster.start(workers=2, cpus_per_worker=2, env={**s3_env, "TQDM_DISABLE": "1"})
    try:
        yield c
    finally:
        c.shutdown()


def _submitter_env(cluster, s3_env: dict) -> dict:
    """A ``cluster.submit`` shell on this project: the Jobs API, S3 credentials, a git identity."""
    return cluster.submitter_env(**s3_env, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                                 GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")


@pytest.fixture(scope="module")
def dag(cluster, s3, mlflow_url, tmp_path_factory):
    """The whole DAG submitted stage by stage with ``dvc repro``; yields ``(project, dvc output, wall s)``."""
    s3_env, _ = s3
    proj = make_project_copy(tmp_path_factory.mktemp("mn") / "proj",
                         {**TINY, "paths": {"dataset_root": DATASET, "storage_root": STORE,
                                            "mlflow_tracking_uri": mlflow_url}}, assets=True)
    env = _submitter_env(cluster, s3_env)
    for cmd in (["git", "init", "-q"], [str(VENV_BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True, timeout=60)
    t0 = time.monotonic()
    r = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=proj, env=env, capture_output=True, text=True,
                       timeout=1200)
    wall = time.monotonic() - t0
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    status = subprocess.run([str(VENV_BIN / "dvc"), "status"], cwd=proj, env=env, capture_output=True, text=True,
                            timeout=120)
    yield proj, r.stdout + r.stderr, wall, status.stdout


def _manifest(proj: Path, stage: str) -> dict:
    return json.loads((proj / "artifacts" / stage / "manifest.json").read_text())


def _local_paths_in(text: str, proj: Path) -> list[str]:
    return [marker for marker in (str(proj), "/tmp/") if marker in text]


@pytest.mark.timeout(1500)
def test_the_dag_runs_on_three_nodes_through_the_jobs_api(cluster, dag, s3, mlflow_url):
    proj, log, wall, status = dag
    _, client = s3
    jobs = {j["metadata"].get("xmdpt_stage"): j for j in cluster.jobs()}
    assert {s: jobs.get(s, {}).get("status") for s in DAG_STAGES} == {s: "SUCCEEDED" for s in DAG_STAGES}
    assert "Data and pipelines are up to date" in status  # DVC recorded every output that came back
    for stage in ("pairs", "poses", "validate", "autoencoder", "features", "train", "evaluate"):
        assert (proj / "artifacts" / stage / "manifest.json").is_file(), stage
    assert json.loads((proj / "artifacts" / "register" / "registered.json").read_text())["version"]

    # stage data only on S3: every URI of every manifest, and nothing of the submitter's disk in them
    # or in the params the jobs ran with
    for stage in ("pairs", "poses", "validate", "features", "train"):
        m = _manifest(proj, stage)
        assert m["uri"].startswith(STORE), (stage, m["uri"])
        text = json.dumps(m)
        assert not _local_paths_in(text, proj), (stage, _local_paths_in(text, proj))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=S3_BUCKET, Prefix="mn/store/_jobs/")["Contents"]]
    params = [k for k in keys if k.endswith("/params.yaml")]
    assert len(params) == len(jobs)
    for key in params:
        text = client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read().decode()
        assert "shared_filesystem: false" in text and str(proj) not in text, key
    assert client.list_objects_v2(Bucket=S3_BUCKET, Prefix="mn/dataset/img/")["KeyCount"] > 0  # synth published

    # the feature actor pool encoded on both worker nodes, and its counts add up
    names = cluster.node_names()
    feats = _manifest(proj, "features")
    by_node = {names[n]: rows for n, rows in feats["rows_by_node"].items()}
    assert set(by_node) == {"w1", "w2"}, by_node
    assert sum(by_node.values()) == feats["tables"]["features"]["rows"] + 2 * feats["images"]["quarantined"]

    # the two DDP workers on two different nodes; checkpoints on S3
    train = _manifest(proj, "train")
    placed = {w["rank"]: names[w["node_id"]] for w in train["worker_starts"]}
    assert sorted(placed) == [0, 1] and placed[0] != placed[1] and set(placed.values()) == {"w1", "w2"}
    run_key = train["uri"].removeprefix(f"s3://{S3_BUCKET}/")
    ckpts = {k.split("/")[-2] for k in (o["Key"] for o in client.list_objects_v2(
        Bucket=S3_BUCKET, Prefix=run_key + "/")["Contents"]) if "/checkpoint_step" in k}
    assert ckpts == {"checkpoint_step00000003", "checkpoint_step00000006"}
    assert train["model_uri"].startswith(STORE)
    took = {s: round((jobs[s]["end_time"] - jobs[s]["start_time"]) / 1000, 1) for s in DAG_STAGES}
    print(f"\nDAG on 3 nodes: {wall:.0f} s (job seconds {took}); features rows by node {by_node}; "
          f"DDP ranks by node {placed}")


@pytest.mark.timeout(1200)
def test_a_teammate_clones_and_pulls_the_cluster_run(cluster, dag, s3, mlflow_url, tmp_path):
    proj, *_ = dag
    s3_env, _ = s3
    root = tmp_path
    shell = handoff.env(**s3_env, MLFLOW_TRACKING_URI=mlflow_url)  # a teammate's shell: no Ray address
    jobs_env = _submitter_env(cluster, s3_env)
    handoff.dvc(proj, shell, "remote", "add", "-d", "storage", f"s3://{S3_BUCKET}/mn/dvc")
    handoff.dvc(proj, shell, "remote", "modify", "storage", "endpointurl", s3_env["AWS_ENDPOINT_URL"])
    seen = handoff.publish(proj, root, shell)
    assert json.loads(seen["manifests"]["features"])["uri"].startswith(STORE)
    pixels = handoff.generate(root, shell, seen["pipeline"], root / "a.png")

    with handoff.moved_away(proj):  # nothing of A's folder is readable while B works
        b = handoff.clone_and_pull(root, shell, seen)
        assert np.array_equal(handoff.generate(b, shell, seen["pipeline"], root / "b.png"), pixels)
        assert np.array_equal(handoff.generate(b, shell, "models:/xmdpt@champion", root / "b-reg.png"), pixels)
        handoff.exp_run_reuses_upstream(b, {**jobs_env, "PATH": shell["PATH"]}, seen, mlflow_url,
                                        a_run_in_store=True)


def _run_train(proj: Path, cluster, s3_env: dict, params: dict, name: str) -> subprocess.Popen:
    (proj / f"{name}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = (proj / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "pipelines.train", "--params", f"{name}.yaml"], cwd=proj,
                            env=cluster.driver_env(**s3_env), stdout=log, stderr=subprocess.STDOUT)


def _params(proj: Path, **sections) -> dict:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    return params


def _s3_json(client, key: str):
    try:
        return json.loads(client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


def _s3_text(client, key: str) -> str:
    try:
        return client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read().decode()
    except client.exceptions.NoSuchKey:
        return ""


@pytest.mark.timeout(1200)
def test_a_lost_node_resumes_training_from_the_checkpoint_on_s3(cluster, dag, s3, mlflow_url):
    import numpy as np
    from safetensors.numpy import load as load_safetensors

    from xmdpt.core import tracking

    proj, *_ = dag
    s3_env, client = s3
    runs = "mn/store/train/runs/"
    before = {o["Key"][len(runs):].split("/")[0]
              for o in client.list_objects_v2(Bucket=S3_BUCKET, Prefix=runs).get("Contents", [])}  # the DAG's run
    # a fresh run (another seed) of 12 steps, checkpoints every 3, logging every step; 1.5 CPUs per
    # worker on nodes of 2: one worker per node, so the restarted group needs the replacement node
    run = {"seed": 1, "max_steps": 12, "checkpoint_every": 3, "cpus_per_worker": 1.5}
    params = _params(proj, cluster={"submit": False}, train=run)  # the DAG's storage: its training table
    killed: dict = {}

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            listing = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=runs).get("Contents", [])
            run_dirs = {o["Key"][len(runs):].split("/")[0] for o in listing} - before
            for run in run_dirs:
                snapshot = _s3_text(client, f"{runs}{run}/checkpoint_manager_snapshot.json")
                worker = _s3_json(client, f"{runs}{run}/workers/rank_1.pid.json")
                if "checkpoint_step" in snapshot and worker:
                    name = cluster.node_names()[worker["node_id"]]
                    t0 = time.monotonic()
                    cluster.kill_worker(name)
                    killed.update(node=name, run=run, dead_after_s=time.monotonic() - t0)
                    cluster.add_worker("w3", num_cpus=2)  # the replacement machine
                    killed["replaced_after_s"] = time.monotonic() - t0
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    t0 = time.monotonic()
    proc = _run_train(proj, cluster, s3_env, params, "nodeloss")
    watcher.start()
    rc = proc.wait(timeout=900)
    wall = time.monotonic() - t0
    watcher.join(timeout=120)
    log = (proj / "nodeloss.log").read_text()
    assert rc == 0, log[-6000:]
    assert killed.get("node") in ("w1", "w2"), ("no node was removed", log[-3000:])

    train = _manifest(proj, "train")
    assert train["steps"] == 12 and train["uri"].endswith(killed["run"])
    resumed_from = train["start_step"]
    assert resumed_from in (3, 6, 9), resumed_from  # a checkpoint, not step 0
    names = cluster.node_names()
    starts = [(w["rank"], names[w["node_id"]]) for w in train["worker_starts"]]
    assert len(starts) >= 4, starts  # two workers, started again after the loss
    first, second = starts[:2], starts[-2:]
    assert killed["node"] in {n for _, n in first} and killed["node"] not in {n for _, n in second}
    assert {n for _, n in second} == {"w1", "w2", "w3"} - {killed["node"]}  # the replacement took part

    # one history: loss.csv and MLflow hold steps 1..12 once each
    rows = list(csv.DictReader((proj / "artifacts" / "train" / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    logged = [s for s, _ in tracking.metric_history(mlflow_url, train["run_id"], "loss")]
    assert logged == list(range(1, 13)), logged

    # the same run started from that checkpoint, with no failure: same weights
    ckpt = f"{train['uri']}/checkpoint_step{resumed_from:08d}"
    ref_params = _params(proj, cluster={"submit": False}, train={**run, "init_from": ckpt})  # another run name
    ref_proc = _run_train(proj, cluster, s3_env, ref_params, "reference")
    assert ref_proc.wait(timeout=600) == 0, (proj / "reference.log").read_text()[-4000:]
    ref = _manifest(proj, "train")
    assert ref["start_step"] == resumed_from and ref["steps"] == 12

    def weights(model_uri: str) -> dict:
        key = model_uri.removeprefix(f"s3://{S3_BUCKET}/") + "/model.safetensors"
        return load_safetensors(client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())

    a, b = weights(train["model_uri"]), weights(ref["model_uri"])
    assert a.keys() == b.keys()
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    scale = max(float(np.max(np.abs(a[k]))) for k in a)
    ref_rows = list(csv.DictReader((proj / "artifacts" / "train" / "loss.csv").open()))
    loss_gap = max(abs(float(x["loss"]) - float(y["loss"])) for x, y in zip(rows[resumed_from:], ref_rows[resumed_from:]))
    print(f"\nnode loss: {killed}; resumed from step {resumed_from}; wall {wall:.0f} s; "
          f"max |w - w_ref| = {diff:.3g} (max |w| = {scale:.3g}); max loss gap {loss_gap:.3g}")
    # Tolerance: the resumed and the reference run see the same batches (Ray Data splits the
    # materialised table over the two workers) and draw the same noise (seeded from seed, rank and
    # the start step); what is left is the float order of gloo's all-reduce.
    assert diff <= 1e-4 * max(scale, 1.0), diff


@pytest.mark.timeout(300)
def test_a_local_storage_root_and_an_oversized_request_are_refused_in_seconds(cluster, dag, s3):
    proj, *_ = dag
    s3_env, _ = s3
    local = _params(proj, paths={"storage_root": "data/store"}, cluster={"submit": False})
    t0 = time.monotonic()
    proc = _run_train(proj, cluster, s3_env, local, "local_store")
    assert proc.wait(timeout=120) != 0
    log = (proj / "local_store.log").read_text()
    assert "paths.storage_root: 'data/store' is a local path, but this Ray cluster has 3 nodes" in log, log[-3000:]
    local_s = time.monotonic() - t0

    big = _params(proj, cluster={"submit": False}, train={"num_workers": 3, "cpus_per_worker": 3.0})
    t0 = time.monotonic()
    proc = _run_train(proj, cluster, s3_env, big, "too_big")
    assert proc.wait(timeout=120) != 0
    log = (proj / "too_big.log").read_text()
    assert "train.num_workers=3 x (train.cpus_per_worker=3): 3 x {'CPU': 3.0}" in log, log[-3000:]
    assert "cannot be placed on this Ray cluster: it has 4 CPU over 3 node(s)" in log, log[-3000:]
    print(f"\nrefused: local storage_root in {local_s:.1f} s, 3 x 3 CPUs in {time.monotonic() - t0:.1f} s")
