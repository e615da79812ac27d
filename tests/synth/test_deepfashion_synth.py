"""The readers agree on the synthetic dataset, which writes both public layouts of the same data."""

from __future__ import annotations

import numpy as np
import pytest

from xmdpt.data.deepfashion_annotations import annotation_to_image_frame, read_gfla_annotations, read_pidm_annotation
from xmdpt.data.deepfashion_pairs import read_gfla_pairs, read_inshop_pairs, read_pidm_pairs


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from xmdpt.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "ds"
    write_synthetic_dataset(str(root), identities=3, seed=0, test_fraction=0.34)
    return str(root)


def test_both_layouts_give_the_same_pairs_and_keypoints(synth_root):
    pidm, gfla = read_pidm_pairs(synth_root), read_gfla_pairs(synth_root)
    assert not pidm.problems and not gfla.problems
    key = lambda r: {(p.split, p.target_path, p.source_path) for p in r.pairs}  # noqa: E731
    assert key(pidm) == key(gfla) and len(pidm.pairs) > 0
    assert {p.split for p in pidm.pairs} == {"train", "test"}
    anns, problems = read_gfla_annotations(synth_root)
    assert not problems
    images = {p for pair in pidm.pairs for p in (pair.target_path, pair.source_path)}
    for path in images:
        txt = read_pidm_annotation(synth_root, path)
        assert txt is not None and path in anns, path
        a = annotation_to_image_frame(txt, 256, 176)
        b = annotation_to_image_frame(anns[path], 256, 176)
        assert ((a < 0) == (b < 0)).all(), path
        np.testing.assert_allclose(a[a >= 0], b[b >= 0], atol=1.0, err_msg=path)  # both rounded to pixels


def test_raw_tree_with_lists_keeps_the_published_split(synth_root):
    pidm = read_pidm_pairs(synth_root)
    split_of = {p.person_id: p.split for p in pidm.pairs}
    raw = read_inshop_pairs(synth_root, test_fraction=0.5)
    assert {p.person_id: p.split for p in raw.pairs} == split_of
