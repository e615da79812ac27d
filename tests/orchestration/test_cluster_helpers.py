"""The submission switch without a cluster: params for the job, declared outputs, the job dir,
and the local branch of ``stage_main``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from tiny_config import tiny_config

from pipelines.common import stage_main
from xmdpt.orchestration.cluster import ClusterJobError, download_outputs
from xmdpt.orchestration.job_env import is_loopback, job_config, resolve_address, working_dir_excludes
from xmdpt.orchestration.job_outputs import stage_outputs, upload_outputs
from xmdpt.core.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """stage_main configures the root logger once per process; undo it for the rest of the session."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configured = getattr(root, "_xmdpt_configured", None)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    if configured is None:
        root.__dict__.pop("_xmdpt_configured", None)
    else:
        root._xmdpt_configured = configured


def test_outputs_are_read_from_dvc_yaml_and_templated():
    cfg = tiny_config().replace(paths={"artifacts_dir": "out/art"})
    dvc_yaml = REPO_ROOT / "dvc.yaml"
    assert stage_outputs("synth", cfg, dvc_yaml) == ["data/synth"]
    assert stage_outputs("pairs", cfg, dvc_yaml) == ["data/store/pairs", "out/art/pairs/manifest.json"]
    assert "out/art/validate/report.json" in stage_outputs("validate", cfg, dvc_yaml)
    # a stage dvc.yaml does not know: its artifacts folder
    assert stage_outputs("adhoc", cfg, dvc_yaml) == ["out/art/adhoc"]


def test_unknown_template_variable_names_the_stage(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: x\n    outs:\n      - ${paths.nope}/m.json\n")
    with pytest.raises(ConfigError, match=r"stages\.s\.outs: \$\{paths\.nope\} is not a params key"):
        stage_outputs("s", tiny_config(), tmp_path / "dvc.yaml")


@pytest.mark.parametrize("address,expected", [
    ("http://127.0.0.1:8265", True), ("127.0.0.1:6379", True), ("http://localhost:8265", True), ("auto", True),
    ("http://10.0.3.7:8265", False), ("https://ray-head.example.internal:443", False), ("ray-head:6379", False),
])
def test_loopback_addresses(address, expected):
    assert is_loopback(address) is expected


def test_address_comes_from_env_then_config(monkeypatch):
    cfg = tiny_config().replace(cluster={"submit": True, "address": "http://cfg-head:8265"})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert resolve_address(cfg) == "http://cfg-head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://env-head:8265")
    assert resolve_address(cfg) == "http://env-head:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS"):
        resolve_address(tiny_config().replace(cluster={"submit": True}))


def test_job_config_on_a_shared_filesystem_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config().replace(cluster={"submit": True}, paths={"dataset_root": "s3://bucket/deepfashion"},
                                evaluate={"inception_weights": "models/inception.pth"})
    job = job_config(cfg, tmp_path, shared_filesystem=True)
    assert job.evaluate.inception_weights == str(tmp_path / "models/inception.pth")
    assert job.evaluate.lpips_weights == ""  # unset stays unset
    assert job.cluster.submit is False
    assert job.paths.dataset_root == "s3://bucket/deepfashion"  # URLs untouched
    assert job.paths.storage_root == str(tmp_path / "data/store")
    assert job.paths.artifacts_dir == "artifacts"  # stays relative: written in the job, sent back
    assert job.paths.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert Path(job.poses.model_path).is_absolute()


def test_job_config_without_shared_filesystem_rejects_local_storage(tmp_path):
    cfg = tiny_config().replace(cluster={"submit": True}, paths={"dataset_root": "s3://b/df"})
    with pytest.raises(ConfigError, match=r"paths\.storage_root: 'data/store' is a local path"):
        job_config(cfg, tmp_path, shared_filesystem=False)
    ok = cfg.replace(paths={"storage_root": "s3://b/store", "mlflow_tracking_uri": "http://mlflow:5000"})
    job = job_config(ok, tmp_path, shared_filesystem=False)
    assert job.paths == ok.paths and job.cluster.submit is False


def test_working_dir_excludes_data_and_the_local_stores(tmp_path):
    cfg = tiny_config().replace(paths={"dataset_root": "datasets/deepfashion", "storage_root": "s3://b/x"},
                                cluster={"excludes": ["*.ckpt"]})
    ex = working_dir_excludes(cfg, tmp_path)
    for pattern in ("/data", "/.git", "/.venv", "/mlflow.db", "/.dvc/cache", "/datasets/deepfashion", "*.ckpt"):
        assert pattern in ex
    assert not any("s3:" in e for e in ex)


def test_outputs_round_trip_through_the_job_dir(tmp_path):
    """What the job uploads replaces the submitter's copy (a stale file does not survive)."""
    cfg = tiny_config()
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    outs:\n      - ${paths.artifacts_dir}/s/manifest.json\n"
        "      - data/s_dir\n      - data/store/s\n    metrics:\n      - ${paths.artifacts_dir}/s/metrics.json\n"
        "      - s3://bucket/elsewhere.json\n")
    job_side, local_side = tmp_path / "job", tmp_path / "local"
    (job_side / "artifacts/s").mkdir(parents=True)
    (job_side / "artifacts/s/manifest.json").write_text('{"rows": 3}')
    (job_side / "data/s_dir/sub").mkdir(parents=True)
    (job_side / "data/s_dir/sub/a.txt").write_text("a")
    (local_side / "data/s_dir").mkdir(parents=True)
    (local_side / "data/s_dir/stale.txt").write_text("old")
    for side in (job_side, local_side):  # the store folder: the job's is not brought back over the submitter's
        (side / "data/store/s").mkdir(parents=True)
        (side / "data/store/s/run.txt").write_text(side.name)
    job_dir = str(tmp_path / "store/_jobs/j1")

    record = upload_outputs("s", cfg, job_dir, root=job_side, dvc_yaml=tmp_path / "dvc.yaml")
    assert [(r["path"], r["kind"]) for r in record] == [
        ("artifacts/s/manifest.json", "file"), ("data/s_dir", "dir"), ("data/store/s", "shared"),
        ("artifacts/s/metrics.json", "missing"), ("s3://bucket/elsewhere.json", "shared")]
    assert json.loads(Path(job_dir, "outputs.json").read_text())["outputs"] == record

    brought = download_outputs(job_dir, root=local_side)
    assert brought == ["artifacts/s/manifest.json", "data/s_dir"]
    assert (local_side / "artifacts/s/manifest.json").read_text() == '{"rows": 3}'
    assert (local_side / "data/s_dir/sub/a.txt").read_text() == "a"
    assert not (local_side / "data/s_dir/stale.txt").exists()
    assert (local_side / "data/store/s/run.txt").read_text() == "local"


def test_download_without_listing_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterJobError, match=r"outputs\.json: not found"):
        download_outputs(str(tmp_path / "nojob"), root=tmp_path)


def _params(tmp_path: Path, **cluster) -> Path:
    d = tiny_config().to_dict()
    d["cluster"].update(cluster)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_stage_main_runs_here_and_uploads_for_a_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a stage_main of an earlier test in this process may have configured (and another one re-levelled) the root
    monkeypatch.setattr(logging.getLogger(), "_xmdpt_configured", False, raising=False)
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    params = _params(tmp_path)
    seen = []

    def run(cfg):
        seen.append(cfg)
        out = Path(cfg.paths.artifacts_dir) / "adhoc"
        out.mkdir(parents=True)
        (out / "manifest.json").write_text("{}")
        return "done"

    assert stage_main("adhoc", run, ["--params", str(params), "--job-dir", str(tmp_path / "jd")]) == "done"
    assert seen[0] == load_config(params)
    listing = json.loads((tmp_path / "jd" / "outputs.json").read_text())
    assert listing["outputs"] == [{"path": "artifacts/adhoc", "kind": "dir", "files": ["artifacts/adhoc/manifest.json"],
                                   "bytes": 2}]
    assert (tmp_path / "jd/outputs/artifacts/adhoc/manifest.json").read_text() == "{}"
    root = logging.getLogger()
    assert root._xmdpt_configured and root.level == logging.INFO  # configured once, by stage_main


def test_stage_main_with_submit_but_no_cluster_fails_before_running(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("XMDPT_NO_SUBMIT", raising=False)
    params = _params(tmp_path, submit=True)
    ran = []
    with pytest.raises(SystemExit) as e:
        stage_main("adhoc", ran.append, ["--params", str(params)])
    assert e.value.code == 1 and not ran
    assert "neither $RAY_ADDRESS nor cluster.address is set" in caplog.text
    # inside a job (flag or env) the switch is off: the stage runs here
    stage_main("adhoc", ran.append, ["--params", str(params), "--no-submit"])
    monkeypatch.setenv("XMDPT_NO_SUBMIT", "1")
    stage_main("adhoc", ran.append, ["--params", str(params)])
    assert len(ran) == 2 and all(cfg.cluster.submit for cfg in ran)


def test_stage_main_bad_params_exits_with_the_key(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("cluster:\n  sumbit: true\n")
    with pytest.raises(SystemExit) as e:
        stage_main("adhoc", lambda cfg: None, [])
    assert e.value.code == 2 and "cluster.sumbit: unknown key" in caplog.text


def test_unreachable_cluster_fails_the_stage_with_the_address(tmp_path, monkeypatch, caplog):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("XMDPT_NO_SUBMIT", raising=False)
    params = _params(tmp_path, submit=True)
    with pytest.raises(SystemExit) as e:
        stage_main("adhoc", lambda cfg: None, ["--params", str(params)])
    assert e.value.code == 1
    assert f"stage 'adhoc': cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in caplog.text
    assert not (tmp_path / "data").exists()  # nothing written before the cluster answered


def test_only_the_autoencoder_driver_asks_for_its_own_gpus():
    from xmdpt.orchestration.job_env import entrypoint_resources

    cfg = tiny_config().replace(cluster={"entrypoint_num_cpus": 1.0, "autoencoder_num_gpus": 1.0})
    assert entrypoint_resources(cfg, "autoencoder") == {"entrypoint_num_cpus": 1.0, "entrypoint_num_gpus": 1.0}
    assert entrypoint_resources(cfg, "features") == {"entrypoint_num_cpus": 1.0, "entrypoint_num_gpus": None}
    assert entrypoint_resources(tiny_config(), "autoencoder") == {"entrypoint_num_cpus": None, "entrypoint_num_gpus": None}
    profile = load_config(Path(__file__).resolve().parents[2] / "params" / "deepfashion.yaml")
    assert entrypoint_resources(profile, "autoencoder")["entrypoint_num_gpus"] == 1.0
