"""The synthetic dataset on disk: exactly the DeepFashion In-shop layout, both annotation formats, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_config import tiny_dict

from xmdpt.data.keypoints import gfla_lists_to_kps, pidm_txt_to_image_frame
from xmdpt.data.deepfashion import path_to_fashion_name
from xmdpt.synth import write_synthetic_dataset

PATH_RE = re.compile(r"^img/(MEN|WOMEN)/[A-Z][A-Za-z_]+/id_\d{8}/\d{2}_[1-7]_(front|side|back|full|additional)\.jpg$")
NAME_RE = re.compile(r"^fashion(MEN|WOMEN)[A-Z][A-Za-z_]+id\d{8}\d{2}_[1-7](front|side|back|full|additional)\.jpg$")
IDENTITIES = 6
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "ds"
    summary = write_synthetic_dataset(str(root), identities=IDENTITIES, seed=3, test_fraction=0.34)
    return root, summary


def _lines(p: Path) -> list[str]:
    text = p.read_text()
    assert text.endswith("\n")
    return text.splitlines()


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_summary_counts(dataset):
    root, s = dataset
    assert s["identities"] == IDENTITIES and s["images"] == 5 * IDENTITIES
    assert s["test_identities"] == 2 and s["train_identities"] == 4
    assert s["train_images"] + s["test_images"] == s["images"]
    assert s["train_pairs"] == 4 * 5 * 4 and s["test_pairs"] == 2 * 5 * 4  # ordered pairs of different views
    assert len(list(root.rglob("*.jpg"))) == s["images"]


def test_images_follow_the_deepfashion_layout(dataset):
    root, _ = dataset
    rels = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    for rel in rels:
        assert PATH_RE.match(rel), rel
        with Image.open(root / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (176, 256)  # W x H
            assert not im.info.get("exif")
        assert (root / ("pose/" + rel[4:-4] + ".txt")).is_file()
    persons = {r.rsplit("/", 1)[0] for r in rels}
    assert len(persons) == IDENTITIES
    assert len({p.rsplit("/", 1)[1] for p in persons}) == IDENTITIES  # ids unique across categories


def test_lists_pairs_and_annotations_parse_and_agree(dataset):
    root, s = dataset
    names_of = {}
    for p in root.rglob("*.jpg"):
        rel = str(p.relative_to(root))
        names_of[path_to_fashion_name(rel)] = rel
    split_names = {}
    for split in ("train", "test"):
        lst = _lines(root / f"{split}.lst")
        assert len(lst) == s[f"{split}_images"] and all(NAME_RE.match(n) for n in lst)
        split_names[split] = set(lst)

        pairs = _lines(root / f"fasion-resize-pairs-{split}.csv")
        assert pairs[0] == ",from,to" and len(pairs) - 1 == s[f"{split}_pairs"]
        for i, row in enumerate(pairs[1:]):
            idx, src, tgt = row.split(",")
            assert int(idx) == i and src != tgt and {src, tgt} <= split_names[split]
            assert names_of[src].rsplit("/", 1)[0] == names_of[tgt].rsplit("/", 1)[0]  # same person

        pidm = [line.split(",") for line in _lines(root / f"{split}_pairs.txt")]
        pidm_pairs = {(t, src) for t, *sources in pidm for src in sources}
        csv_pairs = {(names_of[r.split(",")[2]], names_of[r.split(",")[1]]) for r in pairs[1:]}
        assert pidm_pairs == csv_pairs  # target first, then sources: the same pairs as the csv

        ann = _lines(root / f"fasion-resize-annotation-{split}.csv")
        assert ann[0] == "name:keypoints_y:keypoints_x" and len(ann) - 1 == s[f"{split}_images"]
        for row in ann[1:]:
            name, ys, xs = row.split(":")
            kps = gfla_lists_to_kps(ys, xs)  # (18, 2) in 256x176
            assert len(json.loads(ys)) == 18
            rel = names_of[name]
            txt = np.loadtxt(root / ("pose/" + rel[4:-4] + ".txt"))
            assert txt.shape == (18, 2)
            np.testing.assert_array_equal(pidm_txt_to_image_frame(txt), kps)  # 40-px border convention
            present = kps[:, 0] >= 0
            assert np.all(txt[present, 0] == kps[present, 0] + 40) and np.all(txt[~present] == -1)
            assert np.all(kps[present, 0] <= 175) and np.all(kps[present, 1] <= 255)
    assert not split_names["train"] & split_names["test"]


def test_train_and_test_identities_are_disjoint(dataset):
    root, _ = dataset
    person = {}
    for split in ("train", "test"):
        person[split] = {line.split(",")[0].rsplit("/", 1)[0] for line in _lines(root / f"{split}_pairs.txt")}
    assert person["train"] and person["test"] and not person["train"] & person["test"]


def test_some_keypoints_missing(dataset):
    root, s = dataset
    txts = [np.loadtxt(p) for p in sorted(root.rglob("pose/**/*.txt"))]
    missing = np.mean([(t[:, 0] < 0).mean() for t in txts])
    assert 0.05 < missing < 0.35 and abs(missing - s["keypoints_missing_fraction"]) < 1e-3
    backs = [np.loadtxt(p) for p in root.rglob("pose/**/*_3_back.txt")]
    assert all((t[[0, 14, 15]] == -1).all() for t in backs)  # no face seen from the back


def test_deterministic_bytes_for_a_seed(tmp_path):
    a = write_synthetic_dataset(str(tmp_path / "a"), identities=3, seed=11)
    b = write_synthetic_dataset(str(tmp_path / "b"), identities=3, seed=11)
    c = write_synthetic_dataset(str(tmp_path / "c"), identities=3, seed=12)
    da, db, dc = (_tree_digest(tmp_path / n) for n in "abc")
    assert a == b and da == db and len(da) == 3 * 5 * 2 + 8
    assert c["images"] == a["images"]
    jpg_digests = lambda d: {v for k, v in d.items() if k.endswith(".jpg")}  # noqa: E731
    assert not jpg_digests(da) & jpg_digests(dc)  # a different seed: every image differs


def test_rewrites_its_own_output_but_refuses_foreign_folders(tmp_path):
    out = tmp_path / "ds"
    write_synthetic_dataset(str(out), identities=4, seed=0)
    write_synthetic_dataset(str(out), identities=2, seed=0)  # a smaller rerun leaves no stale files
    assert len(list(out.rglob("*.jpg"))) == 10
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        write_synthetic_dataset(str(tmp_path / "other"), identities=2)
    with pytest.raises(ValueError, match="identities"):
        write_synthetic_dataset(str(tmp_path / "x"), identities=1)


def test_synth_stage_writes_data_synth(tmp_path):
    """The DVC command itself: ``python -m pipelines.synth`` writes ``data/synth`` from the synth.* params."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_dict({"synth": {"identities": 2, "seed": 5}})))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pipelines.synth", "--params", "params.yaml", "--no-submit"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "data" / "synth"
    assert len(list(out.rglob("*.jpg"))) == 10
    assert len(_lines(out / "test.lst")) == 5 and len(_lines(out / "train.lst")) == 5
    assert "10 images of 2 identities" in proc.stderr
