"""What `dvc status` says after a change, with the real DVC CLI on a throwaway copy of the project.

The heavy stages are not run: the `config` stage runs for real, every other stage's outputs are
placeholders recorded with ``dvc commit -f`` (DVC hashes deps, params and outs as a run would).
Then: a line changed in ``xmdpt/model/`` reruns train, evaluate and register and nothing before
them; a changed default of the config tree that ``params.yaml`` does not write reruns, once the
`config` stage has resolved it, exactly the stages reading its section; where stages run
(``cluster``) and comments change nothing; other code in ``xmdpt/core/config.py`` reruns every stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from dvc_project import STAGES, copy_project, dvc, record_dag

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # the DVC CLI


def _changed(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json") or "{}"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r}"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """The project with its DAG recorded as run (tests/dvc_project.py)."""
    repo = copy_project(tmp_path_factory.mktemp("recorded") / "repo")
    record_dag(repo)
    assert _changed(repo) == set(), "the recorded project is not up to date"
    return repo


@pytest.fixture
def project(recorded, tmp_path) -> Path:
    """A fresh copy of the recorded project for one test."""
    return Path(shutil.copytree(recorded, tmp_path / "repo", symlinks=True))


def test_a_changed_model_line_reruns_train_evaluate_register_only(project):
    _edit(project / "xmdpt" / "model" / "xmdpt.py", "\nclass XMDPT(", "\n\n# one more line\nclass XMDPT(")
    assert _changed(project) == {"train", "evaluate", "register"}


def test_a_changed_default_reruns_the_stages_reading_its_section(project):
    config = project / "xmdpt" / "core" / "config_stages.py"  # the stages' sections of the config tree
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert "grid_rows" not in params["evaluate"] and "split_test_fraction" not in params["data"]
    assert "data_specs_dir" not in params["paths"]

    _edit(config, "    grid_rows: int = 8\n", "    grid_rows: int = 4\n")
    assert _changed(project) == {"config"}  # the config stage resolves it first
    dvc(project, "repro", "-q", "config")
    assert _changed(project) == {"evaluate"}

    _edit(config, "    split_test_fraction: float = 0.2", "    split_test_fraction: float = 0.25")
    dvc(project, "repro", "-q", "config")
    assert _changed(project) == {"evaluate", "synth", "pairs", "poses", "autoencoder", "features", "train"}

    _edit(config, '    data_specs_dir: str = "data_specs"', '    data_specs_dir: str = "specs"')
    dvc(project, "repro", "-q", "config")
    assert _changed(project) == set(STAGES)  # every stage reads paths


def test_cluster_and_comments_rerun_nothing_other_config_code_reruns_all(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["cluster"] = {"submit": True, "address": "http://head:8265", "timeout_s": 600.0}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _edit(project / "xmdpt" / "core" / "config.py", "def load_config(path: str | Path = \"params.yaml\") -> XMDPTConfig:\n",
          "def load_config(path: str | Path = \"params.yaml\") -> XMDPTConfig:  # every stage's entry\n")
    dvc(project, "repro", "-q", "config")
    assert _changed(project) == set()

    _edit(project / "xmdpt" / "core" / "config.py", 'f"{p}: params file not found"', 'f"{p}: no params file"')
    dvc(project, "repro", "-q", "config")
    assert _changed(project) == set(STAGES)


def test_an_experiment_sets_a_param_the_config_stage_resolves(project):
    """`dvc exp run -S` edits params.yaml; the config stage resolves it for the stages that read it
    (``+`` adds a key params.yaml does not write yet)."""
    assert "weight_decay" not in yaml.safe_load((project / "params.yaml").read_text())["train"]
    dvc(project, "exp", "run", "-q", "-S", "evaluate.max_pairs=48", "-S", "+train.weight_decay=0.01", "config")
    resolved = {s: yaml.safe_load((project / "artifacts" / "config" / f"{s}.yaml").read_text()) for s in STAGES}
    assert resolved["evaluate"]["evaluate"]["max_pairs"] == 48 and resolved["train"]["train"]["weight_decay"] == 0.01
    assert _changed(project) == {"train", "evaluate"}
