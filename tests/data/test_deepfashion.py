"""DeepFashion formats: fashion names, safe paths, layout detection, the three readers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xmdpt.data.deepfashion import (
    UnsafePathError,
    dataset_fingerprint,
    detect_layout,
    fashion_name_to_path,
    path_to_fashion_name,
    safe_join,
)
from xmdpt.data.deepfashion_annotations import annotation_to_image_frame, read_gfla_annotations, read_pidm_annotation
from xmdpt.data.deepfashion_pairs import read_gfla_pairs, read_inshop_pairs, read_pidm_pairs
from xmdpt.data.deepfashion_split import hash_split

A = "img/WOMEN/Blouses_Shirts/id_00006370/03_1_front.jpg"
B = "img/WOMEN/Blouses_Shirts/id_00006370/03_2_side.jpg"
C = "img/WOMEN/Blouses_Shirts/id_00006370/03_7_additional.jpg"
D = "img/MEN/Jackets_Vests/id_00000084/04_4_full.jpg"


# ---- fashion names ---------------------------------------------------------------------------

def test_fashion_name_matches_the_published_example():
    assert path_to_fashion_name(A) == "fashionWOMENBlouses_Shirtsid0000637003_1front.jpg"
    assert fashion_name_to_path("fashionWOMENBlouses_Shirtsid0000637003_1front.jpg") == A


@pytest.mark.parametrize("path", [A, B, C, D, "img/MEN/Denim/id_00000080/01_1_front.jpg",
                                  "img/WOMEN/Graphic_Tees/id_00001234/12_3_back.png"])
def test_fashion_name_round_trip(path):
    name = path_to_fashion_name(path)
    assert "/" not in name and name.startswith("fashion")
    assert fashion_name_to_path(name) == path


@pytest.mark.parametrize("name", ["", "fashionKIDSDenimid0000008001_1front.jpg", "fashionMENDenim01_1front.jpg",
                                  "fashionMEN/../..id0000008001_1front.jpg", "../../etc/passwd"])
def test_bad_fashion_names_raise_naming_the_name(name):
    with pytest.raises(ValueError, match="not a fashion name"):
        fashion_name_to_path(name)


def test_bad_paths_have_no_fashion_name():
    for bad in ("pose/MEN/Denim/id_00000080/01_1_front.txt", "img/MEN/Denim/01_1_front.jpg",
                "img/MEN/Denim/id_00000080/front.jpg"):
        with pytest.raises(ValueError, match=bad.split("/")[-1]):
            path_to_fashion_name(bad)


# ---- safe_join -------------------------------------------------------------------------------

@pytest.mark.parametrize("rel, why", [
    ("../outside.jpg", "'..'"), ("img/../../outside.jpg", "'..'"), ("/etc/passwd", "absolute"),
    ("~/x.jpg", "absolute"), ("s3://other-bucket/x.jpg", "URL"), ("file:///etc/passwd", "URL"),
    ("C:/Windows/x.jpg", "drive"), ("img\\..\\x.jpg", "backslash"), ("", "empty"),
])
def test_safe_join_rejects_escapes(tmp_path, rel, why):
    for root in (str(tmp_path), "s3://bucket/root"):
        with pytest.raises(UnsafePathError, match=why):
            safe_join(root, rel)


def test_safe_join_rejects_symlinks_leaving_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.jpg"
    (root / "img").mkdir(parents=True)
    outside.write_bytes(b"secret")
    (root / "img" / "link.jpg").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside the dataset root"):
        safe_join(str(root), "img/link.jpg")
    assert safe_join(str(root), "img/./a.jpg") == os.path.join(str(root), "img", "a.jpg")
    assert safe_join("s3://bucket/root/", "img/a.jpg") == "s3://bucket/root/img/a.jpg"


# ---- readers ---------------------------------------------------------------------------------

def _write(root, name, text):
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_pidm_pairs_target_first_with_bad_rows(tmp_path):
    _write(tmp_path, "train_pairs.txt", f"{A},{B},{C}\n\n{B},{A}\n{A}\n{A},../x.jpg\n{A},{B}\n{A},{D}\n")
    _write(tmp_path, "test_pairs.txt", f"{D},{D}\n")
    r = read_pidm_pairs(str(tmp_path))
    assert [(p.split, p.target_path, p.source_path) for p in r.pairs] == [
        ("train", A, B), ("train", A, C), ("train", B, A)]
    assert r.pairs[0].row_key == "train_pairs.txt:line 1 source 1"
    assert r.pairs[0].pair_id == f"train:{path_to_fashion_name(B)}_2_{path_to_fashion_name(A)}"
    reasons = {p.row_key: p.reason for p in r.problems}
    assert "malformed row" in reasons["train_pairs.txt:line 4"]
    assert "'..' would leave the dataset root" in reasons["train_pairs.txt:line 5 source 1"]
    assert "duplicate pair (first at train_pairs.txt:line 1 source 1)" in reasons["train_pairs.txt:line 6 source 1"]
    assert "different identities" in reasons["train_pairs.txt:line 7 source 1"]
    assert "source equals target" in reasons["test_pairs.txt:line 1 source 1"]
    assert r.input_rows == 3 + 5


def test_gfla_pairs_from_is_source(tmp_path):
    fa, fb = path_to_fashion_name(A), path_to_fashion_name(B)
    _write(tmp_path, "fasion-resize-pairs-test.csv", f"from,to\n{fa},{fb}\n{fb}\n{fa},{fb},{fa}\nnot-a-name,{fa}\n")
    r = read_gfla_pairs(str(tmp_path))
    assert [(p.split, p.target_path, p.source_path) for p in r.pairs] == [("test", B, A)]
    reasons = {p.row_key: p.reason for p in r.problems}
    assert set(reasons) == {f"fasion-resize-pairs-test.csv:line {i}" for i in (3, 4, 5)}
    assert "malformed row" in reasons["fasion-resize-pairs-test.csv:line 3"]
    assert "not a fashion name" in reasons["fasion-resize-pairs-test.csv:line 5"]


def test_detect_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DeepFashion layout"):
        detect_layout(str(tmp_path))
    _write(tmp_path, A, "x")
    assert detect_layout(str(tmp_path)) == "inshop"
    _write(tmp_path, "fasion-resize-pairs-train.csv", "from,to\n")
    assert detect_layout(str(tmp_path)) == "gfla"
    _write(tmp_path, "test_pairs.txt", "")
    assert detect_layout(str(tmp_path)) == "pidm"
    assert detect_layout(str(tmp_path), "gfla") == "gfla"
    with pytest.raises(ValueError, match="unknown layout"):
        detect_layout(str(tmp_path), "lmdb")


def test_inshop_pairs_split_from_lists_or_hash(tmp_path):
    for p in (A, B, D):
        _write(tmp_path, p, "x")
    r = read_inshop_pairs(str(tmp_path), test_fraction=0.5)
    assert {(p.target_path, p.source_path) for p in r.pairs} == {(A, B), (B, A)}  # D has no second view
    assert {p.split for p in r.pairs} == {hash_split("WOMEN/Blouses_Shirts/id_00006370", 0.5)}
    _write(tmp_path, "test.lst", f"{path_to_fashion_name(A)}\n{path_to_fashion_name(B)}\n")
    _write(tmp_path, "train.lst", f"{path_to_fashion_name(D)}\n")
    r = read_inshop_pairs(str(tmp_path), test_fraction=0.5)
    assert {p.split for p in r.pairs} == {"test"}
    splits = [hash_split(f"MEN/Denim/id_{i:08d}", 0.2) for i in range(400)]
    assert splits == [hash_split(f"MEN/Denim/id_{i:08d}", 0.2) for i in range(400)]
    assert 0.1 < splits.count("test") / 400 < 0.3


def test_annotations_both_layouts_into_the_image_frame(tmp_path):
    xs = [88, 88, -1] + [50] * 15
    ys = [40, 62, -1] + [100] * 15
    _write(tmp_path, "fasion-resize-annotation-train.csv",
           f"name:keypoints_y:keypoints_x\n{path_to_fashion_name(A)}: {ys}: {xs}\n"
           f"{path_to_fashion_name(B)}: {ys[:17]}: {xs[:17]}\n{path_to_fashion_name(C)}: [1, 2\n")
    anns, problems = read_gfla_annotations(str(tmp_path))
    assert set(anns) == {A}
    reasons = {p.row_key: p.reason for p in problems}
    assert "fasion-resize-annotation-train.csv:line 3" in reasons[B] and "18" in reasons[B]
    assert "fasion-resize-annotation-train.csv:line 4" in reasons[C]
    kps = annotation_to_image_frame(anns[A], 512, 352)  # twice the 256x176 frame
    assert kps[0].tolist() == [176.0, 80.0] and kps[2].tolist() == [-1.0, -1.0]

    rows = "\n".join(f"{x + 40 if x >= 0 else -1} {y}" for x, y in zip(xs, ys))
    _write(tmp_path, "pose/WOMEN/Blouses_Shirts/id_00006370/03_1_front.txt", rows + "\n")
    ann = read_pidm_annotation(str(tmp_path), A)
    np.testing.assert_allclose(annotation_to_image_frame(ann, 256, 176), anns[A].keypoints)
    assert read_pidm_annotation(str(tmp_path), B) is None  # no file: the estimator's job
    _write(tmp_path, "pose/WOMEN/Blouses_Shirts/id_00006370/03_2_side.txt", "\n".join(rows.splitlines()[:17]))
    with pytest.raises(ValueError, match=r"pose/WOMEN/Blouses_Shirts/id_00006370/03_2_side.txt: expected 18 rows"):
        read_pidm_annotation(str(tmp_path), B)


def test_fingerprint_changes_with_content(tmp_path):
    _write(tmp_path, "train_pairs.txt", f"{A},{B}\n")
    f1 = dataset_fingerprint(str(tmp_path))
    assert dataset_fingerprint(str(tmp_path)) == f1
    _write(tmp_path, "train_pairs.txt", f"{B},{A}\n")
    assert dataset_fingerprint(str(tmp_path)) != f1
