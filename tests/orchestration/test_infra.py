"""``infra/``: every YAML parses; the `ray up` file passes Ray's own config preparation and schema;
KubeRay manifests use ray.io/v1 field names; the RayJob runs real stage entry points with flags they
accept; MLflow is started with options the installed ``mlflow server`` accepts."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
STAGES = ("synth", "pairs", "poses", "validate", "autoencoder", "features", "train", "evaluate", "register")

# Field names of the KubeRay v1 CRDs (ray.io/v1, KubeRay 1.1 - 1.7) at the levels our manifests use.
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
                   "upgradeStrategy"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
                "template", "scaleStrategy", "numOfHosts", "suspend", "resources", "labels"}
AUTOSCALER = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
              "version", "env", "envFrom", "volumeMounts"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
               "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_infra_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "ray/cluster-aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "mlflow/docker-compose.yaml",
        "mlflow/k8s.yaml"}
    for f in files:
        docs = _docs(f)
        assert docs and all(isinstance(d, dict) for d in docs), f


def test_ray_up_config_passes_rays_preparation_and_schema():
    import jsonschema
    import ray
    from ray.autoscaler._private.commands import prepare_config

    raw = yaml.safe_load((INFRA / "ray/cluster-aws.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    cfg = prepare_config(raw)  # fills provider defaults and validates again, offline
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert gpu and all(v["node_config"]["InstanceType"].startswith(("g5.", "p4d.", "p5.")) for v in gpu.values())
    assert all(0 <= v["min_workers"] <= v["max_workers"] <= cfg["max_workers"] for v in gpu.values())
    assert cfg["docker"]["image"] and "ray start --head" in " ".join(cfg["head_start_ray_commands"])


def _check_fields(obj: dict, allowed: set, where: str) -> None:
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: not ray.io/v1 fields: {sorted(unknown)}"


def _check_cluster_spec(spec: dict, where: str) -> None:
    import ray

    _check_fields(spec, RAYCLUSTER_SPEC, where)
    assert spec["rayVersion"] == ray.__version__
    if "autoscalerOptions" in spec:
        _check_fields(spec["autoscalerOptions"], AUTOSCALER, f"{where}.autoscalerOptions")
    head = spec["headGroupSpec"]
    _check_fields(head, HEAD_GROUP, f"{where}.headGroupSpec")
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    for i, group in enumerate(spec["workerGroupSpecs"]):
        _check_fields(group, WORKER_GROUP, f"{where}.workerGroupSpecs[{i}]")
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        images |= {c["image"] for c in containers}
        assert any("nvidia.com/gpu" in c["resources"]["limits"] for c in containers)
    assert len(images) == 1, f"{where}: head and workers must run the same image, got {images}"


def test_kuberay_raycluster_uses_v1_fields():
    [rc] = _docs(INFRA / "kuberay/raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(rc["spec"], "RayCluster.spec")


def test_kuberay_rayjob_runs_real_stage_entry_points():
    from pipelines.common import parse_args
    from xmdpt.core.config import load_config

    [job] = _docs(INFRA / "kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    _check_fields(spec, RAYJOB_SPEC, "RayJob.spec")
    _check_cluster_spec(spec["rayClusterSpec"], "RayJob.spec.rayClusterSpec")
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["XMDPT_NO_SUBMIT"] == "1" and "/data" in runtime_env["excludes"]

    commands = [shlex.split(c) for c in re.split(r"\s*&&\s*", spec["entrypoint"].strip())]
    stages = []
    for argv in commands:
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("pipelines."), argv
        stage = argv[2].removeprefix("pipelines.")
        assert stage in STAGES, stage
        assert (REPO_ROOT / "pipelines" / f"{stage}.py").is_file(), f"pipelines/{stage}.py does not exist"
        args = parse_args(stage, argv[3:])  # the flags stage_main accepts
        assert args.no_submit and args.job_dir.startswith("s3://")
        load_config(REPO_ROOT / args.params)
        stages.append(stage)
    # in DAG order, the whole DAG after the data source
    assert stages == [s for s in STAGES if s != "synth"]


def _mlflow_server_args(command: str) -> list[str]:
    """The ``mlflow server`` arguments, after compose-style ``${VAR}`` / ``${VAR:?msg}`` substitution."""
    tail = command.split("mlflow server", 1)[1]
    return shlex.split(re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: f"<{m.group(1)}>", tail))


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_mlflow_server_options_are_accepted_by_mlflow(where):
    from mlflow.cli import server

    if where == "compose":
        compose = yaml.safe_load((INFRA / "mlflow/docker-compose.yaml").read_text())
        assert {"postgres", "mlflow"} <= set(compose["services"])
        assert compose["services"]["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
        command = " ".join(compose["services"]["mlflow"]["command"])
    else:
        docs = {d["kind"]: d for d in _docs(INFRA / "mlflow/k8s.yaml")}
        assert {"Deployment", "Service", "ServiceAccount"} <= set(docs)
        [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
        assert docs["Service"]["spec"]["ports"][0]["port"] == 5000
        command = " ".join(container["args"])
    args = _mlflow_server_args(command)
    ctx = server.make_context("server", list(args))  # parses (and rejects unknown options) without starting
    assert ctx.params["backend_store_uri"].startswith(("postgresql://", "$MLFLOW_BACKEND_STORE_URI"))
    assert "--allowed-hosts" in args and "--host" in args
    assert ctx.params["artifacts_destination"].startswith("s3://")
    assert ctx.params["serve_artifacts"] is True


def test_dvc_remote_example_is_an_s3_remote():
    parser = configparser.ConfigParser()
    parser.read_string("\n".join(line.strip() for line in (INFRA / "dvc/config.example").read_text().splitlines()
                                 if not line.lstrip().startswith("#")))
    name = parser["core"]["remote"]
    remote = parser[f"'remote \"{name}\"'"]
    assert remote["url"].startswith("s3://")
    # the repository itself configures no default remote
    repo_config = REPO_ROOT / ".dvc" / "config"
    assert "remote" not in (repo_config.read_text() if repo_config.exists() else "")
