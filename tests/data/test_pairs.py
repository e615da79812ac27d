"""`pairs` stage: both public layouts and a raw tree give the same table; bad inputs are quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xmdpt.data.schema import PAIR_ID, PAIRS_SCHEMA, PERSON_ID, REASON, ROW_KEY, SOURCE_PATH, SPLIT, TARGET_PATH
from xmdpt.core.manifests import PairsManifest

pytestmark = pytest.mark.ray


def _pair_set(df) -> set:
    return set(zip(df[SPLIT], df[TARGET_PATH], df[SOURCE_PATH]))


def test_pidm_layout_pairs_and_manifest(pidm_bad_chain, dfx):
    load, ID0, ID1, CONVERTED = dfx.load, dfx.ID0, dfx.ID1, dfx.CONVERTED
    m = pidm_bad_chain["pairs"]
    info = pidm_bad_chain["info"]
    assert m["stage"] == "pairs" and m["layout"] == "pidm"
    assert set(m["tables"]) == {"pairs", "images", "quarantine"}
    assert m["tables"]["pairs"]["columns"] == PAIRS_SCHEMA.names
    assert m["uri"].startswith(str(pidm_bad_chain["cfg"].paths.storage_root) + "/pairs/")
    on_disk = json.loads((Path(pidm_bad_chain["cfg"].paths.artifacts_dir) / "pairs" / "manifest.json").read_text())
    assert on_disk["tables"] == m["tables"]
    assert PairsManifest.from_dict(on_disk).to_dict() == on_disk  # the typed contract round-trips
    pairs = load(m["tables"]["pairs"])
    # every pair of the clean fixture is kept, plus the three with converted (gray/RGBA/CMYK) sources
    expected = info["pairs"] | {("train", f"{ID1}/01_1_front.jpg", s) for s in CONVERTED}
    assert _pair_set(pairs) == expected
    assert pairs[PAIR_ID].is_unique
    row = pairs[(pairs[TARGET_PATH] == f"{ID0}/01_2_side.jpg") & (pairs[SOURCE_PATH] == f"{ID0}/01_1_front.jpg")].iloc[0]
    assert row[PAIR_ID] == "train:fashionMENDenimid0000000101_1front.jpg_2_fashionMENDenimid0000000101_2side.jpg"
    assert row[PERSON_ID] == "MEN/Denim/id_00000001"
    images = load(m["tables"]["images"])
    assert len(images) == 21 and set(images["height"]) == {256} and set(images["width"]) == {176}


def test_bad_inputs_are_quarantined_with_reasons(pidm_bad_chain, dfx):
    load = dfx.load
    m = pidm_bad_chain["pairs"]
    lines = pidm_bad_chain["info"]["line_of"]
    q = load(m["tables"]["quarantine"])
    by_key = dict(zip(q[ROW_KEY], q[REASON]))

    def reason(name: str, source: int = 1) -> str:
        key = f"train_pairs.txt:line {lines[name]}" + ("" if name == "malformed" else f" source {source}")
        assert key in by_key, (key, sorted(by_key))
        assert by_key[key].startswith(key)  # the reason names the row
        return by_key[key]

    assert "01_5_missing.jpg: file not found" in reason("missing")
    assert "01_6_trunc.jpg" in reason("truncated") and "decode" in reason("truncated")
    assert "01_7_corrupt.png" in reason("corrupt")
    assert "'..' would leave the dataset root" in reason("dotdot")
    assert "absolute path" in reason("absolute")
    assert "outside the dataset root" in reason("symlink")
    assert "malformed row" in reason("malformed")
    assert "duplicate pair (first at train_pairs.txt:line 1 source 1)" in reason("duplicate", 1)
    assert "duplicate pair (first at train_pairs.txt:line 1 source 2)" in reason("duplicate", 2)
    assert len(q) == 9
    c = m["counts"]
    assert (c["input_rows"], c["valid"], c["quarantined"]) == (48, 39, 9)
    assert c["input_rows"] == c["valid"] + c["quarantined"] == m["tables"]["pairs"]["rows"] + len(q)


def test_gfla_layout_gives_the_same_pairs(pidm_bad_chain, gfla_chain, dfx):
    load = dfx.load
    g = gfla_chain["pairs"]
    assert g["layout"] == "gfla"
    assert _pair_set(load(g["tables"]["pairs"])) == gfla_chain["info"]["pairs"]
    # same pair ids as the PIDM reading of the same dataset
    pidm = load(pidm_bad_chain["pairs"]["tables"]["pairs"])
    gfla = load(g["tables"]["pairs"])
    assert set(gfla[PAIR_ID]) <= set(pidm[PAIR_ID])
    q = load(g["tables"]["quarantine"])
    lines = gfla_chain["info"]["bad_lines"]
    reasons = dict(zip(q[ROW_KEY], q[REASON]))
    assert "duplicate pair" in reasons[f"fasion-resize-pairs-train.csv:line {lines['duplicate']}"]
    assert "malformed row" in reasons[f"fasion-resize-pairs-train.csv:line {lines['malformed']}"]
    assert g["counts"]["input_rows"] == g["counts"]["valid"] + g["counts"]["quarantined"] == 38


def test_raw_inshop_tree_builds_pairs_from_lists_and_is_idempotent(ray_local, tmp_path, pose_task_path, dfx):
    load = dfx.load
    from xmdpt.data.pairs import build_pairs

    info = dfx.write_deepfashion(tmp_path / "ds", layouts=())  # only img/ and train.lst / test.lst
    cfg = dfx.stage_config(tmp_path, tmp_path / "ds", pose_task_path)
    m = build_pairs(cfg)
    assert m["layout"] == "inshop"
    assert _pair_set(load(m["tables"]["pairs"])) == info["pairs"]  # all ordered view pairs per identity
    again = build_pairs(cfg)
    assert again["uri"] == m["uri"] and again["tables"]["pairs"]["rows"] == m["tables"]["pairs"]["rows"]
    # without the lists, identities are split by a hash: deterministic, and no identity in both splits
    for f in ("train.lst", "test.lst"):
        (tmp_path / "ds" / f).unlink()
    m2 = build_pairs(cfg)
    df = load(m2["tables"]["pairs"])
    assert len(df) == len(info["pairs"]) and m2["uri"] != m["uri"]
    assert (df.groupby(PERSON_ID)[SPLIT].nunique() == 1).all()
