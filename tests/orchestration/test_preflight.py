"""Preflight: a run that cannot finish is refused at its first stage, in seconds, naming each missing
thing and how to get it; `xmdpt check` prints the same as a table."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from xmdpt.cli import app
from xmdpt.core.config import load_config
from xmdpt.orchestration.preflight import STAGES, run_checks

from tiny_config import tiny_dict


def _params(tmp_path, **sections) -> str:
    """The tiny test config (offline, CPU) in a params file under ``tmp_path``, with ``sections`` merged in."""
    base = tiny_dict({"paths": {"dataset_root": str(tmp_path / "data"), "storage_root": str(tmp_path / "store"),
                      "artifacts_dir": str(tmp_path / "artifacts"),
                      "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(base))
    return str(p)


PAPER_WEIGHTS = {"inception_weights": "/nonexistent/inception_v3_google-0cc3c7bd.pth",
                 "alexnet_weights": "/nonexistent/alexnet-owt-7be5be79.pth",
                 "lpips_weights": "/nonexistent/lpips_alex_v0.1.pth"}


def test_the_embedded_default_is_ready(tmp_path):
    checks = run_checks(load_config(_params(tmp_path)), STAGES)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert {c.stage for c in checks} >= {"dag", "pairs", "features", "train", "evaluate", "register"}


def test_missing_weights_stop_the_first_stage_before_any_compute(tmp_path, caplog):
    from pipelines.common import stage_main

    params = _params(tmp_path, evaluate=PAPER_WEIGHTS, register={"metric": "fid"})
    ran = []
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        stage_main("pairs", lambda cfg: ran.append(cfg), ["--params", params, "--no-submit"])
    assert e.value.code == 1 and not ran and time.monotonic() - t0 < 30
    text = caplog.text
    for key, url in (("evaluate.inception_weights", "inception_v3_google-0cc3c7bd.pth"),
                     ("evaluate.alexnet_weights", "alexnet-owt-7be5be79.pth"),
                     ("evaluate.lpips_weights", "lpips/weights/v0.1/alex.pth")):
        assert key in text and url in text, key
    assert "curl -LO https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth" in text
    assert "register.metric is 'fid', which needs evaluate.inception_weights" in text


def test_check_command_prints_the_table(tmp_path):
    params = _params(tmp_path, evaluate={"inception_weights": ""}, register={"metric": "fid"},
                     train={"use_gpu": True})
    r = CliRunner().invoke(app, ["check", "--params", params])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0].split() == ["stage", "setting", "status", "detail"]
    failed = [ln for ln in lines if " FAIL " in ln]
    assert any(ln.startswith("register") and "register.metric" in ln for ln in failed)
    if not __import__("torch").cuda.is_available():
        assert any(ln.startswith("train") and "train.use_gpu asks for a GPU" in ln for ln in failed)
    assert "not ready" in lines[-1]
    ok = CliRunner().invoke(app, ["check", "--params", _params(tmp_path), "--stage", "features", "--stage", "train"])
    assert ok.exit_code == 0 and "0 not ready" in ok.output


def test_unwritable_storage_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = load_config(_params(tmp_path, paths={"storage_root": str(blocker / "store")}))
    bad = [c for c in run_checks(cfg, ["validate"]) if not c.ok]
    assert len(bad) == 1 and bad[0].name == "paths.storage_root" and "is not writable" in bad[0].detail


def test_weights_outside_the_tracked_models_dir_are_refused(tmp_path):
    """The metric backbones are DVC deps through paths.models_dir: a file elsewhere would not rerun evaluate."""
    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "inception.pth").write_bytes(b"x")
    (tmp_path / "models" / "inception.pth").write_bytes(b"x")
    outside = load_config(_params(tmp_path, paths={"models_dir": str(tmp_path / "models")},
                                  evaluate={"inception_weights": str(tmp_path / "elsewhere" / "inception.pth")}))
    bad = [c for c in run_checks(outside, ["evaluate"]) if not c.ok]
    assert bad and all("lies outside paths.models_dir" in c.detail for c in bad)
    inside = load_config(_params(tmp_path, paths={"models_dir": str(tmp_path / "models")},
                                 evaluate={"inception_weights": str(tmp_path / "models" / "inception.pth")}))
    assert all(c.ok for c in run_checks(inside, ["evaluate"]))
    stages = yaml.safe_load(open(Path(__file__).resolve().parents[2] / "dvc.yaml"))["stages"]
    assert "${paths.models_dir}" in stages["evaluate"]["deps"] and "${paths.models_dir}" in stages["poses"]["deps"]
