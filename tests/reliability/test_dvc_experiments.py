"""Two `dvc exp run` of the same pipeline with different params, at the same time, sharing one
storage_root: each experiment's manifest points at its own content-addressed prefix, and each
prefix holds the data of its own params. Runs the real DVC CLI on two of our stages (synth ->
pairs) in a throwaway git + DVC repository; marked slow (each run starts its own Ray)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_config import tiny_dict

from xmdpt.data import schema
from xmdpt.data.quarantine import read_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
DVC_YAML = """\
stages:
  synth:
    cmd: python -m pipelines.synth
    params: [synth.identities, synth.seed, synth.test_fraction]
    outs: [data/synth]
  pairs:
    cmd: python -m pipelines.pairs
    deps: [data/synth]
    params: [paths.storage_root, data.split_test_fraction]
    outs: [artifacts/pairs/manifest.json]
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYTHONPATH=str(REPO),
               DVC_NO_ANALYTICS="1", RAY_USAGE_STATS_ENABLED="0", GIT_AUTHOR_NAME="t", GIT_COMMITTER_NAME="t",
               GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_EMAIL="t@localhost")
    return env


def _sh(cwd: Path, *cmd: str) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _cached(repo: Path, md5: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def test_parallel_experiments_do_not_mix_outputs(tmp_path):
    from xmdpt.synth import write_synthetic_dataset

    repo, store = tmp_path / "repo", tmp_path / "store"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_dict({
        "paths": {"dataset_root": "data/synth", "storage_root": str(store), "artifacts_dir": "artifacts"},
        "data": {"split_test_fraction": 0.2, "num_cpus_per_task": 0.5},
        "synth": {"identities": 3, "seed": 0, "test_fraction": 0.34}})))
    _sh(repo, "git", "init", "-q")
    _sh(repo, "dvc", "init", "-q")
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "pipeline")

    runs = {seed: subprocess.Popen(
        ["dvc", "exp", "run", "--temp", "-n", f"seed{seed}", "-S", f"synth.seed={seed}"],
        cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (1, 2)}
    for seed, proc in runs.items():
        out = proc.communicate(timeout=540)[0]
        assert proc.returncode == 0, out

    refs = dict(line.split()[::-1] for line in _sh(repo, "git", "for-each-ref", "--format=%(objectname) %(refname)",
                                                     "refs/exps").splitlines())
    got = {}
    for seed in (1, 2):
        ref = next(r for r in refs if r.endswith(f"/seed{seed}"))
        lock = yaml.safe_load(_sh(repo, "git", "show", f"{ref}:dvc.lock"))["stages"]
        assert lock["synth"]["params"]["params.yaml"]["synth.seed"] == seed
        manifest = json.loads(_cached(repo, lock["pairs"]["outs"][0]["md5"]).read_text())
        listing = json.loads(_cached(repo, lock["synth"]["outs"][0]["md5"]).read_text())  # the .dir listing
        got[seed] = (manifest, {e["relpath"]: e["md5"] for e in listing})

    (m1, files1), (m2, files2) = got[1], got[2]
    assert m1["uri"] != m2["uri"] and all(m["uri"].startswith(str(store / "pairs")) for m in (m1, m2))
    assert files1 != files2  # the seeds give different datasets
    for seed, (manifest, files) in got.items():
        # the experiment's synth output is exactly what its seed generates
        ref_root = tmp_path / f"expected{seed}"
        write_synthetic_dataset(str(ref_root), identities=3, seed=seed, test_fraction=0.34)
        expected = {str(p.relative_to(ref_root)): hashlib.md5(p.read_bytes()).hexdigest()
                    for p in ref_root.rglob("*") if p.is_file()}
        assert files == expected
        # and its pairs prefix holds that dataset's images, nothing from the other experiment
        entry = manifest["tables"]["images"]
        images = read_table(entry["uri"], rows=entry["rows"]).column(schema.IMAGE_PATH).to_pylist()
        assert images and set(images) <= set(files)
        other = got[3 - seed][1]
        assert any(files[p] != other.get(p) for p in images)
